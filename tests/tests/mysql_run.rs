//! MariaDB 10.11 → PostgreSQL through the `ferry` CLI.
//!
//! The main test: Sakila (with its
//! damaged `staff.picture` row) loaded from a consistent snapshot while an
//! application user writes (inserts, updates, deletes, triggers), streamed
//! from the binlog; `ferry run` killed with SIGKILL in the middle of the
//! load (resumed from a new snapshot, the stream skipping per table what it
//! holds) and again while streaming (resumed from the checkpoint), the
//! source server restarted under the stream (reconnect, new binlog file); then
//! compared row by row (every value normalised per type) and cut over with
//! the source fenced (the application's writes refused, AUTO_INCREMENT
//! carried to the identity sequences). The others: Chinook; every mapped
//! type through load and stream; schema changes mid-stream (ADD COLUMN and
//! a new table carried, DROP COLUMN stopping the run); a resume against
//! another server; a
//! purged checkpoint binlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_core::MySqlPosition;
use ferry_e2e::migration::{control_get, free_port, role_url, target_options};
use ferry_e2e::{Background, ferry, pgsync, run, target_text, wait_until};
use ferry_testkit::{MariaDbOptions, MariaDbServer, PgServer};
use mysql_async::prelude::Queryable;

const DB: &str = "sakila";
const WAIT: Duration = Duration::from_secs(180);
const APP_PASSWORD: &str = "app-secret-pw";

fn rt() -> tokio::runtime::Runtime {
    pgsync::runtime()
}

/// Sakila in `sakila`: the schema as shipped, the data with the script's
/// `SQL_MODE='TRADITIONAL'` dropped so the damaged picture loads (truncated
/// to a BLOB's 65535 bytes, as the datasets README describes).
fn load_sakila(server: &MariaDbServer) {
    let schema = ferry_testkit::dataset_file("sakila-mysql/sakila-schema.sql").unwrap();
    server.sql_file("", schema).expect("sakila schema");
    let data = ferry_testkit::dataset_file("sakila-mysql/sakila-data.sql").unwrap();
    let data = std::fs::read_to_string(data)
        .unwrap()
        .replace("SQL_MODE='TRADITIONAL'", "SQL_MODE=''");
    server.sql("", &data).expect("sakila data");
    let n = server.sql(DB, "SELECT COUNT(*) FROM staff").unwrap();
    assert_eq!(n.trim(), "2", "staff (the damaged row) loaded");
}

/// An application writing through its own user (which `read_only`
/// stops): every transaction inserts a payment (its trigger sets the
/// date), updates a customer, inserts, updates and deletes actors and
/// deletes an older payment; with `chunk_writes`, each transaction also
/// updates a payment anywhere in the key range and moves another to a new
/// key past the end (a key leaving one chunk for another).
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Writer {
    fn start(url: String) -> Writer {
        Writer::start_with(url, false)
    }

    fn start_with(url: String, chunk_writes: bool) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            rt().block_on(async move {
                let mut conn = mysql_async::Conn::from_url(&url).await?;
                let mut i: u64 = 0;
                while !s.load(Ordering::Acquire) {
                    i += 1;
                    let customer = 1 + (i * 7) % 599;
                    let mut tx = conn
                        .start_transaction(mysql_async::TxOpts::default())
                        .await?;
                    tx.exec_drop(
                        "INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date) VALUES (?, 1, NULL, ?, '2020-01-01')",
                        (customer, format!("{}.{:02}", i % 12, i % 100)),
                    )
                    .await?;
                    tx.exec_drop(
                        "UPDATE customer SET email = ?, active = ? WHERE customer_id = ?",
                        (format!("w{i}@example.org"), i % 2, customer),
                    )
                    .await?;
                    tx.exec_drop(
                        "INSERT INTO actor (first_name, last_name) VALUES (?, 'WRITER')",
                        (format!("A{i}"),),
                    )
                    .await?;
                    tx.query_drop(
                        "UPDATE actor SET first_name = CONCAT(first_name, 'x') WHERE last_name = 'WRITER' ORDER BY actor_id DESC LIMIT 2",
                    )
                    .await?;
                    if i.is_multiple_of(3) {
                        tx.query_drop(
                            "DELETE FROM actor WHERE last_name = 'WRITER' ORDER BY actor_id LIMIT 1",
                        )
                        .await?;
                        tx.exec_drop("DELETE FROM payment WHERE payment_id = ?", (i * 5,))
                            .await?;
                    }
                    if chunk_writes {
                        tx.exec_drop(
                            "UPDATE payment SET amount = amount + 1 WHERE payment_id = ?",
                            (1 + (i * 7919) % 16049,),
                        )
                        .await?;
                        tx.exec_drop(
                            "UPDATE IGNORE payment SET payment_id = payment_id + 30000 WHERE payment_id = ?",
                            (1 + (i * 104_729) % 16049,),
                        )
                        .await?;
                    }
                    tx.commit().await?;
                    d.fetch_add(1, Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                conn.disconnect().await?;
                anyhow::Ok(())
            })
        });
        Writer { stop, done, thread }
    }

    fn transactions(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread
            .join()
            .expect("writer thread")
            .expect("the application's writes succeed");
        self.done.load(Ordering::Acquire)
    }
}

/// Per column: how the source and the target print a value identically.
struct ColumnPair {
    source: String,
    target: String,
}

fn pair(name: &str, data_type: &str, column_type: &str) -> ColumnPair {
    let m = format!("`{name}`");
    let p = format!("\"{name}\"");
    let (source, target) = match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") && !column_type.contains("unsigned") => {
            (
                format!("CAST({m} AS CHAR)"),
                format!("CASE WHEN {p} THEN '1' ELSE '0' END"),
            )
        }
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "decimal" | "year" => {
            (format!("CAST({m} AS CHAR)"), format!("{p}::text"))
        }
        "date" => (
            format!("DATE_FORMAT({m}, '%Y-%m-%d')"),
            format!("to_char({p}, 'YYYY-MM-DD')"),
        ),
        "datetime" => (
            format!("DATE_FORMAT({m}, '%Y-%m-%d %H:%i:%s.%f')"),
            format!("to_char({p}, 'YYYY-MM-DD HH24:MI:SS.US')"),
        ),
        "timestamp" => (
            format!("DATE_FORMAT({m}, '%Y-%m-%d %H:%i:%s.%f')"),
            format!("to_char({p} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
        ),
        "set" => (m, format!("array_to_string({p}, ',')")),
        "blob" | "tinyblob" | "mediumblob" | "longblob" | "binary" | "varbinary" => {
            (format!("HEX({m})"), format!("upper(encode({p}, 'hex'))"))
        }
        "geometry" | "point" => (
            format!("HEX(ST_AsBinary({m}))"),
            format!("upper(encode({p}, 'hex'))"),
        ),
        _ => (format!("CAST({m} AS CHAR)"), format!("{p}::text")),
    };
    ColumnPair { source, target }
}

type Rows = Vec<Vec<Option<String>>>;

/// Every table of `db` (there are `tables`) equal in source and target,
/// value by value.
fn compare(source_url: &str, target_url: &str, db: &str, tables: usize) -> Vec<(String, usize)> {
    rt().block_on(async {
        let mut src = mysql_async::Conn::from_url(source_url).await.unwrap();
        src.query_drop("SET time_zone = '+00:00'").await.unwrap();
        let dst = pgsync::connect(target_url).await.unwrap();
        let names: Vec<String> = src
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1",
                (db,),
            )
            .await
            .unwrap();
        assert_eq!(names.len(), tables, "{names:?}");
        let mut counts = Vec::new();
        for t in names {
            let cols: Vec<(String, String, String)> = src
                .exec(
                    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                    (db, &t),
                )
                .await
                .unwrap();
            let key: Vec<String> = src
                .exec(
                    "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
                    (db, &t),
                )
                .await
                .unwrap();
            assert!(!key.is_empty(), "{t} has a key");
            let pairs: Vec<ColumnPair> = cols.iter().map(|(n, d, c)| pair(n, d, c)).collect();
            let src_sql = format!(
                "SELECT {} FROM `{db}`.`{t}` s ORDER BY {}",
                pairs.iter().map(|p| p.source.as_str()).collect::<Vec<_>>().join(", "),
                key.iter().map(|k| format!("s.`{k}`")).collect::<Vec<_>>().join(", ")
            );
            let dst_sql = format!(
                "SELECT {} FROM \"{db}\".\"{t}\" t ORDER BY {}",
                pairs.iter().map(|p| p.target.as_str()).collect::<Vec<_>>().join(", "),
                key.iter().map(|k| format!("t.\"{k}\"")).collect::<Vec<_>>().join(", ")
            );
            let source_rows: Vec<mysql_async::Row> = src.query(&src_sql).await.unwrap();
            let source_rows: Rows = source_rows
                .into_iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| match r.as_ref(i) {
                            Some(mysql_async::Value::NULL) | None => None,
                            Some(mysql_async::Value::Bytes(b)) => {
                                Some(String::from_utf8(b.clone()).unwrap())
                            }
                            Some(other) => Some(other.as_sql(true)),
                        })
                        .collect()
                })
                .collect();
            let target_rows: Rows = dst
                .query(&dst_sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{dst_sql}: {e}"))
                .iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, Option<String>>(i)).collect())
                .collect();
            if source_rows != target_rows {
                let first = source_rows
                    .iter()
                    .zip(&target_rows)
                    .position(|(a, b)| a != b);
                panic!(
                    "table {t} differs: source {} rows, target {}; first difference at row {first:?}: source {:?} target {:?}",
                    source_rows.len(),
                    target_rows.len(),
                    first.and_then(|i| source_rows.get(i)),
                    first.and_then(|i| target_rows.get(i)),
                );
            }
            counts.push((t, source_rows.len()));
        }
        counts
    })
}

fn source_head(url: &str) -> MySqlPosition {
    rt().block_on(async {
        let mut c = mysql_async::Conn::from_url(url).await.unwrap();
        let (file, pos): (String, u64) = c
            .query_first("SHOW MASTER STATUS")
            .await
            .unwrap()
            .map(|mut r: mysql_async::Row| (r.take(0).unwrap(), r.take(1).unwrap()))
            .unwrap();
        MySqlPosition::new(file, pos)
    })
}

