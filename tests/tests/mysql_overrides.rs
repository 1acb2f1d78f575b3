//! MariaDB → PostgreSQL through the `ferry` CLI with
//! `[tables.columns."db.table.column"] type` overrides: the target columns
//! get the override types (`ferry plan` shows them) and every value
//! reaches them exactly, through the load and through streamed inserts and
//! updates.

use std::path::Path;
use std::time::Duration;

use ferry_e2e::migration::{free_port, target_options};
use ferry_e2e::{Background, ferry, pgsync, run, target_text, wait_until};
use ferry_testkit::{MariaDbOptions, MariaDbServer, PgServer};

const WAIT: Duration = Duration::from_secs(180);

fn command(source_url: &str, target_url: &str, config: &Path) -> std::process::Command {
    let mut c = ferry(source_url, target_url).unwrap();
    c.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONFIG", config);
    c
}

const TABLE: &str = "CREATE TABLE o (id INT PRIMARY KEY, n INT, amount DECIMAL(10,2), \
     at DATETIME, name VARCHAR(40), doc VARCHAR(100));";

/// Rows `id0 + 1 ..= id0 + 3`: two with values, one all NULL.
fn rows(id0: u32) -> String {
    format!(
        "INSERT INTO o VALUES ({}, 42, 12.50, '2024-01-02 03:04:05', 'Alice', '{{\"a\": 1}}'),
           ({}, -7, 0.10, '1999-12-31 23:59:59', 'BOB', '[1, 2]'),
           ({}, NULL, NULL, NULL, NULL, NULL);",
        id0 + 1,
        id0 + 2,
        id0 + 3
    )
}

/// The expected target text of rows `id0 + 1 ..= id0 + 3` (after
/// `update`: the second row's values changed on the source).
fn expected(id0: u32, updated: bool) -> String {
    let second = if updated {
        "-8|0.25|2000-01-01 00:00:01+00|carol|true|{\"b\": null}"
    } else {
        "-7|0.1|1999-12-31 23:59:59+00|bob|true|[1, 2]"
    };
    format!(
        "{}|42|12.5|2024-01-02 03:04:05+00|alice|true|{{\"a\": 1}},{}|{second},{}|-|-|-|-|-|-",
        id0 + 1,
        id0 + 2,
        id0 + 3
    )
}

const SELECT: &str = "SELECT string_agg(concat_ws('|', id, coalesce(n, '-'), coalesce(amount::text, '-'), \
     coalesce(at::text, '-'), coalesce(lower(name::text), '-'), coalesce((name = upper(name::text)::citext)::text, '-'), \
     coalesce(doc::text, '-')), ',' ORDER BY id) FROM ";

#[test]
fn type_overrides_through_load_and_stream() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("ov").expect("database");
    source
        .sql(&db, &format!("{TABLE} {}", rows(0)))
        .expect("source rows");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(&target_url).await.unwrap();
        c.batch_execute(&format!(
            "CREATE EXTENSION citext; ALTER DATABASE \"{tdb}\" SET TimeZone = 'UTC'"
        ))
        .await
        .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[tables.columns.\"{db}.o.n\"]\ntype = \"text\"\n\
             [tables.columns.\"{db}.o.amount\"]\ntype = \"double precision\"\n\
             [tables.columns.\"{db}.o.at\"]\ntype = \"timestamptz\"\n\
             [tables.columns.\"{db}.o.name\"]\ntype = \"citext\"\n\
             [tables.columns.\"{db}.o.doc\"]\ntype = \"jsonb\"\n"
        ),
    )
    .unwrap();

    let mut plan = command(&source_url, &target_url, &config);
    plan.arg("plan");
    let planned = run(&mut plan).unwrap().all();
    for (name, types) in [
        ("n", "int(11) → text"),
        ("amount", "decimal(10,2) → double precision"),
        ("at", "datetime → timestamptz"),
        ("name", "varchar(40) → citext"),
        ("doc", "varchar(100) → jsonb"),
    ] {
        let line = format!("    {name:<6}  {types}");
        assert!(planned.contains(&line), "{line}: {planned}");
    }

    let mut c = command(&source_url, &target_url, &config);
    c.env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("FERRY_APPLY_BATCH_MS", "100")
        .env("FERRY_LOG", "info")
        .arg("run");
    let mut ferry_run = Background::spawn(c, &dir.path().join("run.log")).unwrap();
    wait_until(&mut ferry_run, "the stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    let select = format!("{SELECT} \"{db}\".o");
    assert_eq!(
        target_text(&target_url, &select),
        Some(expected(0, false)),
        "after the load"
    );
    let types = format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
         FROM pg_attribute WHERE attrelid = '\"{db}\".o'::regclass AND attnum > 0 AND NOT attisdropped"
    );
    assert_eq!(
        target_text(&target_url, &types).as_deref(),
        Some(
            "id integer, n text, amount double precision, at timestamp with time zone, name citext, doc jsonb"
        )
    );

    source
        .sql(
            &db,
            &format!(
                "{} UPDATE o SET n = -8, amount = 0.25, at = '2000-01-01 00:00:01', name = 'Carol', \
                 doc = '{{\"b\": null}}' WHERE id IN (2, 12);",
                rows(10)
            ),
        )
        .expect("streamed rows");
    let want = format!("{},{}", expected(0, true), expected(10, true));
    wait_until(&mut ferry_run, "the streamed rows", WAIT, || {
        target_text(&target_url, &select).as_deref() == Some(want.as_str())
    });
    drop(ferry_run);
}

