//! `ferry validate` for MariaDB and SQLite sources through the CLI, against
//! real throwaway servers, while an application keeps writing: every
//! difference planted on the target is found (a changed value, a missing
//! row, extra rows in the middle and past the end, a NULL where the source
//! has the empty string, a timestamp off by one microsecond, and rows of a
//! text-keyed table whose keys mix case and accents), nothing else is —
//! decimals, floats, JSON, booleans and timestamps compare through the
//! normalization table, not their text — `--repair` makes them equal, and
//! the stream keeps running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_e2e::migration::{LONG, free_port, target_options};
use ferry_e2e::validation::{by_table, differences, expected};
use ferry_e2e::{Background, Ran, ferry, pgsync, run, target_text, wait_until};
use ferry_testkit::{MariaDbOptions, MariaDbServer, PgServer};
use serde_json::Value;

/// Words of the text keys: upper and lower case, accents, a German sharp
/// s — byte order differs from MariaDB's and PostgreSQL's default
/// collations.
const WORDS: [&str; 7] = ["alpha", "Beta", "gamma", "Délta", "épsilon", "Zeta", "ß"];

fn code(i: u32) -> String {
    format!("{}-{i}", WORDS[i as usize % WORDS.len()])
}

/// What is planted on the target (`{s}`: the target schema), and how
/// validation names it.
const PLANT: &str = r#"
UPDATE {s}.items SET qty = qty + 1 WHERE id = 102;
DELETE FROM {s}.items WHERE id = 202;
INSERT INTO {s}.items (id, name, qty) VALUES (3001, 'extra in the middle', 1);
INSERT INTO {s}.items (id, name, qty) VALUES (20001, 'extra past the end', 1);
UPDATE {s}.items SET name = NULL WHERE id = 404;
UPDATE {s}.items SET at = at + interval '1 microsecond' WHERE id = 506;
UPDATE {s}.codes SET label = 'planted' WHERE code = 'Beta-1';
DELETE FROM {s}.codes WHERE code = 'ß-6';
INSERT INTO {s}.codes VALUES ('Zz-extra', 'only on the target');
"#;

fn planted_items() -> BTreeMap<String, (String, Vec<String>)> {
    expected(&[
        ("102", "changed", &["qty"]),
        ("202", "missing", &[]),
        ("3001", "extra", &[]),
        ("20001", "extra", &[]),
        ("404", "changed", &["name"]),
        ("506", "changed", &["at"]),
    ])
}

fn planted_codes() -> BTreeMap<String, (String, Vec<String>)> {
    expected(&[
        ("Beta-1", "changed", &["label"]),
        ("ß-6", "missing", &[]),
        ("Zz-extra", "extra", &[]),
    ])
}

/// `ferry validate --json <args>`: exit code, results by table, all output.
fn validate(
    cmd: &dyn Fn() -> std::process::Command,
    args: &[&str],
) -> (Option<i32>, BTreeMap<String, Value>, Ran) {
    let mut c = cmd();
    c.args(["validate", "--json"]).args(args);
    let ran = run(&mut c).unwrap();
    let results = by_table(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.all()));
    (ran.code, results, ran)
}

/// One source's migration, as the shared checks see it.
struct Case<'a> {
    cmd: &'a dyn Fn() -> std::process::Command,
    target_url: &'a str,
    /// The target schema, quoted.
    schema: &'a str,
    /// The source names of `items` and `codes`.
    names: (&'a str, &'a str),
    all_tables: &'a [&'a str],
    /// The table the application writes.
    hot: &'a str,
    /// Transactions the application committed so far.
    writes: &'a dyn Fn() -> u64,
}