fn checkpoint(url: &str) -> Option<MySqlPosition> {
    target_text(
        url,
        "SELECT position FROM ferry.checkpoint WHERE stream = 'main'",
    )?
    .parse()
    .ok()
}

fn target_i64(url: &str, sql: &str) -> Option<i64> {
    target_text(url, &format!("SELECT ({sql})::text"))?
        .parse()
        .ok()
}

/// Poll every 10 ms until the load committed its first chunk.
/// `cutover --fence` through `cut` (a `ferry` command with the run's
/// settings): it completes, and the running `ferry` exits 0 after it.
fn fenced_cutover(mut cut: std::process::Command, ferry: Background) {
    cut.args([
        "cutover",
        "--fence",
        "--max-lag",
        "30s",
        "--timeout",
        "120s",
    ]);
    let cut = run(&mut cut).unwrap();
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    assert_eq!(
        ferry.wait(Duration::from_secs(60)).unwrap(),
        Some(0),
        "ferry run exits after the cutover"
    );
}

fn wait_first_chunk(url: &str, ferry: &mut Background) {
    let rt = rt();
    let start = Instant::now();
    let mut dst = None;
    loop {
        if dst.is_none() {
            dst = rt.block_on(pgsync::connect(url)).ok();
        }
        if let Some(c) = &dst {
            match rt.block_on(c.query_one("SELECT count(*) FROM ferry.chunks", &[])) {
                Ok(r) if r.get::<_, i64>(0) >= 1 => return,
                Ok(_) => {}
                Err(_) => dst = None,
            }
        }
        if let Some(code) = ferry.exited().unwrap() {
            panic!(
                "ferry exited during the load with {code:?}:\n{}",
                ferry.log()
            );
        }
        assert!(start.elapsed() < WAIT, "no chunk loaded:\n{}", ferry.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sakila on a fresh MariaDB with an application user, an empty target
/// database, a log directory and a control address: what the Sakila runs
/// start from.
struct SakilaRig {
    source_url: String,
    app_url: String,
    _target: PgServer,
    target_url: String,
    logs: tempfile::TempDir,
    /// The control address of the latest `ferry run` (each takes a port
    /// free at its start: one a killed run held may be taken meanwhile).
    control: std::sync::Mutex<String>,
}

impl SakilaRig {
    fn start() -> (MariaDbServer, Self) {
        let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
        load_sakila(&source);
        source
            .sql(
                "",
                &format!(
                    "CREATE USER 'app'@'%' IDENTIFIED BY '{APP_PASSWORD}';
                     GRANT SELECT, INSERT, UPDATE, DELETE ON `{DB}`.* TO 'app'@'%';"
                ),
            )
            .expect("application user");
        let target = PgServer::start(target_options()).expect("target");
        let tdb = target.create_database("dst").expect("target database");
        let rig = SakilaRig {
            source_url: source.url(DB),
            app_url: format!(
                "mysql://app:{APP_PASSWORD}@127.0.0.1:{}/{DB}",
                source.port()
            ),
            target_url: target.url(&tdb),
            _target: target,
            logs: tempfile::tempdir().unwrap(),
            control: std::sync::Mutex::new(format!("127.0.0.1:{}", free_port())),
        };
        (source, rig)
    }

    /// `ferry run` after a kill: a control port free now.
    fn new_control(&self) {
        *self.control.lock().unwrap() = format!("127.0.0.1:{}", free_port());
    }

    /// `ferry` against the rig with what every Sakila run sets: no TLS,
    /// the control address, 100 ms apply batches.
    fn ferry(&self) -> std::process::Command {
        let mut c = ferry(&self.source_url, &self.target_url).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", &*self.control.lock().unwrap())
            .env("FERRY_APPLY_BATCH_MS", "100");
        c
    }
}

#[test]
fn sakila_from_mariadb_with_writes_crashes_in_load_and_stream_and_a_fenced_cutover() {
    let (mut source, rig) = SakilaRig::start();
    let (source_url, app_url, target_url) = (&rig.source_url, &rig.app_url, &rig.target_url);
    let logs = &rig.logs;
    let cmd = || {
        let mut c = rig.ferry();
        c // Key-range chunks for the larger tables.
            .env("FERRY_LOAD_CHUNK_ROWS", "500")
            // One chunk at a time, so that a kill lands inside the load.
            .env("FERRY_LOAD_PARALLELISM", "1");
        c
    };
    let start = |name: &str| {
        rig.new_control();
        let mut c = cmd();
        c.env("FERRY_LOG", "info").arg("run");
        Background::spawn(c, &logs.path().join(format!("{name}.log"))).unwrap()
    };

    // Writes run through the load, both crashes and the stream.
    let writer = Writer::start(app_url.clone());
    let mut first = start("first");
    // Crash in the middle of the load.
    wait_first_chunk(target_url, &mut first);
    first.kill9().unwrap();
    let planned = target_i64(target_url, "SELECT count(*) FROM ferry.load_plan").unwrap();
    let done = target_i64(target_url, "SELECT count(*) FROM ferry.chunks").unwrap();
    assert!(
        done >= 1 && done < planned,
        "killed during the load: {done} of {planned} chunks"
    );
    // The load resumes from a new snapshot; the stream skips, per table,
    // what that snapshot already holds.
    let mut second = start("second");
    wait_until(&mut second, "the stream", WAIT, || {
        checkpoint(target_url).is_some()
            && target_text(target_url, "SELECT phase FROM ferry.pipeline").as_deref()
                == Some("stream")
    });
    assert!(
        second
            .log()
            .contains("resuming the full load from a new snapshot"),
        "{}",
        second.log()
    );
    let at_crash = writer.transactions();
    let applied_before = checkpoint(target_url).unwrap();
    // Crash while streaming, once some writes were applied.
    wait_until(&mut second, "applying streamed writes", WAIT, || {
        checkpoint(target_url).is_some_and(|c| c > applied_before)
    });
    second.kill9().unwrap();
    let at_kill = checkpoint(target_url).unwrap();
    // The application goes on while ferry is down.
    let resumed_from = writer.transactions();
    while writer.transactions() < resumed_from + 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Resumed: the third run applies what was written while it was down
    // (a checkpoint of the killed run's does not count).
    let mut third = start("third");
    wait_until(&mut third, "resumed streaming", WAIT, || {
        checkpoint(target_url).is_some_and(|c| c > at_kill)
            && target_text(target_url, "SELECT phase FROM ferry.pipeline").as_deref()
                == Some("stream")
    });
    std::thread::sleep(Duration::from_secs(2));
    let written = writer.finish();
    assert!(written > at_crash + 50, "writes after the crash: {written}");
    // The source restarts under the running stream (a new binlog file
    // follows); ferry reconnects from its checkpoint.
    let before_restart = source_head(source_url);
    source.restart().expect("source restarts");
    source
        .sql(
            DB,
            "INSERT INTO actor (first_name, last_name) VALUES ('AFTER', 'RESTART');
             UPDATE customer SET email = 'restart@example.org' WHERE customer_id = 1;",
        )
        .expect("writes after the restart");
    let head = source_head(source_url);
    assert_ne!(head.file, before_restart.file, "a new binlog file");
    wait_until(&mut third, "catching up with the source", WAIT, || {
        checkpoint(target_url).is_some_and(|c| c >= head)
    });
    let counts = compare(source_url, target_url, DB, 16);
    let count = |t: &str| counts.iter().find(|(n, _)| n == t).unwrap().1;
    assert_eq!(count("rental"), 16044);
    assert!(count("payment") > 16049, "payments inserted: {counts:?}");
    assert!(count("actor") > 200, "actors inserted: {counts:?}");

    // Fenced cutover: read_only, the application's sessions ended, drain,
    // identity sync, counts.
    fenced_cutover(cmd(), third);
    // The source refuses the application's writes now.
    let refused = rt().block_on(async {
        let mut c = mysql_async::Conn::from_url(&app_url).await.unwrap();
        c.query_drop("UPDATE actor SET first_name = 'LATE' WHERE actor_id = 1")
            .await
    });
    match refused {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1290, "{e}"),
        other => panic!("write after the fence: {other:?}"),
    }
    compare(source_url, target_url, DB, 16);
    // AUTO_INCREMENT carried to the identity sequences.
    let max_payment: i64 = target_text(
        target_url,
        "SELECT max(payment_id)::text FROM sakila.payment",
    )
    .unwrap()
    .parse()
    .unwrap();
    let next: i64 = target_text(
        target_url,
        "SELECT nextval(pg_get_serial_sequence('sakila.payment', 'payment_id'))::text",
    )
    .unwrap()
    .parse()
    .unwrap();
    assert!(next > max_payment, "identity {next} after {max_payment}");
}

/// A schema change on a carried table mid-stream stops `ferry run` with an
/// operator error quoting the statement; the changes before it are applied
/// and a change on a table that is not carried is ignored.
/// `ferry run` on `db` of `source` into `target_url`, `scratch` excluded,
/// with its log in `log`.
fn spawn_shop_run(
    source_url: &str,
    target_url: &str,
    db: &str,
    log: &std::path::Path,
    control: u16,
) -> Background {
    let mut c = ferry(source_url, target_url).unwrap();
    c.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{control}"))
        .env("FERRY_APPLY_BATCH_MS", "100")
        .env("FERRY_TABLES_EXCLUDE", format!("{db}.scratch"))
        // One chunk per row: on the idle source the load's readers each
        // get a snapshot of their own at the same position.
        .env("FERRY_LOAD_CHUNK_ROWS", "1")
        .env("FERRY_LOG", "info")
        .arg("run");
    Background::spawn(c, log).unwrap()
}

/// Schema changes mid-stream: a column added to a carried table (rows
/// written before and after it, one updated after it), a new table the
/// filter selects (created on the target, its rows carried), statements on
/// an excluded table ignored; a restart after them resumes; then a DROP
/// COLUMN stops the run with the operator error naming the statement, the
/// table, the binlog position and the fix, with everything before it applied
/// and nothing after it.
#[test]
fn schema_changes_mid_stream_are_carried_and_an_unsupported_one_stops_the_run() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("shop").expect("database");
    source
        .sql(
            &db,
            "CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20), at DATETIME(3));
             CREATE TABLE scratch (id INT PRIMARY KEY);
             INSERT INTO orders (note, at) VALUES ('one', '2024-01-02 03:04:05.678'), ('two', NULL);",
        )
        .expect("source schema");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let control = free_port();
    let mut ferry_run = spawn_shop_run(
        &source_url,
        &target_url,
        &db,
        &logs.path().join("run.log"),
        control,
    );
    wait_until(&mut ferry_run, "the stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    assert!(
        ferry_run
            .log()
            .contains("snapshot reader on its own session"),
        "parallel readers on an idle source: {}",
        ferry_run.log()
    );
    source
        .sql(
            &db,
            "INSERT INTO orders (note) VALUES ('three');
             ALTER TABLE scratch ADD COLUMN x INT;
             ALTER TABLE orders ADD COLUMN extra INT;
             INSERT INTO orders (note, extra) VALUES ('four', 4);
             UPDATE orders SET extra = 1 WHERE id = 1;
             CREATE TABLE refunds (id INT PRIMARY KEY, order_id INT NOT NULL, amount DECIMAL(8,2), why VARCHAR(40));
             INSERT INTO refunds VALUES (1, 4, 9.50, 'broken'), (2, 1, NULL, 'late');",
        )
        .expect("source writes and DDL");
    let orders = |url: &str| {
        target_text(
            url,
            &format!(
                "SELECT string_agg(id || ':' || note || ':' || coalesce(extra::text, '-'), ',' ORDER BY id) FROM \"{db}\".orders"
            ),
        )
    };
    let refunds = |url: &str| {
        target_text(
            url,
            &format!(
                "SELECT string_agg(id || ':' || order_id || ':' || coalesce(amount::text, '-') || ':' || why, ',' ORDER BY id) FROM \"{db}\".refunds"
            ),
        )
    };
    wait_until(&mut ferry_run, "the new table's rows", WAIT, || {
        refunds(&target_url).is_some()
    });
    assert_eq!(
        orders(&target_url).as_deref(),
        Some("1:one:1,2:two:-,3:three:-,4:four:4")
    );
    assert_eq!(
        refunds(&target_url).as_deref(),
        Some("1:4:9.50:broken,2:1:-:late")
    );
    let types = target_text(
        &target_url,
        &format!(
            "SELECT string_agg(table_name || '.' || column_name || ' ' || data_type || coalesce('(' || numeric_precision || ',' || numeric_scale || ')', ''), ', ' ORDER BY table_name, ordinal_position) \
             FROM information_schema.columns WHERE table_schema = '{db}' AND column_name IN ('extra', 'amount', 'why')"
        ),
    );
    assert_eq!(
        types.as_deref(),
        Some(
            "orders.extra integer(32,0), refunds.amount numeric(8,2), refunds.why character varying"
        )
    );
    let log = ferry_run.log();
    assert!(
        log.contains("column added on the source; carried to the target")
            && log.contains("new table on the source; carried to the target"),
        "{log}"
    );
    assert_eq!(
        target_text(
            &target_url,
            &format!("SELECT to_regclass('\"{db}\".scratch')::text")
        ),
        None,
        "the excluded table is not created by its ALTER"
    );
    // `ferry status` lists the new table without a restart.
    let status = || {
        let mut c = ferry(&source_url, &target_url).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{control}"))
            .arg("status");
        run(&mut c).unwrap().all()
    };
    let listed = |out: &str| {
        out.lines()
            .any(|l| l.starts_with(&format!("{db}.refunds ")) && l.contains("streaming"))
    };
    let mut shown = status();
    let start = Instant::now();
    while !listed(&shown) {
        assert!(start.elapsed() < WAIT, "ferry status:\n{shown}");
        std::thread::sleep(Duration::from_millis(200));
        shown = status();
    }

    // A restart after the statements resumes with the new shapes.
    ferry_run.kill9().unwrap();
    source
        .sql(
            &db,
            "INSERT INTO orders (note, extra) VALUES ('five', 5);
             INSERT INTO refunds VALUES (3, 5, 1.25, 'again');
             ALTER TABLE refunds ADD COLUMN note TEXT;
             INSERT INTO refunds VALUES (4, 5, 0.5, 'more', 'added later');",
        )
        .expect("writes while ferry is down");
    let mut ferry_run = spawn_shop_run(
        &source_url,
        &target_url,
        &db,
        &logs.path().join("run2.log"),
        free_port(),
    );
    wait_until(
        &mut ferry_run,
        "the rows written while ferry was down",
        WAIT,
        || refunds(&target_url).is_some_and(|r| r.contains("4:5:0.50:more")),
    );
    // The restarted run read the catalog with the column already added:
    // the rows before the statement still have their own shape.
    assert_eq!(
        refunds(&target_url).as_deref(),
        Some("1:4:9.50:broken,2:1:-:late,3:5:1.25:again,4:5:0.50:more")
    );
    assert_eq!(
        target_text(
            &target_url,
            &format!(
                "SELECT string_agg(id || ':' || coalesce(note, '-'), ',' ORDER BY id) FROM \"{db}\".refunds"
            )
        )
        .as_deref(),
        Some("1:-,2:-,3:-,4:added later")
    );

    // A change ferry cannot apply exactly stops the run at its position.
    let before_drop = source_head(&source_url);
    source
        .sql(
            &db,
            "INSERT INTO orders (note, extra) VALUES ('six', 6);
             ALTER TABLE orders DROP COLUMN note;
             INSERT INTO orders (extra) VALUES (7);",
        )
        .expect("source DROP COLUMN");
    let code = ferry_run.wait(WAIT).unwrap();
    assert_ne!(code, Some(0), "ferry run stops");
    let log = std::fs::read_to_string(logs.path().join("run2.log")).unwrap();
    assert!(
        log.contains(&format!(
            "schema change on carried table {db}.orders at binlog {}:",
            before_drop.file
        )) && log.contains(
            "that ferry cannot apply exactly: `DROP COLUMN note` changes existing columns or keys"
        ) && log.contains("statement: ALTER TABLE orders DROP COLUMN note"),
        "{log}"
    );
    assert!(
        log.contains("a new full load is needed: `ferry cleanup --state`, drop the target tables, then `ferry run`"),
        "{log}"
    );
    // Everything before the statement is applied, nothing after it.
    assert_eq!(
        orders(&target_url).as_deref(),
        Some("1:one:1,2:two:-,3:three:-,4:four:4,5:five:5,6:six:6")
    );
    let at = target_text(
        &target_url,
        &format!(
            "SELECT to_char(at, 'YYYY-MM-DD HH24:MI:SS.MS') FROM \"{db}\".orders WHERE id = 1"
        ),
    );
    assert_eq!(at.as_deref(), Some("2024-01-02 03:04:05.678"));
    let stopped_at = checkpoint(&target_url).expect("checkpoint");
    assert!(
        stopped_at.file == before_drop.file && stopped_at.offset > before_drop.offset,
        "checkpoint {stopped_at} after the insert before the statement ({before_drop})"
    );
}

/// A migration resumed against another server (same database, same
/// binlog file names) stops before reading anything: its binlog positions
/// do not continue the checkpoint. The identity recorded at capture start
/// (`server_id`, GTID domain) is what tells it. Before that, `ferry status`
/// shows the binlog the checkpoint needs on the first server.
#[test]
fn a_resume_against_another_server_stops_with_a_new_load_needed() {
    let first = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let other = MariaDbServer::start(MariaDbOptions::default()).expect("second mariadb starts");
    let schema = "CREATE TABLE orders (id INT PRIMARY KEY, note VARCHAR(20));
                  CREATE TABLE scratch (id INT PRIMARY KEY);";
    let db = first.create_database("shop").expect("database");
    first
        .sql(
            &db,
            &format!("{schema} INSERT INTO orders VALUES (1, 'first');"),
        )
        .expect("first source");
    // The same database name on the other server.
    let scratch_db = other.create_database("other").expect("database");
    other
        .sql(
            &scratch_db,
            &format!(
                "CREATE DATABASE `{db}`; USE `{db}`; {schema} INSERT INTO orders VALUES (1, 'other'), (2, 'other');"
            ),
        )
        .expect("second source");
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let control = free_port();
    let mut ferry_run = spawn_shop_run(
        &first.url(&db),
        &target_url,
        &db,
        &logs.path().join("run.log"),
        control,
    );
    wait_until(&mut ferry_run, "the stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    let recorded = target_text(
        &target_url,
        "SELECT message FROM ferry.events WHERE kind = 'source_identity'",
    );
    assert_eq!(
        recorded,
        Some(format!(
            "MariaDB server_id={} gtid_domain_id=0",
            first.server_id()
        ))
    );
    // `ferry status` shows the binlog the checkpoint needs on the source.
    let status = || {
        let mut c = ferry(&first.url(&db), &target_url).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{control}"))
            .arg("status");
        run(&mut c).unwrap().all()
    };
    let head = source_head(&first.url(&db));
    let mut last = String::new();
    let start = Instant::now();
    while !last.contains("wal_status kept") {
        assert!(start.elapsed() < WAIT, "ferry status:\n{last}");
        std::thread::sleep(Duration::from_millis(200));
        last = status();
    }
    let shown = status();
    let line = shown
        .lines()
        .find(|l| l.contains("binlog from"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        line.contains(&format!("binlog from {}:", head.file)) && line.contains(" retains "),
        "{shown}"
    );
    ferry_run.kill9().unwrap();

    let resumed = spawn_shop_run(
        &other.url(&db),
        &target_url,
        &db,
        &logs.path().join("other.log"),
        free_port(),
    );
    let code = resumed.wait(WAIT).unwrap();
    let log = std::fs::read_to_string(logs.path().join("other.log")).unwrap();
    assert!(code.is_some_and(|c| c != 0), "ferry run stops:\n{log}");
    assert!(
        log.contains(&format!(
            "the source is not the server this migration started on (recorded at capture start: MariaDB server_id={} gtid_domain_id=0; now: MariaDB server_id={} gtid_domain_id=0)",
            first.server_id(),
            other.server_id()
        )) && log.contains("so a new full load is needed")
            && log.contains("point source.url at the original server"),
        "{log}"
    );
    assert_eq!(
        target_text(
            &target_url,
            &format!("SELECT string_agg(id || ':' || note, ',' ORDER BY id) FROM \"{db}\".orders")
        )
        .as_deref(),
        Some("1:first"),
        "nothing of the other server reached the target"
    );
}

/// A log without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `ferry run` of `db` with extra settings; its control port is free.
fn spawn_policy_run(
    source_url: &str,
    target_url: &str,
    log: &std::path::Path,
    settings: &[(&str, &str)],
) -> Background {
    let mut c = ferry(source_url, target_url).unwrap();
    c.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("FERRY_APPLY_BATCH_MS", "100")
        .env("FERRY_LOG", "info")
        .envs(settings.iter().copied())
        .arg("run");
    Background::spawn(c, log).unwrap()
}

/// [`spawn_policy_run`], returned once its pipeline streams.
fn streaming_policy_run(
    source_url: &str,
    target_url: &str,
    log: &std::path::Path,
    settings: &[(&str, &str)],
) -> Background {
    let mut run = spawn_policy_run(source_url, target_url, log, settings);
    wait_until(&mut run, "the stream", WAIT, || {
        target_text(target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    run
}

const POLICY_TABLE: &str = "SET SESSION sql_mode = '';
    CREATE TABLE flags (id INT PRIMARY KEY, flag TINYINT(1), d DATE, dt DATETIME);";

/// Rows `id0 + 1 ..= id0 + 4`: a plain row, zero dates, partial dates, NULLs.
fn policy_rows(id0: u32) -> String {
    format!(
        "SET SESSION sql_mode = '';
         INSERT INTO flags VALUES ({}, 0, '2024-01-02', '2024-01-02 03:04:05'),
           ({}, 1, '0000-00-00', '0000-00-00 00:00:00'),
           ({}, 2, '2024-00-10', '2024-01-00 10:00:00'),
           ({}, -1, NULL, NULL);",
        id0 + 1,
        id0 + 2,
        id0 + 3,
        id0 + 4
    )
}

/// `mysql.tinyint1 = "smallint"` and `mysql.zero_dates = "null"`, value by
/// value through the load and the change stream: `tinyint(1)` keeps 2 and
/// −1 in a smallint column, zero and partial dates become NULL and are
/// counted per column, with the data: read back from the target without a
/// running ferry, and counted once when a batch that crashed before its
/// commit is applied again.
#[test]
fn tinyint1_smallint_and_zero_dates_null_through_load_and_stream() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("policy").expect("database");
    source
        .sql(&db, &format!("{POLICY_TABLE} {}", policy_rows(0)))
        .expect("source rows");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let settings = [
        ("FERRY_MYSQL_TINYINT1", "smallint"),
        ("FERRY_MYSQL_ZERO_DATES", "null"),
    ];
    let mut plan = ferry(&source_url, &target_url).unwrap();
    plan.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .envs(settings)
        .arg("plan");
    let planned = run(&mut plan).unwrap().all();
    assert!(planned.contains("tinyint(1) → smallint"), "{planned}");
    let control = format!("127.0.0.1:{}", free_port());
    let mut run_settings = settings.to_vec();
    run_settings.push(("FERRY_CONTROL_LISTEN", &control));
    let mut ferry_run = streaming_policy_run(
        &source_url,
        &target_url,
        &logs.path().join("run.log"),
        &run_settings,
    );
    source.sql(&db, &policy_rows(10)).expect("streamed rows");
    let rows = || {
        target_text(
            &target_url,
            &format!(
                "SELECT string_agg(id || ':' || flag || ':' || coalesce(d::text, '-') || ':' || coalesce(dt::text, '-'), ',' ORDER BY id) FROM \"{db}\".flags"
            ),
        )
    };
    wait_until(&mut ferry_run, "the streamed rows", WAIT, || {
        rows().is_some_and(|r| r.contains("14:"))
    });
    let expect = |id0: u32| {
        format!(
            "{}:0:2024-01-02:2024-01-02 03:04:05,{}:1:-:-,{}:2:-:-,{}:-1:-:-",
            id0 + 1,
            id0 + 2,
            id0 + 3,
            id0 + 4
        )
    };
    assert_eq!(rows(), Some(format!("{},{}", expect(0), expect(10))));
    assert_eq!(
        target_text(
            &target_url,
            &format!(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '\"{db}\".flags'::regclass AND attname = 'flag'"
            )
        )
        .as_deref(),
        Some("smallint")
    );
    let log = plain(&ferry_run.log());
    for column in ["d", "dt"] {
        assert!(
            log.contains(&format!(
                "zero or partial dates loaded as NULL table={db}.flags column={column} rows=2"
            )),
            "load count of {column}: {log}"
        );
    }
    assert!(
        log.contains("zero or partial date written as NULL"),
        "{log}"
    );
    // `ferry status` counts them per column, in the load and the stream
    // (the monitor refreshes the figures once a second).
    let status = |json: bool| {
        let mut c = ferry(&source_url, &target_url).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .envs(run_settings.iter().copied())
            .arg("status");
        if json {
            c.arg("--json");
        }
        let out = run(&mut c).unwrap();
        assert_eq!(out.code, Some(0), "{}", out.all());
        out.stdout
    };
    // Each column's counts (load, stream) in the live status, then in
    // /metrics, per column.
    let counted = |load: u64, stream: u64| {
        let want = serde_json::json!([
            {"table": format!("{db}.flags"), "column": "d", "load": load, "stream": stream},
            {"table": format!("{db}.flags"), "column": "dt", "load": load, "stream": stream},
        ]);
        let started = Instant::now();
        loop {
            let s: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
            if s["live"] == true && s["zero_dates"] == want {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "zero dates in status, want {want}: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let metrics = control_get(&control, "/metrics");
        for column in ["d", "dt"] {
            for (kind, n) in [("loaded", load), ("streamed", stream)] {
                let line =
                    format!("ferry_zero_dates_{kind}_total{{column=\"{db}.flags.{column}\"}} {n}");
                assert!(metrics.contains(&line), "{line} in:\n{metrics}");
            }
        }
        want
    };
    let want = counted(2, 2);
    let text = status(false);
    for column in ["d", "dt"] {
        assert!(
            text.contains(&format!(
                "zero dates  {db}.flags.{column}: 2 loaded, 2 streamed as NULL"
            )),
            "{text}"
        );
    }

    // The counts are committed with the data: `ferry status` reads them
    // back from the target with no ferry running.
    ferry_run.kill9().unwrap();
    let offline: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(offline["live"], false, "{offline}");
    assert_eq!(offline["zero_dates"], want, "{offline}");
    // Two more of each while ferry is down; the next run dies after
    // applying them (and their counts) but before its commit, so nothing
    // of that batch is kept…
    source
        .sql(&db, &policy_rows(20))
        .expect("rows while ferry is down");
    let mut failing = run_settings.clone();
    failing.push(("FERRY_FAILPOINT", "after-apply-before-commit"));
    let crashed = spawn_policy_run(
        &source_url,
        &target_url,
        &logs.path().join("crash.log"),
        &failing,
    );
    let code = crashed.wait(WAIT).unwrap();
    let log = plain(&std::fs::read_to_string(logs.path().join("crash.log")).unwrap());
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("FERRY_FAILPOINT reached"), "{log}");
    assert!(
        rows().is_some_and(|r| !r.contains("24:")),
        "the crashed batch was not committed: {rows:?}",
        rows = rows()
    );
    let offline: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(offline["zero_dates"], want, "{offline}");
    // …and the run after it applies the batch again and counts it once.
    let mut ferry_run = streaming_policy_run(
        &source_url,
        &target_url,
        &logs.path().join("resume.log"),
        &run_settings,
    );
    wait_until(
        &mut ferry_run,
        "the rows written while ferry was down",
        WAIT,
        || rows().is_some_and(|r| r.contains("24:")),
    );
    assert_eq!(
        rows(),
        Some(format!("{},{},{}", expect(0), expect(10), expect(20)))
    );
    counted(2, 4);
    drop(ferry_run);
}

/// `mysql.zero_dates = "error"`: a zero date stops the load, and (in a
/// migration whose load had none) the change stream, naming the table,
/// the key and the column.
#[test]
fn zero_dates_error_stops_load_and_stream_naming_table_key_and_column() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let target = PgServer::start(target_options()).expect("target");
    let logs = tempfile::tempdir().unwrap();
    let error = [("FERRY_MYSQL_ZERO_DATES", "error")];

    let db = source.create_database("in_load").expect("database");
    source
        .sql(&db, &format!("{POLICY_TABLE} {}", policy_rows(0)))
        .expect("source rows");
    let tdb = target.create_database("dst").expect("target database");
    let ferry_run = spawn_policy_run(
        &source.url(&db),
        &target.url(&tdb),
        &logs.path().join("load.log"),
        &error,
    );
    let code = ferry_run.wait(WAIT).unwrap();
    let log = std::fs::read_to_string(logs.path().join("load.log")).unwrap();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "table {db}.flags, key (id)=(2), column d: zero or partial date (mysql.zero_dates = \"error\")"
        )),
        "{log}"
    );

    let db = source.create_database("in_stream").expect("database");
    source
        .sql(
            &db,
            &format!("{POLICY_TABLE} INSERT INTO flags VALUES (1, 1, '2024-01-02', NULL);"),
        )
        .expect("source rows");
    let tdb = target.create_database("dst2").expect("target database");
    let target_url = target.url(&tdb);
    let ferry_run = streaming_policy_run(
        &source.url(&db),
        &target_url,
        &logs.path().join("stream.log"),
        &error,
    );
    source.sql(&db, &policy_rows(10)).expect("streamed rows");
    let code = ferry_run.wait(WAIT).unwrap();
    let log = std::fs::read_to_string(logs.path().join("stream.log")).unwrap();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "table {db}.flags, key (id)=(12), column d: zero or partial date (mysql.zero_dates = \"error\")"
        )),
        "{log}"
    );
    // Nothing of the stopped transaction was applied.
    assert_eq!(
        target_text(
            &target_url,
            &format!("SELECT string_agg(id::text, ',' ORDER BY id) FROM \"{db}\".flags")
        )
        .as_deref(),
        Some("1")
    );
}

