//! pg_dump pre/post-data of Pagila applied around a binary-COPY load.

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::RedactedUrl;
use ferry_core::config::{Endpoint, SslMode, TablesConfig};
use ferry_postgres::catalog::read_catalog;
use ferry_postgres::connect::connect;
use ferry_postgres::dump::{
    Via, apply_sql, dump_schema, dump_schema_via, find_pg_dump, pg_restore_beside, split_post_data,
    split_sections, strip_meta_commands, tidy_pre_data,
};
use ferry_postgres::snapshot::{SnapshotSession, column_list, plan_chunks};
use ferry_testkit::{PgOptions, PgServer};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        url: RedactedUrl::new(url),
        sslmode: Some(SslMode::Disable),
        sslrootcert: None,
    }
}

async fn scalar(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

const SUMMARY: &str = "SELECT (SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
                                 WHERE n.nspname = 'public' AND c.contype = 'f')
                     + 1000 * (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public')
                     + 1000000 * (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                                  JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE n.nspname = 'public' AND NOT t.tgisinternal)";

/// The plain script `pg_dump` at `path` writes of `schemas` of `url`, with
/// the options ferry runs it with.
fn plain_script(path: &std::path::Path, url: &str, schemas: &[String]) -> String {
    let out = std::process::Command::new(path)
        .args(["--schema-only", "--no-owner", "--no-privileges"])
        .args([
            "--no-publications",
            "--no-subscriptions",
            "--no-tablespaces",
        ])
        .args(schemas.iter().map(|s| format!("--schema={s}")))
        .arg(format!("--dbname={url}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{path:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Objects of the types a schema dump can hold beyond Pagila's, in a
/// second schema: `NOT VALID` checks (table and domain), extended
/// statistics, a rule, row security and a policy, a materialized view with
/// an index, comments on pre- and post-data objects, an owned sequence,
/// text search, collation, operator, range type, procedure, a partitioned
/// table with an attached partition index, a trigger.
const MORE_TYPES: &str = r"
CREATE SCHEMA extra;
CREATE TABLE extra.t (id int PRIMARY KEY, v int, w text);
ALTER TABLE extra.t ADD CONSTRAINT v_pos CHECK (v > 0) NOT VALID;
CREATE DOMAIN extra.pos AS int;
ALTER DOMAIN extra.pos ADD CONSTRAINT pos_chk CHECK (VALUE > 0) NOT VALID;
CREATE STATISTICS extra.st ON v, w FROM extra.t;
CREATE RULE skip_negative AS ON INSERT TO extra.t WHERE NEW.v < 0 DO INSTEAD NOTHING;
ALTER TABLE extra.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY positive ON extra.t USING (v > 0);
CREATE MATERIALIZED VIEW extra.mv AS SELECT id, v FROM extra.t;
CREATE INDEX mv_v ON extra.mv (v);
COMMENT ON INDEX extra.mv_v IS 'an index comment';
COMMENT ON TABLE extra.t IS 'a table comment';
COMMENT ON CONSTRAINT v_pos ON extra.t IS 'a constraint comment';
CREATE VIEW extra.tv AS SELECT * FROM extra.t;
CREATE SEQUENCE extra.s OWNED BY extra.t.id;
CREATE TEXT SEARCH CONFIGURATION extra.cfg (COPY = pg_catalog.english);
CREATE COLLATION extra.c (provider = libc, locale = 'C');
CREATE OPERATOR extra.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq);
CREATE TYPE extra.rng AS RANGE (subtype = int);
CREATE PROCEDURE extra.noop() LANGUAGE sql AS $$ SELECT 1 $$;
CREATE TABLE extra.parted (k int, v int) PARTITION BY RANGE (k);
CREATE TABLE extra.part1 PARTITION OF extra.parted FOR VALUES FROM (0) TO (10);
CREATE INDEX parted_v ON extra.parted (v);
CREATE FUNCTION extra.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON extra.t FOR EACH ROW EXECUTE FUNCTION extra.touch();
";

/// The schema is read with one plain `pg_dump`, split where its first
/// post-data object starts: the same SQL as one archive split by
/// `pg_restore` and as two `pg_dump --section` runs, apart from the random
/// key of pg_dump's `\restrict` lines (dropped with the other psql
/// meta-commands), on Pagila and on the object types it lacks. The plain
/// script itself splits (no fallback to a second dump).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plain_script_gives_the_sections_pg_restore_gives() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("dump_src").unwrap();
    pg.load_pagila(&src).unwrap();
    pg.psql(&src, MORE_TYPES).unwrap();
    let src_ep = endpoint(&pg.url(&src));
    let source = connect(&src_ep, "source").await.unwrap();
    let path = find_pg_dump().unwrap();
    let restore = pg_restore_beside(&path).expect("pg_restore beside pg_dump");
    let schemas = ["extra".to_owned(), "public".to_owned()];
    let dump = |via| dump_schema_via(&src_ep, &source, &schemas, "ferry", None, &path, via);
    let plain = dump(Via::Plain(None)).await.unwrap();
    let archive = dump(Via::Archive(restore)).await.unwrap();
    let sections = dump(Via::Sections).await.unwrap();
    assert!(archive.pre_data.contains("CREATE TABLE public.rental"));
    assert!(archive.post_data.contains("ADD CONSTRAINT rental_pkey"));
    assert!(!archive.pre_data.contains("ADD CONSTRAINT rental_pkey"));
    assert!(archive.post_data.contains("CREATE POLICY positive"));
    assert!(archive.post_data.contains("CREATE STATISTICS extra.st"));
    assert_eq!(plain.pre_data, archive.pre_data);
    assert_eq!(plain.post_data, archive.post_data);
    assert_eq!(archive.pre_data, sections.pre_data);
    assert_eq!(archive.post_data, sections.post_data);

    let script = plain_script(&path, &pg.url(&src), &schemas);
    let (pre, post) = split_sections(&script).expect("the plain script splits");
    assert_eq!(tidy_pre_data(&pre), plain.pre_data);
    assert_eq!(strip_meta_commands(&post), plain.post_data);
}

/// The plain script of the objects above splits as `pg_restore` splits
/// their archive on every server major of the version matrix (the
/// first `pg_dump` new enough for it, as the version matrix runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_split_is_pg_restores_on_every_server_version() {
    for major in ferry_testkit::MATRIX_MAJORS {
        let path = ferry_testkit::pg_dump_for(major).expect("pg_dump");
        let restore = pg_restore_beside(&path).expect("pg_restore beside pg_dump");
        let pg = PgServer::start(PgOptions::new().version(major)).expect("start postgres");
        let src = pg.create_database("dump_src").unwrap();
        pg.psql(&src, MORE_TYPES).unwrap();
        let src_ep = endpoint(&pg.url(&src));
        let source = connect(&src_ep, "source").await.unwrap();
        let schemas = ["extra".to_owned()];
        let dump = |via| dump_schema_via(&src_ep, &source, &schemas, "ferry", None, &path, via);
        let archive = dump(Via::Archive(restore)).await.unwrap();
        let script = plain_script(&path, &pg.url(&src), &schemas);
        let (pre, post) = split_sections(&script)
            .unwrap_or_else(|| panic!("PostgreSQL {major}: the plain script does not split"));
        assert_eq!(tidy_pre_data(&pre), archive.pre_data, "PostgreSQL {major}");
        assert_eq!(
            strip_meta_commands(&post),
            archive.post_data,
            "PostgreSQL {major}"
        );
        assert!(
            archive.post_data.contains("CREATE TRIGGER touch"),
            "PostgreSQL {major}"
        );
    }
}

/// A plain script with an object type the split does not know is dumped
/// again and split by `pg_restore`: a `pg_dump` wrapper adds an entry of
/// an unknown type to every plain script it writes (and runs the real one
/// otherwise); the sections are then the archive's, without that entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_script_the_split_does_not_know_is_split_by_pg_restore() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("dump_src").unwrap();
    pg.psql(&src, MORE_TYPES).unwrap();
    let src_ep = endpoint(&pg.url(&src));
    let source = connect(&src_ep, "source").await.unwrap();
    let real = find_pg_dump().unwrap();
    let restore = pg_restore_beside(&real).expect("pg_restore beside pg_dump");
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("pg_dump");
    let plain_runs = dir.path().join("plain-runs");
    let script = dir.path().join("script.sql");
    std::fs::write(
        &wrapper,
        format!(
            r#"#!/bin/sh
case " $* " in
  *" --format=custom "*|*" --section="*|*" --version "*) exec '{real}' "$@" ;;
esac
echo plain >> '{runs}'
'{real}' "$@" | sed 's/^-- PostgreSQL database dump complete$/-- Name: x; Type: SOMETHING NEW; Schema: -; Owner: -\n--\n\nSELECT 1;\n\n--\n&/' | tee '{script}'
"#,
            real = real.display(),
            runs = plain_runs.display(),
            script = script.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let schemas = ["extra".to_owned()];
    let dump = |path, via| dump_schema_via(&src_ep, &source, &schemas, "ferry", None, path, via);
    let fallback = dump(&wrapper, Via::Plain(Some(restore.clone())))
        .await
        .unwrap();
    let archive = dump(&real, Via::Archive(restore)).await.unwrap();
    let runs = std::fs::read_to_string(&plain_runs).unwrap();
    assert_eq!(runs.lines().count(), 1, "one plain script was written");
    let written = std::fs::read_to_string(&script).unwrap();
    assert!(
        written.contains("-- Name: x; Type: SOMETHING NEW; Schema: -; Owner: -"),
        "the wrapper added its entry"
    );
    assert_eq!(split_sections(&written), None);
    assert_eq!(fallback.pre_data, archive.pre_data);
    assert_eq!(fallback.post_data, archive.post_data);
    assert!(!fallback.post_data.contains("SOMETHING NEW"));
    assert!(!fallback.pre_data.contains("SOMETHING NEW"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagila_schema_round_trip() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let src = pg.create_database("dump_src").unwrap();
    let dst = pg.create_database("dump_dst").unwrap();
    pg.load_pagila(&src).unwrap();
    let src_ep = endpoint(&pg.url(&src));
    let dst_ep = endpoint(&pg.url(&dst));
    let source = connect(&src_ep, "source").await.unwrap();
    let filter = TablesConfig::default().filter().unwrap();
    let cat = read_catalog(&source, &filter, "ferry").await.unwrap();

    let dump = dump_schema(&src_ep, &source, &cat.schemas(), "ferry", None)
        .await
        .unwrap();
    assert!(
        dump.pre_data
            .contains("CREATE TYPE public.mpaa_rating AS ENUM")
    );
    assert!(dump.pre_data.contains("PARTITION BY RANGE (payment_date)"));
    assert!(!dump.pre_data.contains("ADD CONSTRAINT film_pkey"));
    assert!(dump.post_data.contains("ADD CONSTRAINT film_pkey"));
    assert!(!dump.pre_data.contains("OWNER TO"));

    let post = split_post_data(&dump.post_data);
    let kinds = |v: &[ferry_postgres::dump::DumpEntry]| {
        let mut k: Vec<String> = v.iter().map(|e| e.kind.clone()).collect();
        k.sort();
        k.dedup();
        k
    };
    assert_eq!(kinds(&post.parallel), ["CONSTRAINT", "INDEX"]);
    let seq_kinds = kinds(&post.sequential);
    for k in ["FK CONSTRAINT", "INDEX ATTACH", "TRIGGER"] {
        assert!(
            seq_kinds.iter().any(|s| s == k),
            "{k} missing in {seq_kinds:?}"
        );
    }
    assert!(
        post.parallel
            .iter()
            .any(|e| e.sql.contains("CREATE INDEX idx_actor_last_name"))
    );
    assert!(post.parallel.len() > 30, "{}", post.parallel.len());

    // Schema before data.
    let target = connect(&dst_ep, "target").await.unwrap();
    apply_sql(&target, &dump.pre_data, "pre-data")
        .await
        .unwrap();
    let search_path: String = target
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        search_path.contains("public"),
        "session not reset: {search_path}"
    );

    // Data at a snapshot.
    source
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let name: String = source
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    let session = SnapshotSession::open(&src_ep, &name).await.unwrap();
    for table in &cat.tables {
        for chunk in plan_chunks(table, 5_000) {
            let stream = session.copy_out(&chunk, &table.schema).await.unwrap();
            let sql = format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                table.schema.id.quoted(),
                column_list(&table.schema)
            );
            let sink = target.copy_in::<_, Bytes>(&sql).await.unwrap();
            futures_util::pin_mut!(sink, stream);
            while let Some(b) = stream.next().await {
                sink.send(b.unwrap()).await.unwrap();
            }
            sink.finish().await.unwrap();
        }
    }

    // Post-data: index/constraint builds on three connections at once, then the rest in order.
    let queue = Arc::new(tokio::sync::Mutex::new(post.parallel.clone()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let queue = queue.clone();
        let ep = dst_ep.clone();
        let preamble = post.preamble.clone();
        workers.spawn(async move {
            let client = connect(&ep, "target").await.unwrap();
            loop {
                let Some(entry) = queue.lock().await.pop() else {
                    break;
                };
                apply_sql(&client, &format!("{preamble}{}", entry.sql), &entry.name)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", entry.name));
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    for entry in &post.sequential {
        apply_sql(
            &target,
            &format!("{}{}", post.preamble, entry.sql),
            &entry.name,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", entry.name));
    }

    for t in [
        "payment",
        "rental",
        "film",
        "film_actor",
        "customer",
        "staff",
    ] {
        let sql = format!("SELECT count(*) FROM public.{t}");
        assert_eq!(
            scalar(&target, &sql).await,
            scalar(&source, &sql).await,
            "{t}"
        );
    }
    assert_eq!(
        scalar(&target, "SELECT count(*) FROM public.payment").await,
        16049
    );
    let summary = scalar(&source, SUMMARY).await;
    assert!(summary % 1000 > 0 && summary / 1_000_000 > 0, "{summary}");
    assert_eq!(scalar(&target, SUMMARY).await, summary);
    // The copy went through the real constraints: the PK exists and holds.
    let dup = target
        .batch_execute(
            "INSERT INTO public.actor (actor_id, first_name, last_name) VALUES (1, 'a', 'b')",
        )
        .await
        .unwrap_err();
    assert_eq!(
        dup.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
        "{dup:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sql_leaves_nothing_behind() {
    let pg = PgServer::start(PgOptions::new()).expect("start postgres");
    let db = pg.create_database("dump_fail").unwrap();
    let client = connect(&endpoint(&pg.url(&db)), "target").await.unwrap();
    let err = apply_sql(
        &client,
        "CREATE TABLE a (x int);\nCREATE TABLE a (x int);",
        "pre-data",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("applying pre-data"), "{err}");
    assert_eq!(
        scalar(&client, "SELECT count(*) FROM pg_class WHERE relname = 'a'").await,
        0
    );
}