/// A MariaDB table `b (id INT PRIMARY KEY, code VARCHAR(10))` filled by
/// `rows`, whose `code` is overridden to `integer` on the target.
struct IntegerOverride {
    source: MariaDbServer,
    db: String,
    _target: PgServer,
    target_url: String,
    dir: tempfile::TempDir,
}

impl IntegerOverride {
    fn start(rows: &str) -> IntegerOverride {
        let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
        let db = source.create_database("bad").expect("database");
        source
            .sql(
                &db,
                &format!("CREATE TABLE b (id INT PRIMARY KEY, code VARCHAR(10)); {rows}"),
            )
            .expect("source rows");
        let target = PgServer::start(target_options()).expect("target");
        let tdb = target.create_database("dst").expect("target database");
        let target_url = target.url(&tdb);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ferry.toml"),
            format!("[tables.columns.\"{db}.b.code\"]\ntype = \"integer\"\n"),
        )
        .unwrap();
        IntegerOverride {
            source,
            db,
            _target: target,
            target_url,
            dir,
        }
    }

    /// `ferry run` with the override, the control API on a free port.
    fn run_command(&self) -> std::process::Command {
        let config = self.dir.path().join("ferry.toml");
        let mut c = command(&self.source.url(&self.db), &self.target_url, &config);
        c.env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{}", free_port()))
            .arg("run");
        c
    }
}

/// A value the override type cannot take stops the load with an error
/// naming the table, the row's key, the column, its type and the fix (the
/// override), with the target's error naming the value.
#[test]
fn impossible_override_stops_the_load_naming_table_key_and_column() {
    let rig = IntegerOverride::start("INSERT INTO b VALUES (1, '12'), (2, 'abc');");
    let db = &rig.db;
    let mut c = rig.run_command();
    let out = run(&mut c).unwrap();
    let all = out.all();
    assert_ne!(out.code, Some(0), "{all}");
    assert!(
        all.contains("invalid input syntax for type integer: \"abc\""),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "loading {db}.b chunk 1/1: table {db}.b, key (id)=(2), column code: the value does not fit the target column's type integer (SQLSTATE 22P02)"
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "the column's type comes from the override `tables.columns.\"{db}.b.code\".type = \"integer\"`: fix the value on the source"
        )),
        "{all}"
    );
}

/// A value the override type cannot take, written mid-stream, stops the
/// stream with an error naming the table, the row's key, the column and
/// the fix; the changes before it are applied.
#[test]
fn impossible_override_stops_the_stream_naming_table_key_and_column() {
    let rig = IntegerOverride::start("INSERT INTO b VALUES (1, '12');");
    let (source, dir) = (&rig.source, &rig.dir);
    let (db, target_url) = (rig.db.clone(), rig.target_url.clone());
    let mut c = rig.run_command();
    c.env("FERRY_APPLY_BATCH_MS", "100");
    let mut ferry_run = Background::spawn(c, &dir.path().join("run.log")).unwrap();
    wait_until(&mut ferry_run, "the stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    let rows = || {
        target_text(
            &target_url,
            &format!("SELECT string_agg(id || ':' || code, ',' ORDER BY id) FROM \"{db}\".b"),
        )
    };
    source
        .sql(&db, "INSERT INTO b VALUES (2, '7');")
        .expect("a streamed row");
    wait_until(&mut ferry_run, "the streamed row", WAIT, || {
        rows().as_deref() == Some("1:12,2:7")
    });
    source
        .sql(&db, "INSERT INTO b VALUES (3, 'x1'), (4, '8');")
        .expect("streamed rows");
    let code = ferry_run.wait(WAIT).unwrap();
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "applying a change: table {db}.b, key (id)=(3), column code: the value does not fit the target column's type integer (SQLSTATE 22P02)"
        )),
        "{log}"
    );
    assert!(
        log.contains("give the target column a type that takes the value"),
        "{log}"
    );
    assert_eq!(
        rows().as_deref(),
        Some("1:12,2:7"),
        "the transaction before the bad value is applied, the bad one is not"
    );
}