/// `mysql.enum`, value by value through the load and the change stream:
/// `"text"` (the default) keeps the labels in a text column with a CHECK of
/// the labels; `"type"` creates a PostgreSQL enum type per column.
#[test]
fn enum_as_checked_text_and_as_enum_type_through_load_and_stream() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let target = PgServer::start(target_options()).expect("target");
    let logs = tempfile::tempdir().unwrap();
    let table = "CREATE TABLE shirts (id INT PRIMARY KEY, size ENUM('small', 'medium', 'x''l') NOT NULL, fit ENUM('slim', 'loose'));";
    let rows = |id0: u32| {
        format!(
            "INSERT INTO shirts VALUES ({}, 'small', 'slim'), ({}, 'medium', NULL), ({}, 'x''l', 'loose');",
            id0 + 1,
            id0 + 2,
            id0 + 3
        )
    };
    for (policy, size_type, fit_type) in [
        ("text", "text".to_owned(), "text".to_owned()),
        ("type", String::new(), String::new()),
    ] {
        let db = source
            .create_database(&format!("enum_{policy}"))
            .expect("database");
        source
            .sql(&db, &format!("{table} {}", rows(0)))
            .expect("source rows");
        let tdb = target
            .create_database(&format!("dst_{policy}"))
            .expect("target database");
        let target_url = target.url(&tdb);
        let mut ferry_run = streaming_policy_run(
            &source.url(&db),
            &target_url,
            &logs.path().join(format!("{policy}.log")),
            &[("FERRY_MYSQL_ENUM", policy)],
        );
        source
            .sql(
                &db,
                &format!(
                    "{} UPDATE shirts SET size = 'x''l', fit = 'slim' WHERE id = 2;",
                    rows(10)
                ),
            )
            .expect("streamed rows");
        let values = || {
            target_text(
                &target_url,
                &format!(
                    "SELECT string_agg(id || ':' || size::text || ':' || coalesce(fit::text, '-'), ',' ORDER BY id) FROM \"{db}\".shirts"
                ),
            )
        };
        wait_until(&mut ferry_run, "the streamed rows", WAIT, || {
            values().is_some_and(|v| v.contains("13:") && v.contains("2:x'l:slim"))
        });
        assert_eq!(
            values().as_deref(),
            Some("1:small:slim,2:x'l:slim,3:x'l:loose,11:small:slim,12:medium:-,13:x'l:loose"),
            "mysql.enum = {policy}"
        );
        let column_type = |column: &str| {
            target_text(
                &target_url,
                &format!(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '\"{db}\".shirts'::regclass AND attname = '{column}'"
                ),
            )
            .unwrap()
        };
        let check = target_text(
            &target_url,
            &format!(
                "SELECT string_agg(pg_get_constraintdef(oid), ' | ' ORDER BY conname) FROM pg_constraint WHERE conrelid = '\"{db}\".shirts'::regclass AND contype = 'c'"
            ),
        );
        if policy == "text" {
            assert_eq!(
                (column_type("size"), column_type("fit")),
                (size_type, fit_type)
            );
            let check = check.expect("CHECK constraints");
            assert!(
                check.contains("'small'::text")
                    && check.contains("'x''l'::text")
                    && check.contains("'loose'::text"),
                "{check}"
            );
        } else {
            assert_eq!(column_type("size"), format!("{db}.shirts_size"));
            assert_eq!(column_type("fit"), format!("{db}.shirts_fit"));
            assert_eq!(check, None, "no CHECK on enum types");
            let labels = target_text(
                &target_url,
                &format!(
                    "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = '\"{db}\".shirts_size'::regtype"
                ),
            );
            assert_eq!(labels.as_deref(), Some("small,medium,x'l"));
        }
        ferry_run.kill9().unwrap();
    }
}