/// The checks shared by both sources, once `ferry run` streams and the
/// application writes to `hot` (whose rows may come out unsettled, never
/// different). `items` and `codes` are written by nobody.
fn check_planted(case: &Case<'_>, ferry_run: &mut Background) {
    let Case {
        cmd,
        target_url,
        schema,
        names,
        all_tables,
        hot,
        writes,
    } = *case;
    let (items, codes) = names;
    // Equal data first: no false positive (decimals, floats, JSON,
    // booleans, timestamps and byte-ordered text keys all compare equal).
    let (code, results, ran) = validate(cmd, &["--tables", &format!("{items},{codes}")]);
    assert_eq!(code, Some(0), "{}\n{}", ran.all(), ferry_run.log());
    assert_eq!(results[items]["rows_checked"], 2000, "{}", ran.all());
    assert_eq!(results[codes]["rows_checked"], 300, "{}", ran.all());

    target_sql(target_url, &PLANT.replace("{s}", schema));
    let before = writes();
    let (code, results, ran) = validate(cmd, &[]);
    assert_eq!(code, Some(2), "not clean exits 2: {}", ran.all());
    assert_eq!(
        differences(&results[items]),
        planted_items(),
        "{}",
        ran.all()
    );
    assert_eq!(
        differences(&results[codes]),
        planted_codes(),
        "{}",
        ran.all()
    );
    assert_eq!(results.len(), all_tables.len(), "{}", ran.all());
    for t in all_tables.iter().filter(|t| ![items, codes].contains(t)) {
        let v = &results[*t];
        assert_eq!(
            differences(v),
            BTreeMap::new(),
            "false positives in {t}: {}",
            ran.all()
        );
        // Rows the application updates every few milliseconds may come out
        // unsettled (nothing on the source is locked), never different.
        let unsettled = v["unsettled"].as_array().expect("unsettled");
        if *t == hot {
            assert_eq!(v["clean"], unsettled.is_empty(), "{t}: {}", ran.all());
        } else {
            assert!(
                unsettled.is_empty() && v["clean"] == true,
                "{t}: {}",
                ran.all()
            );
        }
    }
    assert!(
        writes() > before,
        "the application kept writing during validation"
    );

    // Repair exactly the planted keys, while the stream runs.
    let (code, results, ran) =
        validate(cmd, &["--tables", &format!("{items},{codes}"), "--repair"]);
    assert_eq!(code, Some(0), "{}\n{}", ran.all(), ferry_run.log());
    assert_eq!(results[items]["repaired"], 6, "{}", ran.all());
    assert_eq!(results[codes]["repaired"], 3, "{}", ran.all());
    let (code, results, ran) = validate(cmd, &["--tables", &format!("{items},{codes}")]);
    assert_eq!(code, Some(0), "{}", ran.all());
    assert_eq!(differences(&results[items]), BTreeMap::new());
    assert_eq!(differences(&results[codes]), BTreeMap::new());
    assert_eq!(
        target_text(
            target_url,
            &format!("SELECT label FROM {schema}.codes WHERE code = 'Beta-1'")
        )
        .as_deref(),
        Some("label 1"),
        "the repair wrote the source's row"
    );
}

fn target_sql(url: &str, sql: &str) {
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.unwrap();
        c.batch_execute(sql).await.unwrap();
    });
}

