//! Catalog reads against a real PostgreSQL with Pagila loaded.

use ferry_core::RedactedUrl;
use ferry_core::TableId;
use ferry_core::config::{Endpoint, SslMode, TablesConfig};
use ferry_postgres::catalog::{RelKind, SharedCatalog, TypeKind, read_catalog};
use ferry_postgres::connect::connect;
use ferry_testkit::{PgOptions, PgServer};

fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        url: RedactedUrl::new(url),
        sslmode: Some(SslMode::Disable),
        sslrootcert: None,
    }
}

fn tables(include: &[&str], exclude: &[&str]) -> TablesConfig {
    TablesConfig {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        ..TablesConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagila_catalog() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let db = pg.create_database("catalog").unwrap();
    pg.load_pagila(&db).unwrap();
    pg.psql(
        &db,
        "CREATE SCHEMA ferry; CREATE TABLE ferry.checkpoint (id int primary key);
         CREATE TABLE public.gen_t (id serial primary key, a int, drop_me int,
                                    b int GENERATED ALWAYS AS (a * 2) STORED, c text NOT NULL);
         ALTER TABLE public.gen_t DROP COLUMN drop_me;
         CREATE TABLE public.ident_t (x int NOT NULL, y int NOT NULL, z text);
         CREATE UNIQUE INDEX ident_t_xy ON public.ident_t (y, x);
         ALTER TABLE public.ident_t REPLICA IDENTITY USING INDEX ident_t_xy;
         ANALYZE;",
    )
    .unwrap();
    let client = connect(&endpoint(&pg.url(&db)), "source").await.unwrap();
    let filter = tables(&["*.*"], &[]).filter().unwrap();
    let cat = read_catalog(&client, &filter, "ferry").await.unwrap();

    let names: Vec<String> = cat.tables.iter().map(|t| t.schema.id.to_string()).collect();
    assert!(!names.iter().any(|n| n.starts_with("ferry.")), "{names:?}");
    assert!(
        !names.iter().any(|n| n.contains("payment_p2022")),
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| *n == "public.payment").count(), 1);
    for t in [
        "actor", "film", "rental", "staff", "store", "customer", "gen_t",
    ] {
        assert!(
            names.contains(&format!("public.{t}")),
            "{t} missing: {names:?}"
        );
    }

    let payment = cat.table(&TableId::new("public", "payment")).unwrap();
    assert_eq!(payment.relkind, RelKind::Partitioned);
    assert_eq!(payment.partitions.len(), 7, "{:?}", payment.partitions);
    assert_eq!(payment.relations.len(), 7);
    assert!(
        payment
            .partitions
            .contains(&TableId::new("public", "payment_p2022_01"))
    );
    assert_eq!(payment.row_estimate, Some(16049));
    assert!(payment.bytes > 0);
    let pk: Vec<&str> = payment.schema.key_names().collect();
    assert_eq!(pk, ["payment_date", "payment_id"]);

    let film = cat.table(&TableId::new("public", "film")).unwrap();
    assert_eq!(film.relkind, RelKind::Table);
    assert_eq!(film.row_estimate, Some(1000));
    let ty = |c: &str| {
        let i = film.schema.column_index(c).unwrap();
        film.schema.columns[i].pg_type.clone()
    };
    assert_eq!(ty("rating"), "mpaa_rating");
    assert_eq!(ty("release_year"), "year");
    assert_eq!(ty("special_features"), "text[]");
    assert_eq!(ty("title"), "text");
    assert_eq!(ty("rental_rate"), "numeric(4,2)");
    assert_eq!(film.schema.key_names().collect::<Vec<_>>(), ["film_id"]);
    assert_eq!(film.schema.columns[0].name, "film_id");
    assert!(!film.schema.columns[0].nullable);

    let film_actor = cat.table(&TableId::new("public", "film_actor")).unwrap();
    assert_eq!(
        film_actor.schema.key_names().collect::<Vec<_>>(),
        ["actor_id", "film_id"]
    );

    let gen_t = cat.table(&TableId::new("public", "gen_t")).unwrap();
    let cols: Vec<&str> = gen_t
        .schema
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(cols, ["id", "a", "c"]);

    let ident = cat.table(&TableId::new("public", "ident_t")).unwrap();
    assert_eq!(ident.replica_identity_columns, ["y", "x"]);
    assert_eq!(ident.schema.key_names().collect::<Vec<_>>(), ["y", "x"]);
    assert_eq!(
        ident.schema.replica_identity,
        ferry_core::ReplicaIdentity::Index
    );

    let rating = cat
        .types
        .iter()
        .find(|t| t.id == TableId::new("public", "mpaa_rating"))
        .unwrap();
    assert_eq!(
        rating.kind,
        TypeKind::Enum(
            ["G", "PG", "PG-13", "R", "NC-17"]
                .map(String::from)
                .to_vec()
        )
    );
    let year = cat
        .types
        .iter()
        .find(|t| t.id == TableId::new("public", "year"))
        .unwrap();
    assert!(matches!(&year.kind, TypeKind::Domain { base, .. } if base == "integer"));
    assert!(cat.types.iter().any(|t| t.id.name == "bıgınt"));

    let seq = cat
        .sequences
        .iter()
        .find(|s| s.id == TableId::new("public", "film_film_id_seq"))
        .expect("film sequence");
    assert_eq!(seq.last_value, Some(1000));
    let owned = cat
        .sequences
        .iter()
        .find(|s| s.id.name == "gen_t_id_seq")
        .expect("serial sequence");
    assert_eq!(owned.last_value, None);
    assert_eq!(
        owned.owned_by,
        Some((TableId::new("public", "gen_t"), "id".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_and_exclude_globs() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let db = pg.create_database("catalog_globs").unwrap();
    pg.load_pagila(&db).unwrap();
    let client = connect(&endpoint(&pg.url(&db)), "source").await.unwrap();

    let filter = tables(&["public.film*"], &["public.film_category"])
        .filter()
        .unwrap();
    let cat = read_catalog(&client, &filter, "ferry").await.unwrap();
    let names: Vec<String> = cat
        .tables
        .iter()
        .map(|t| t.schema.id.name.clone())
        .collect();
    assert_eq!(names, ["film", "film_actor"]);
    assert_eq!(cat.schemas(), ["public"]);
    let seqs: Vec<&str> = cat.sequences.iter().map(|s| s.id.name.as_str()).collect();
    assert_eq!(seqs, ["film_film_id_seq"]);

    let filter = tables(&["public.payment"], &[]).filter().unwrap();
    let cat = read_catalog(&client, &filter, "ferry").await.unwrap();
    assert_eq!(cat.tables.len(), 1);
    assert_eq!(cat.tables[0].partitions.len(), 7);

    let filter = tables(&["*.*"], &["public.*"]).filter().unwrap();
    let cat = read_catalog(&client, &filter, "ferry").await.unwrap();
    assert!(cat.tables.is_empty(), "{:?}", cat.tables);
}

/// The checks of `ferry plan` and the pipeline share one catalog read when
/// `ferry run` starts: the second asker gets the first one's catalog
/// without a query of its own, and a read that failed is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_catalog_is_read_once_and_a_failed_read_is_not_kept() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let db = pg.create_database("shared").unwrap();
    pg.psql(&db, "CREATE TABLE public.t (id int PRIMARY KEY, v text);")
        .unwrap();
    let live = connect(&endpoint(&pg.url(&db)), "source").await.unwrap();
    // A session the server has ended: any query on it fails.
    let ended = connect(&endpoint(&pg.url(&db)), "source").await.unwrap();
    let pid: i32 = ended
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    pg.psql(&db, &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let filter = tables(&["public.*"], &[]).filter().unwrap();
    assert!(
        read_catalog(&ended, &filter, "ferry").await.is_err(),
        "a read on the ended session must fail for this test to mean anything"
    );

    let shared = SharedCatalog::default();
    let first = shared.get_or_read(&live, &filter, "ferry").await.unwrap();
    let second = shared.get_or_read(&ended, &filter, "ferry").await.unwrap();
    assert_eq!(first, second);
    let names: Vec<String> = second
        .tables
        .iter()
        .map(|t| t.schema.id.to_string())
        .collect();
    assert_eq!(names, ["public.t"]);

    let shared = SharedCatalog::default();
    assert!(shared.get_or_read(&ended, &filter, "ferry").await.is_err());
    let after = shared.get_or_read(&live, &filter, "ferry").await.unwrap();
    assert_eq!(
        after, first,
        "the failed read was kept instead of read again"
    );
}