/// Every type of the mapping table (the binlog decoder's live test table):
/// one row through the load, the same values through the change stream,
/// and both must be the same value on the target, as expected per type.
#[test]
fn every_mapped_type_is_the_same_through_load_and_stream() {
    const DDL: &str = "CREATE TABLE types (
      id INT PRIMARY KEY,
      b1 TINYINT(1), ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED,
      mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
      d DECIMAL(10,2), dbig DECIMAL(65,30), f FLOAT, dd DOUBLE,
      bit1 BIT(1), bit8 BIT(8), bit64 BIT(64),
      c CHAR(5), vc VARCHAR(20), t TEXT, l1 VARCHAR(10) CHARACTER SET latin1,
      bn BINARY(4), vb VARBINARY(8), bl BLOB,
      dt DATE, dtm DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME(6), y YEAR,
      j JSON, e ENUM('a','b c','d''e'), st SET('x','y','z'),
      g POINT, ip6 INET6, ip4 INET4, u UUID
    )";
    let row = |id: i32| {
        format!(
            "({id}, 1, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
      -9223372036854775808, 18446744073709551615, -12345678.91,
      '12345678901234567890123456789012345.123456789012345678901234567890', 1.5, -2.25e300,
      b'1', b'10100101', b'1111111111111111111111111111111111111111111111111111111111111111',
      'ab', 'héllo wörld', 'text ☃ 😀', 'Motörhead', x'0102', x'00ff', x'deadbeef',
      '2024-02-29', '2024-02-29 13:14:15.123456', '2038-01-19 03:14:07.999', '-838:59:59.000000', 2155,
      '{{\"a\": [1, 2.5, \"x\"], \"b\": null}}', 'd''e', 'x,z', ST_GeomFromText('POINT(1 2)'),
      '2001:db8::1', '192.168.0.1', '123e4567-e89b-42d3-a456-426614174000')"
        )
    };
    let zero = |id: i32| format!("({id}, '0000-00-00', '2024-00-10 00:00:00', '838:59:59', 0)");
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("types").expect("database");
    source
        .sql(
            &db,
            &format!(
                "{DDL}; SET time_zone = '+00:00'; SET sql_mode = '';
                 INSERT INTO types VALUES {};
                 INSERT INTO types (id, dt, dtm, tm, y) VALUES {};",
                row(1),
                zero(3)
            ),
        )
        .expect("source schema and loaded rows");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let mut c = ferry(&source_url, &target_url).unwrap();
    c.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("FERRY_APPLY_BATCH_MS", "100")
        .env("FERRY_LOG", "info")
        .arg("run");
    let mut ferry_run = Background::spawn(c, &logs.path().join("run.log")).unwrap();
    wait_until(&mut ferry_run, "the stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    source
        .sql(
            &db,
            &format!(
                "SET time_zone = '+00:00'; SET sql_mode = '';
                 INSERT INTO types VALUES {};
                 INSERT INTO types (id, dt, dtm, tm, y) VALUES {};",
                row(2),
                zero(4)
            ),
        )
        .expect("streamed rows");
    let head = source_head(&source_url);
    wait_until(&mut ferry_run, "the streamed rows", WAIT, || {
        checkpoint(&target_url).is_some_and(|c| c >= head)
    });
    let same = |a: i32, b: i32| {
        target_text(
            &target_url,
            &format!(
                "SELECT ((SELECT to_jsonb(r) - 'id' FROM \"{db}\".types r WHERE id = {a}) =
                         (SELECT to_jsonb(r) - 'id' FROM \"{db}\".types r WHERE id = {b}))::text"
            ),
        )
    };
    let rows = |id: i32| {
        target_text(
            &target_url,
            &format!("SELECT (to_jsonb(r) - 'id')::text FROM \"{db}\".types r WHERE id = {id}"),
        )
    };
    assert_eq!(
        same(1, 2).as_deref(),
        Some("true"),
        "load and stream agree: loaded {:?}, streamed {:?}",
        rows(1),
        rows(2)
    );
    assert_eq!(same(3, 4).as_deref(), Some("true"), "zero dates agree");
    let value = |col: &str, id: i32| {
        target_text(
            &target_url,
            &format!("SELECT {col}::text FROM \"{db}\".types WHERE id = {id}"),
        )
    };
    let expected: &[(&str, &str)] = &[
        ("b1", "true"),
        ("tu", "255"),
        ("mi", "-8388608"),
        ("iu", "4294967295"),
        ("bu", "18446744073709551615"),
        ("d", "-12345678.91"),
        (
            "dbig",
            "12345678901234567890123456789012345.123456789012345678901234567890",
        ),
        ("f", "1.5"),
        ("dd", "-2.25e+300"),
        ("bit1", "true"),
        ("bit8", "10100101"),
        ("c", "ab"),
        ("vc", "héllo wörld"),
        ("t", "text ☃ 😀"),
        ("l1", "Motörhead"),
        ("bn", "\\x01020000"),
        ("vb", "\\x00ff"),
        ("dt", "2024-02-29"),
        ("dtm", "2024-02-29 13:14:15.123456"),
        ("timezone('UTC', ts)", "2038-01-19 03:14:07.999"),
        ("tm", "-838:59:59"),
        ("y", "2155"),
        ("j", r#"{"a": [1, 2.5, "x"], "b": null}"#),
        ("e", "d'e"),
        ("st", "{x,z}"),
        (
            "encode(g, 'hex')",
            "0101000000000000000000f03f0000000000000040",
        ),
        ("host(ip6)", "2001:db8::1"),
        ("host(ip4)", "192.168.0.1"),
        ("u", "123e4567-e89b-42d3-a456-426614174000"),
    ];
    for (col, want) in expected {
        for id in [1, 2] {
            assert_eq!(value(col, id).as_deref(), Some(*want), "{col} of row {id}");
        }
    }
    for col in ["dt", "dtm"] {
        assert_eq!(value(col, 3), None, "zero date {col} is NULL");
    }
    assert_eq!(value("tm", 4).as_deref(), Some("838:59:59"));
}

/// A checkpoint whose binlog file the source purged while ferry was down
/// stops `ferry run` with "a new full load is needed", never a gap.
#[test]
fn a_purged_binlog_stops_the_run_with_a_new_load_needed() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("shop").expect("database");
    source
        .sql(
            &db,
            "CREATE TABLE orders (id INT PRIMARY KEY, note TEXT); INSERT INTO orders VALUES (1, 'one');",
        )
        .expect("source schema");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let mut c = ferry(&source_url, &target_url).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("FERRY_APPLY_BATCH_MS", "100")
            .env("FERRY_LOG", "info")
            .arg("run");
        Background::spawn(c, &logs.path().join(format!("{name}.log"))).unwrap()
    };
    let mut first = start("first");
    wait_until(&mut first, "the stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    first.kill9().unwrap();
    let at = checkpoint(&target_url).expect("checkpoint");
    // Changes the target never saw, then their binlog purged.
    source
        .sql(
            &db,
            "INSERT INTO orders VALUES (2, 'lost'); FLUSH BINARY LOGS; INSERT INTO orders VALUES (3, 'kept');",
        )
        .unwrap();
    let newest = source_head(&source_url).file;
    // The killed ferry's dump thread keeps its file from being purged
    // until the server notices: end it first.
    let dumps = source
        .sql(
            "",
            "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'",
        )
        .unwrap();
    for id in dumps.split_whitespace() {
        let _ = source.sql("", &format!("KILL CONNECTION {id}"));
    }
    // A file still open by a dump thread that is ending is kept: purge
    // again until it is gone.
    let started = Instant::now();
    loop {
        source
            .sql(&db, &format!("PURGE BINARY LOGS TO '{newest}'"))
            .unwrap();
        let kept = source.sql("", "SHOW BINARY LOGS").unwrap();
        if kept.starts_with(&newest) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the checkpoint's binlog is never purged: {kept}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = start("second");
    let code = second.wait(Duration::from_secs(60)).unwrap();
    assert_ne!(code, Some(0));
    let log = std::fs::read_to_string(logs.path().join("second.log")).unwrap();
    assert!(
        log.contains(&format!(
            "binlog file {} holding the checkpoint {at} is no longer on the source (oldest kept: {newest}); changes after it are lost, so a new full load is needed",
            at.file
        )) && log.contains("ferry cleanup"),
        "{log}"
    );
    assert_eq!(
        target_text(
            &target_url,
            &format!("SELECT string_agg(note, ',' ORDER BY id) FROM \"{db}\".orders")
        )
        .as_deref(),
        Some("one"),
        "nothing after the gap is applied"
    );
    // The fix the error names works: cleanup, empty the target, load anew.
    let mut c = ferry(&source_url, &target_url).unwrap();
    c.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .args(["cleanup", "--state"]);
    let cleanup = run(&mut c).unwrap();
    assert_eq!(cleanup.code, Some(0), "{}", cleanup.all());
    assert!(
        cleanup.stdout.contains("source: nothing to drop"),
        "{}",
        cleanup.all()
    );
    target
        .psql(&tdb, &format!("DROP SCHEMA \"{db}\" CASCADE"))
        .unwrap();
    let mut third = start("third");
    wait_until(&mut third, "the new load's stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    assert_eq!(
        target_text(
            &target_url,
            &format!("SELECT string_agg(note, ',' ORDER BY id) FROM \"{db}\".orders")
        )
        .as_deref(),
        Some("one,lost,kept"),
        "the new load has everything"
    );
}

/// Chinook (mixed-case names, NUMERIC, DATETIME, NVARCHAR) migrated with
/// changes during the stream, compared exactly, and cut over.
#[test]
fn chinook_from_mariadb_compared_and_cut_over() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("chinook").expect("database");
    source.load_chinook(&db).expect("chinook loads");
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
            .env("FERRY_APPLY_BATCH_MS", "100")
            .env("FERRY_LOAD_CHUNK_ROWS", "1000");
        c
    };
    // The plan says which snapshot the load uses.
    let plan = run(cmd().arg("plan")).unwrap();
    assert_eq!(plan.code, Some(0), "{}", plan.all());
    assert!(
        plan.stdout.contains("snapshot method")
            && plan
                .stdout
                .contains("START TRANSACTION WITH CONSISTENT SNAPSHOT"),
        "{}",
        plan.all()
    );
    let mut c = cmd();
    c.env("FERRY_LOG", "info").arg("run");
    let mut ferry_run = Background::spawn(c, &logs.path().join("run.log")).unwrap();
    wait_until(&mut ferry_run, "the stream", WAIT, || {
        target_text(&target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    source
        .sql(
            &db,
            "INSERT INTO Artist (ArtistId, Name) VALUES (1000, 'Ünïcödé Band');
             UPDATE Track SET UnitPrice = UnitPrice + 0.01, Name = CONCAT(Name, ' (remaster)') WHERE TrackId % 10 = 0;
             DELETE FROM PlaylistTrack WHERE PlaylistId = 1 AND TrackId % 3 = 0;
             UPDATE Invoice SET InvoiceDate = '2025-01-01 12:34:56' WHERE InvoiceId = 1;",
        )
        .expect("writes during the stream");
    let head = source_head(&source_url);
    wait_until(&mut ferry_run, "catching up", WAIT, || {
        checkpoint(&target_url).is_some_and(|c| c >= head)
    });
    let counts = compare(&source_url, &target_url, &db, 11);
    assert!(
        counts.iter().any(|(t, n)| t == "Track" && *n == 3503),
        "{counts:?}"
    );
    fenced_cutover(cmd(), ferry_run);
    compare(&source_url, &target_url, &db, 11);
}

/// Foreign-key cascades on the source: InnoDB performs them without
/// writing the rows they change to the binlog, so `ferry plan` warns about
/// every such key of a carried table (the target would miss those rows).
#[test]
fn cascading_foreign_keys_are_reported_by_plan() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("fk").expect("database");
    source
        .sql(
            &db,
            "CREATE TABLE parent (id INT PRIMARY KEY, name TEXT) ENGINE=InnoDB;
             CREATE TABLE child (id INT PRIMARY KEY, parent_id INT,
               CONSTRAINT child_parent FOREIGN KEY (parent_id) REFERENCES parent (id)
               ON DELETE CASCADE ON UPDATE CASCADE) ENGINE=InnoDB;
             CREATE TABLE orphanable (id INT PRIMARY KEY, parent_id INT,
               CONSTRAINT orphan_parent FOREIGN KEY (parent_id) REFERENCES parent (id)
               ON DELETE SET NULL) ENGINE=InnoDB;
             CREATE TABLE strict_child (id INT PRIMARY KEY, parent_id INT,
               CONSTRAINT strict_parent FOREIGN KEY (parent_id) REFERENCES parent (id)) ENGINE=InnoDB;",
        )
        .expect("source schema");
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let mut c = ferry(&source.url(&db), &target.url(&tdb)).unwrap();
    c.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .arg("plan");
    let plan = run(&mut c).unwrap();
    assert_eq!(plan.code, Some(0), "warnings only: {}", plan.all());
    for (key, rules) in [
        ("child_parent", "ON DELETE CASCADE, ON UPDATE CASCADE"),
        ("orphan_parent", "ON DELETE SET NULL"),
    ] {
        assert!(
            plan.stdout.contains(&format!(
                "foreign key {key} of {db}.{} has {rules}: the rows InnoDB changes by it are not in the binlog",
                if key == "child_parent" { "child" } else { "orphanable" }
            )),
            "{}",
            plan.all()
        );
    }
    assert!(!plan.stdout.contains("strict_parent"), "{}", plan.all());
}

/// `mysql.snapshot = "watermark"` on MariaDB: Sakila loaded in chunks
/// read in transactions of their own while the application inserts,
/// updates and deletes rows inside the chunks being read and moves keys
/// from one chunk to another; `ferry run` killed with SIGKILL in the
/// middle of the load resumes with its missing chunks only (the finished
/// ones kept, read by three workers), the stream replays from the low
/// watermark; then an exact comparison and a fenced cutover.
#[test]
fn sakila_watermark_load_with_writes_in_chunks_a_kill_during_the_load_and_a_cutover() {
    let (_source, rig) = SakilaRig::start();
    let (source_url, app_url, target_url) = (&rig.source_url, &rig.app_url, &rig.target_url);
    let logs = &rig.logs;
    let cmd = |workers: &str| {
        let mut c = rig.ferry();
        c.env("FERRY_MYSQL_SNAPSHOT", "watermark")
            .env("FERRY_LOAD_CHUNK_ROWS", "500")
            .env("FERRY_LOAD_PARALLELISM", workers);
        c
    };
    let start = |name: &str, workers: &str| {
        rig.new_control();
        let mut c = cmd(workers);
        c.env("FERRY_LOG", "info").arg("run");
        Background::spawn(c, &logs.path().join(format!("{name}.log"))).unwrap()
    };

    let plan = run(cmd("1").arg("plan")).unwrap();
    assert!(
        plan.stdout
            .contains("watermark (mysql.snapshot = \"watermark\"): a low watermark"),
        "{}",
        plan.all()
    );

    let writer = Writer::start_with(app_url.clone(), true);
    while writer.transactions() < 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // One worker, so that the kill lands inside the load.
    let mut first = start("first", "1");
    wait_first_chunk(target_url, &mut first);
    let first_log = first.log();
    first.kill9().unwrap();
    assert!(
        first_log.contains("watermark load: chunks read in transactions of their own"),
        "{first_log}"
    );
    let marks = "SELECT string_agg(source_table || ':' || chunk || '@' || done_at, ',' ORDER BY source_table, chunk) FROM ferry.chunks";
    let kept = target_text(target_url, marks).unwrap();
    let planned = target_i64(target_url, "SELECT count(*) FROM ferry.load_plan").unwrap();
    let done = target_i64(target_url, "SELECT count(*) FROM ferry.chunks").unwrap();
    assert!(
        done >= 1 && done < planned,
        "killed during the load: {done} of {planned} chunks"
    );
    // The application goes on while ferry is down.
    let at_kill = writer.transactions();
    let down = Instant::now();
    while writer.transactions() < at_kill + 30 {
        assert!(down.elapsed() < WAIT, "the application stopped writing");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut second = start("second", "3");
    wait_until(&mut second, "the stream", WAIT, || {
        target_text(target_url, "SELECT phase FROM ferry.pipeline").as_deref() == Some("stream")
    });
    assert!(
        second
            .log()
            .contains("resuming the watermark load with its missing chunks"),
        "{}",
        second.log()
    );
    // The chunks finished before the kill were not read again.
    let after = target_text(target_url, marks).unwrap();
    for mark in kept.split(',') {
        assert!(after.split(',').any(|m| m == mark), "{mark} kept: {after}");
    }
    let written = writer.finish();
    let head = source_head(source_url);
    wait_until(&mut second, "catching up with the source", WAIT, || {
        checkpoint(target_url).is_some_and(|c| c >= head)
    });
    let counts = compare(source_url, target_url, DB, 16);
    let count = |t: &str| counts.iter().find(|(n, _)| n == t).unwrap().1;
    assert_eq!(count("rental"), 16044);
    assert!(written > at_kill, "{counts:?}");
    // Keys moved from one chunk to another arrived under their new key.
    let moved = target_i64(
        target_url,
        "SELECT count(*) FROM sakila.payment WHERE payment_id > 30000",
    )
    .unwrap();
    assert!(moved > 0, "moved payments on the target: {counts:?}");

    fenced_cutover(cmd("1"), second);
    compare(source_url, target_url, DB, 16);
}

/// The watermark load replays the binlog over rows read later, which would
/// double the changed rows of a table without a key: `ferry plan` fails
/// naming the table and `ferry run` refuses before creating anything.
#[test]
fn watermark_load_refuses_a_table_without_a_key() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("wm").expect("database");
    source
        .sql(
            &db,
            "CREATE TABLE keyed (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB;
             CREATE TABLE events (at DATETIME, what TEXT) ENGINE=InnoDB;",
        )
        .expect("source schema");
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let cmd = || {
        let mut c = ferry(&source.url(&db), &target_url).unwrap();
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("FERRY_MYSQL_SNAPSHOT", "watermark");
        c
    };
    let plan = run(cmd().arg("plan")).unwrap();
    assert_ne!(plan.code, Some(0), "{}", plan.all());
    let why = format!(
        "{db}.events has no primary key: the watermark load replays the binlog over rows read later"
    );
    assert!(plan.stdout.contains(&why), "{}", plan.all());
    let refused = run(cmd().arg("run")).unwrap();
    assert!(
        refused.all().contains("ferry run refuses to start") && refused.all().contains(&why),
        "{}",
        refused.all()
    );
    assert_eq!(
        target_text(
            &target_url,
            &format!(
                "SELECT count(*)::text FROM information_schema.tables WHERE table_schema = '{db}'"
            )
        )
        .as_deref(),
        Some("0"),
        "nothing created on the target"
    );
}

/// Rows of the unique-value table: `id`, `code = id * 10` and `tag =
/// 't<id>'` both unique, a padding column.
const UNIQUE_ROWS: u32 = 8000;

/// `mysql.snapshot = "watermark"` with unique secondary indexes while the
/// application moves unique values between rows whose chunks are read on
/// either side of the move (row 1's chunk already loaded, the last
/// chunk's rows not read yet: one worker, chunks in key order): the
/// loaded rows hold the same `code` and the same `tag` twice, which a
/// unique index built right after the load refuses. The indexes (and the
/// foreign key that references the unique column) are built once
/// catch-up has passed the stream's start. The first run aborts at its
/// first apply commit (`FERRY_FAILPOINT`), between the load's end and the
/// index builds; the next run ends with every index, the foreign key,
/// streamed moves applied under the indexes, and an exact comparison.
#[test]
fn watermark_load_builds_unique_indexes_after_values_moved_during_the_load() {
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("uq").expect("database");
    let rows: Vec<String> = (1..=UNIQUE_ROWS)
        .map(|i| format!("({i}, {}, 't{i}', REPEAT('x', 300))", i * 10))
        .collect();
    source
        .sql(
            &db,
            &format!(
                "CREATE TABLE u (id INT PRIMARY KEY, code INT NOT NULL, tag VARCHAR(20),
                   pad VARCHAR(300), UNIQUE KEY by_code (code), UNIQUE KEY by_tag (tag)) ENGINE=InnoDB;
                 CREATE TABLE c (id INT PRIMARY KEY, u_code INT,
                   CONSTRAINT c_code FOREIGN KEY (u_code) REFERENCES u (code)) ENGINE=InnoDB;
                 INSERT INTO u VALUES {};
                 INSERT INTO c VALUES (1, 20), (2, 50);
                 ANALYZE TABLE u;",
                rows.join(",")
            ),
        )
        .expect("source rows");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let settings = [
        ("FERRY_MYSQL_SNAPSHOT", "watermark"),
        ("FERRY_LOAD_CHUNK_ROWS", "100"),
        ("FERRY_LOAD_PARALLELISM", "1"),
    ];
    let rt = rt();
    let mut app = rt
        .block_on(mysql_async::Conn::from_url(source_url.as_str()))
        .unwrap();

    let mut failpoint = settings.to_vec();
    failpoint.push(("FERRY_FAILPOINT", "after-apply-before-commit"));
    let mut first = spawn_policy_run(
        &source_url,
        &target_url,
        &logs.path().join("first.log"),
        &failpoint,
    );
    // Row 1's chunk (the first) is loaded; the last chunk is not read yet.
    let first_chunk =
        format!("SELECT count(*) FROM ferry.chunks WHERE source_table = '{db}.u' AND chunk = 0");
    let start = Instant::now();
    while target_i64(&target_url, &first_chunk) != Some(1) {
        if let Some(code) = first.exited().unwrap() {
            panic!(
                "ferry exited during the load with {code:?}:\n{}",
                first.log()
            );
        }
        assert!(start.elapsed() < WAIT, "no chunk loaded:\n{}", first.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    // Row 1 gives its code to the last row; rows 2 and the one before the
    // last swap their tags.
    let last = UNIQUE_ROWS;
    rt.block_on(app.query_drop(format!(
        "START TRANSACTION;
         UPDATE u SET code = 1 WHERE id = 1;
         UPDATE u SET code = 10 WHERE id = {last};
         UPDATE u SET tag = NULL WHERE id = 2;
         UPDATE u SET tag = 't2' WHERE id = {};
         UPDATE u SET tag = 't{}' WHERE id = 2;
         COMMIT;",
        last - 1,
        last - 1
    )))
    .unwrap();
    let planned = target_i64(
        &target_url,
        "SELECT count(*) FROM ferry.load_plan WHERE table_name = 'u'",
    )
    .unwrap();
    let done = target_i64(
        &target_url,
        &format!("SELECT count(*) FROM ferry.chunks WHERE source_table = '{db}.u'"),
    )
    .unwrap();
    assert!(
        planned >= 40 && done + 1 < planned,
        "the moves landed inside the load, before the last chunk was read: {done} of {planned} chunks"
    );
    let code = first.wait(WAIT).unwrap();
    let log = plain(&std::fs::read_to_string(logs.path().join("first.log")).unwrap());
    assert_ne!(code, Some(0), "{log}");
    assert!(!log.contains("could not create unique index"), "{log}");
    assert!(log.contains("FERRY_FAILPOINT reached"), "{log}");
    // Stopped between the load and the index builds: the loaded rows hold
    // the moved values twice, and no unique index is there yet.
    let target_value = |sql: &str| target_text(&target_url, sql);
    assert_eq!(
        target_value("SELECT phase FROM ferry.pipeline").as_deref(),
        Some("catchup")
    );
    assert_eq!(
        target_value(&format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM \"{db}\".u WHERE code = 10"
        ))
        .as_deref(),
        Some(format!("1,{last}").as_str()),
        "the loaded rows hold code 10 twice"
    );
    assert_eq!(
        target_value(&format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM \"{db}\".u WHERE tag = 't2'"
        ))
        .as_deref(),
        Some(format!("2,{}", last - 1).as_str()),
        "the loaded rows hold tag t2 twice"
    );
    let indexes = format!(
        "SELECT coalesce(string_agg(c.relname || ':' || i.indisunique, ',' ORDER BY c.relname), '') FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = '\"{db}\".u'::regclass AND NOT i.indisprimary"
    );
    assert_eq!(target_value(&indexes).as_deref(), Some(""));
    assert_eq!(
        target_value(
            "SELECT string_agg(kind || ' ' || name, ',' ORDER BY seq) FROM ferry.post_data WHERE done_at IS NULL"
        )
        .as_deref(),
        Some(
            "UNIQUE INDEX AFTER CATCH-UP u_by_code,UNIQUE INDEX AFTER CATCH-UP u_by_tag,FK CONSTRAINT AFTER CATCH-UP c_code"
        )
    );

    let mut second = streaming_policy_run(
        &source_url,
        &target_url,
        &logs.path().join("second.log"),
        &settings,
    );
    assert_eq!(
        target_value(&indexes).as_deref(),
        Some("u_by_code:true,u_by_tag:true")
    );
    assert_eq!(
        target_value(&format!(
            "SELECT string_agg(conname, ',') FROM pg_constraint WHERE conrelid = '\"{db}\".c'::regclass AND contype = 'f'"
        ))
        .as_deref(),
        Some("c_code")
    );
    // Moves under the indexes: applied in source order.
    rt.block_on(app.query_drop(format!(
        "START TRANSACTION;
         UPDATE u SET code = 2 WHERE id = {last};
         UPDATE u SET code = 10 WHERE id = 3;
         UPDATE u SET code = 30 WHERE id = 4;
         COMMIT;
         START TRANSACTION;
         UPDATE u SET tag = NULL WHERE id = 5;
         UPDATE u SET tag = 't5' WHERE id = 6;
         UPDATE u SET tag = 't6' WHERE id = 5;
         COMMIT;"
    )))
    .unwrap();
    let head = source_head(&source_url);
    wait_until(&mut second, "catching up with the source", WAIT, || {
        checkpoint(&target_url).is_some_and(|c| c >= head)
    });
    let log = plain(&second.log());
    assert!(
        log.contains("built the unique indexes and keys that waited for catch-up"),
        "{log}"
    );
    assert!(!log.contains("duplicate key"), "{log}");
    let counts = compare(&source_url, &target_url, &db, 2);
    assert_eq!(
        counts,
        vec![("c".to_owned(), 2), ("u".to_owned(), UNIQUE_ROWS as usize)]
    );
    drop(second);
    rt.block_on(app.disconnect()).unwrap();
}

/// The target role is not a superuser and may not set
/// `session_replication_role` (RDS without `rds_superuser`: no-replica-role
/// mode), and the load is a watermark load: the foreign key to the primary
/// key (built with the post-data) and the one to a unique non-key column
/// (built only after catch-up) are both dropped while ferry applies, rows
/// that need them keep arriving, and the fenced cutover puts both back,
/// validated, so the target enforces them again.
#[test]
fn watermark_load_with_a_target_role_that_cannot_set_session_replication_role() {
    const ROLE: &str = "ferry_target";
    const ROLE_PW: &str = "target-secret-pw";
    let source = MariaDbServer::start(MariaDbOptions::default()).expect("mariadb starts");
    let db = source.create_database("fk").expect("database");
    let parents: Vec<String> = (1..=300).map(|i| format!("({i}, {})", i * 10)).collect();
    let children: Vec<String> = (1..=300)
        .map(|i| format!("({i}, {i}, {})", i * 10))
        .collect();
    source
        .sql(
            &db,
            &format!(
                "CREATE TABLE p (id INT PRIMARY KEY, code INT NOT NULL, UNIQUE KEY by_code (code)) ENGINE=InnoDB;
                 CREATE TABLE c (id INT PRIMARY KEY, p_id INT NOT NULL, p_code INT,
                   CONSTRAINT c_p FOREIGN KEY (p_id) REFERENCES p (id),
                   CONSTRAINT c_code FOREIGN KEY (p_code) REFERENCES p (code)) ENGINE=InnoDB;
                 INSERT INTO p VALUES {};
                 INSERT INTO c VALUES {};
                 ANALYZE TABLE p, c;",
                parents.join(","),
                children.join(",")
            ),
        )
        .expect("source rows");
    let source_url = source.url(&db);
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    target
        .create_role(ROLE, ROLE_PW, "LOGIN NOSUPERUSER")
        .unwrap();
    target
        .psql("postgres", &format!("ALTER DATABASE {tdb} OWNER TO {ROLE}"))
        .unwrap();
    let target_url = role_url(&target, ROLE, ROLE_PW, &tdb);
    let logs = tempfile::tempdir().unwrap();
    let control = format!("127.0.0.1:{}", free_port());
    let settings = [
        ("FERRY_MYSQL_SNAPSHOT", "watermark"),
        ("FERRY_LOAD_CHUNK_ROWS", "100"),
        ("FERRY_CONTROL_LISTEN", control.as_str()),
    ];
    let mut ferry_run = streaming_policy_run(
        &source_url,
        &target_url,
        &logs.path().join("run.log"),
        &settings,
    );
    let log = plain(&ferry_run.log());
    assert!(log.contains("no-replica-role mode"), "{log}");
    assert!(
        log.contains("built the unique indexes and keys that waited for catch-up"),
        "{log}"
    );
    assert!(
        log.contains("foreign key dropped on the target until cutover"),
        "{log}"
    );
    let foreign_keys = format!(
        "SELECT coalesce(string_agg(conname || ':' || convalidated, ',' ORDER BY conname), '') FROM pg_constraint WHERE conrelid = '\"{db}\".c'::regclass AND contype = 'f'"
    );
    assert_eq!(
        target_text(&target_url, &foreign_keys).as_deref(),
        Some(""),
        "no foreign key while ferry applies"
    );
    assert_eq!(
        target_text(
            &target_url,
            &format!("SELECT count(*)::text FROM pg_indexes WHERE schemaname = '{db}' AND tablename = 'p' AND indexdef LIKE 'CREATE UNIQUE INDEX%(code)'")
        )
        .as_deref(),
        Some("1"),
        "the unique index the second key needs was built after catch-up"
    );

    // Rows that need the dropped keys keep arriving, in source order.
    let rt = rt();
    let mut app = rt
        .block_on(mysql_async::Conn::from_url(source_url.as_str()))
        .unwrap();
    rt.block_on(app.query_drop(
        "START TRANSACTION;
         INSERT INTO p VALUES (301, 3010);
         INSERT INTO c VALUES (301, 301, 3010);
         COMMIT;
         DELETE FROM c WHERE id = 7;
         UPDATE c SET p_code = 20 WHERE id = 8;",
    ))
    .unwrap();
    let head = source_head(&source_url);
    wait_until(&mut ferry_run, "catching up with the source", WAIT, || {
        checkpoint(&target_url).is_some_and(|c| c >= head)
    });
    assert_eq!(
        compare(&source_url, &target_url, &db, 2),
        vec![("c".to_owned(), 300), ("p".to_owned(), 301)]
    );

    let mut cut = ferry(&source_url, &target_url).unwrap();
    cut.env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .envs(settings);
    fenced_cutover(cut, ferry_run);
    assert_eq!(
        target_text(&target_url, &foreign_keys).as_deref(),
        Some("c_code:true,c_p:true"),
        "both foreign keys back and validated after the cutover"
    );
    // The target enforces them again.
    let dst = rt.block_on(pgsync::connect(&target_url)).unwrap();
    let err = rt
        .block_on(dst.execute(
            &format!("INSERT INTO \"{db}\".c VALUES (999, 1, 12345)"),
            &[],
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("c_code") || format!("{err:?}").contains("c_code"),
        "{err:?}"
    );
    rt.block_on(app.disconnect()).unwrap();
}

/// TLS to the source, verified (`sslmode = verify-full` with the CA as
/// `sslrootcert`): ferry's user may connect only over TLS (`REQUIRE SSL`),
/// so the consistent load, the binlog stream and the cutover all went over
/// TLS; a CA that did not sign the server's certificate is refused, naming
/// the certificate.
#[test]
fn tls_to_the_source_verified_through_load_stream_and_cutover() {
    use std::os::unix::fs::PermissionsExt;
    const USER_PW: &str = "tls-secret-pw";
    let tls = tempfile::tempdir().unwrap();
    let files = ferry_testkit::tls_files(tls.path()).expect("certificates");
    // mariadbd runs as its own user: it must read the files.
    for path in [
        tls.path(),
        files.ca_cert.as_path(),
        files.server_cert.as_path(),
        files.server_key.as_path(),
    ] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let source = MariaDbServer::start(
        MariaDbOptions::default()
            .setting("ssl_ca", files.ca_cert.to_str().unwrap())
            .setting("ssl_cert", files.server_cert.to_str().unwrap())
            .setting("ssl_key", files.server_key.to_str().unwrap()),
    )
    .expect("mariadb starts with TLS");
    let db = source.create_database("tls").expect("database");
    let rows: Vec<String> = (1..=500).map(|i| format!("({i}, 'row {i}')")).collect();
    source
        .sql(
            &db,
            &format!(
                "CREATE TABLE t (id INT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB;
                 INSERT INTO t VALUES {};
                 CREATE USER 'tls'@'%' IDENTIFIED BY '{USER_PW}' REQUIRE SSL;
                 GRANT ALL PRIVILEGES ON *.* TO 'tls'@'%';",
                rows.join(",")
            ),
        )
        .expect("source rows and a TLS-only user");
    let source_url = format!(
        "mysql://tls:{USER_PW}@127.0.0.1:{}/{db}?sslrootcert={}",
        source.port(),
        files.ca_cert.display()
    );
    let target = PgServer::start(target_options()).expect("target");
    let tdb = target.create_database("dst").expect("target database");
    let target_url = target.url(&tdb);
    let logs = tempfile::tempdir().unwrap();
    let control = format!("127.0.0.1:{}", free_port());
    let settings = [
        ("FERRY_SOURCE_SSLMODE", "verify-full"),
        ("FERRY_CONTROL_LISTEN", control.as_str()),
    ];

    // A CA that did not sign the server's certificate: refused.
    let other = tempfile::tempdir().unwrap();
    let other_ca = ferry_testkit::tls_files(other.path()).expect("another CA");
    let wrong_url = format!(
        "mysql://tls:{USER_PW}@127.0.0.1:{}/{db}?sslrootcert={}",
        source.port(),
        other_ca.ca_cert.display()
    );
    let mut plan = ferry(&wrong_url, &target_url).unwrap();
    plan.env("FERRY_TARGET_SSLMODE", "disable")
        .envs(settings)
        .arg("plan");
    let refused = run(&mut plan).unwrap();
    assert_ne!(refused.code, Some(0), "{}", refused.all());
    assert!(
        refused.stdout.contains("TLS handshake with source")
            && refused.stdout.to_lowercase().contains("certificate"),
        "{}",
        refused.all()
    );
    assert!(!refused.all().contains(USER_PW), "{}", refused.all());

    let mut ferry_run = streaming_policy_run(
        &source_url,
        &target_url,
        &logs.path().join("run.log"),
        &settings,
    );
    // Every session ferry holds on the source is the TLS-only user's,
    // the binlog dump among them.
    let sessions = source
        .sql(
            "",
            "SELECT GROUP_CONCAT(DISTINCT COMMAND ORDER BY COMMAND) FROM information_schema.PROCESSLIST WHERE USER = 'tls'",
        )
        .unwrap();
    assert!(sessions.contains("Binlog Dump"), "{sessions}");
    source
        .sql(
            &db,
            "INSERT INTO t VALUES (501, 'streamed'); UPDATE t SET note = 'changed' WHERE id = 1; DELETE FROM t WHERE id = 2;",
        )
        .unwrap();
    let head = source_head(&source.url(&db));
    wait_until(&mut ferry_run, "catching up with the source", WAIT, || {
        checkpoint(&target_url).is_some_and(|c| c >= head)
    });
    assert_eq!(
        compare(&source.url(&db), &target_url, &db, 1),
        vec![("t".to_owned(), 500)]
    );
    assert!(!ferry_run.log().contains(USER_PW), "{}", ferry_run.log());

    let mut cut = ferry(&source_url, &target_url).unwrap();
    cut.env("FERRY_TARGET_SSLMODE", "disable").envs(settings);
    fenced_cutover(cut, ferry_run);
    assert_eq!(
        target_text(
            &target_url,
            &format!("SELECT note FROM \"{db}\".t WHERE id = 501")
        )
        .as_deref(),
        Some("streamed")
    );
}