#[test]
fn mariadb_source_validates_and_repairs_under_writes() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("shop").expect("database");
    let mut rows = Vec::new();
    for i in 1..=2000u32 {
        let name = if 2 * i == 404 {
            String::new()
        } else {
            format!("item {i}")
        };
        rows.push(format!(
            "({}, '{name}', {}, {}.{:02}, {}, '2024-03-01 12:00:00.123456' + INTERVAL {i} SECOND, '{{\"b\": {i}, \"a\": [1, \"x\"]}}', {})",
            2 * i,
            i % 13,
            i,
            (i * 7) % 100,
            f64::from(i) / 7.0,
            i % 2
        ));
    }
    let mut codes = Vec::new();
    for i in 0..300u32 {
        codes.push(format!("('{}', 'label {i}')", code(i)));
    }
    source
        .sql(
            &db,
            &format!(
                "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40) NULL, qty INT NOT NULL,
                   price DECIMAL(10,2), ratio DOUBLE, at DATETIME(6), doc JSON, flag TINYINT(1));
                 INSERT INTO items VALUES {};
                 CREATE TABLE codes (code VARCHAR(20) PRIMARY KEY, label VARCHAR(40));
                 INSERT INTO codes VALUES {};
                 CREATE TABLE hot (id INT PRIMARY KEY, n BIGINT NOT NULL, at DATETIME(6));
                 INSERT INTO hot VALUES (1, 0, NOW(6)), (2, 0, NOW(6)), (3, 0, NOW(6));",
                rows.join(", "),
                codes.join(", ")
            ),
        )
        .expect("schema and data");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let control = format!("127.0.0.1:{}", free_port());
    let cmd = || {
        let mut c = ferry(&source_url, &target_url).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", &control)
            .env("FERRY_APPLY_BATCH_MS", "50")
            .env("FERRY_VALIDATE_CHUNK_ROWS", "400")
            .env("FERRY_VALIDATE_LEAF_ROWS", "50")
            .env("FERRY_VALIDATE_ROWS_PER_SECOND", "0")
            .env("FERRY_VALIDATE_WAIT_SECONDS", "600");
        c
    };
    let mut c = cmd();
    c.env("FERRY_LOG", "info").arg("run");
    let mut ferry_run = Background::spawn(c, &logs.path().join("run.log")).unwrap();
    wait_until(&mut ferry_run, "the stream", LONG, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });

    // The application: a transaction every few milliseconds on `hot`.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, done, url) = (stop.clone(), done.clone(), source_url.clone());
        std::thread::spawn(move || {
            pgsync::runtime().block_on(async move {
                use mysql_async::prelude::Queryable;
                let mut conn = mysql_async::Conn::from_url(&url).await?;
                let mut i: u64 = 0;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    conn.exec_drop(
                        "UPDATE hot SET n = n + 1, at = NOW(6) WHERE id = ?",
                        (1 + i % 3,),
                    )
                    .await?;
                    done.fetch_add(1, Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                conn.disconnect().await?;
                anyhow::Ok(())
            })
        })
    };
    while done.load(Ordering::Acquire) < 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let schema = db.as_str();
    let items = format!("{db}.items");
    let codes_t = format!("{db}.codes");
    let hot = format!("{db}.hot");
    check_planted(
        &Case {
            cmd: &cmd,
            target_url: &target_url,
            schema: &format!("\"{schema}\""),
            names: (&items, &codes_t),
            all_tables: &[&items, &codes_t, &hot],
            hot: &hot,
            writes: &|| done.load(Ordering::Acquire),
        },
        &mut ferry_run,
    );
    stop.store(true, Ordering::Release);
    writer
        .join()
        .unwrap()
        .expect("the application saw no error");
    let log = ferry_run.log();
    let code = ferry_run
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn sqlite_source_validates_and_repairs_under_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = wal;
             CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER NOT NULL,
               price NUMERIC(10,2), ratio REAL, at DATETIME, doc JSON, flag BOOLEAN);
             CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT);
             CREATE TABLE hot (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, at DATETIME);
             INSERT INTO hot VALUES (1, 0, '2024-01-01 00:00:00'), (2, 0, '2024-01-01 00:00:00'), (3, 0, '2024-01-01 00:00:00');",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 1..=2000u32 {
            let name = if 2 * i == 404 {
                String::new()
            } else {
                format!("item {i}")
            };
            tx.execute(
                "INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%d %H:%M:%f', '2024-03-01 12:00:00.123', ?6), ?7, ?8)",
                rusqlite::params![
                    2 * i,
                    name,
                    i % 13,
                    format!("{i}.{:02}", (i * 7) % 100),
                    f64::from(i) / 7.0,
                    format!("+{i} seconds"),
                    format!("{{\"b\": {i}, \"a\": [1, \"x\"]}}"),
                    i % 2
                ],
            )
            .unwrap();
        }
        for i in 0..300u32 {
            tx.execute(
                "INSERT INTO codes VALUES (?1, ?2)",
                rusqlite::params![code(i), format!("label {i}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let source_url = format!("sqlite://{}", path.display());
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let control = format!("127.0.0.1:{}", free_port());
    let cmd = || {
        let mut c = ferry(&source_url, &target_url).unwrap();
        c.env("FERRY_CONTROL_LISTEN", &control)
            .env("FERRY_APPLY_BATCH_MS", "50")
            .env("FERRY_VALIDATE_CHUNK_ROWS", "400")
            .env("FERRY_VALIDATE_LEAF_ROWS", "50")
            .env("FERRY_VALIDATE_ROWS_PER_SECOND", "0")
            .env("FERRY_VALIDATE_WAIT_SECONDS", "600");
        c
    };
    let mut c = cmd();
    c.env("FERRY_LOG", "info").arg("run");
    let mut ferry_run = Background::spawn(c, &dir.path().join("run.log")).unwrap();
    wait_until(&mut ferry_run, "the stream", LONG, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    let writer = ferry_e2e::sqlite_app::Writer::start_with(&path, 1, |conn, i| {
        conn.execute(
            "UPDATE hot SET n = n + 1, at = datetime('now') WHERE id = ?1",
            [1 + i % 3],
        )?;
        Ok(())
    });
    writer.wait_for(20);
    check_planted(
        &Case {
            cmd: &cmd,
            target_url: &target_url,
            schema: "public",
            names: ("main.items", "main.codes"),
            all_tables: &["main.items", "main.codes", "main.hot"],
            hot: "main.hot",
            writes: &|| writer.last(),
        },
        &mut ferry_run,
    );
    writer.stop();
    let log = ferry_run.log();
    let code = ferry_run
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0), "{log}");
}
