//! `ferry run` SQLite → PostgreSQL end to end, through the CLI: Chinook
//! (a copy of `../shared/datasets/chinook`, WAL mode) into a throwaway
//! PostgreSQL target while a separate writer (its own connection, another
//! thread) inserts, updates and deletes; `kill -9` of ferry during the load
//! and during the stream, each resumed; an exact comparison of every table
//! once caught up; then a fenced cutover under writes: the writer waits
//! (never errors) while fenced, the target holds exactly the writer's
//! transactions up to the fence, capture is gone from the file, foreign
//! keys and indexes are there and the identity columns continue after the
//! source's keys. Sakila (whose own triggers write too) the same way. A
//! column added mid-stream is carried; a table rebuilt by
//! the application mid-stream stops the
//! run with the fix, a new run refuses, and after `ferry cleanup --state`
//! the migration starts over.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, target_options};
use ferry_e2e::sqlite_app::Writer;
use ferry_e2e::{Background, Ran, ferry, pgsync, run, sqlite_copy};
use ferry_testkit::PgServer;
use rusqlite::Connection;
use rusqlite::types::ValueRef;

const TABLES: &[&str] = &[
    "Album",
    "Artist",
    "Customer",
    "Employee",
    "Genre",
    "Invoice",
    "InvoiceLine",
    "MediaType",
    "Playlist",
    "PlaylistTrack",
    "Track",
];
const TRACKS: u64 = 3503;
const CUSTOMERS: u64 = 59;
/// The writer deletes the artist it inserted this many transactions ago.
const KEEP_ARTISTS: u64 = 5;

/// Writer transaction `i`: insert artist `w-i`, delete `w-(i-5)`, add a
/// millisecond to one track and rename one customer's company. Its effect
/// is a pure function of `i`, so the state after any prefix of
/// transactions is known.
fn track_of(i: u64) -> u64 {
    i % TRACKS + 1
}

fn customer_of(i: u64) -> u64 {
    i % CUSTOMERS + 1
}

fn write_txn(conn: &mut Connection, i: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute("INSERT INTO Artist(Name) VALUES (?1)", [format!("w-{i}")])?;
    if i > KEEP_ARTISTS {
        tx.execute(
            "DELETE FROM Artist WHERE Name = ?1",
            [format!("w-{}", i - KEEP_ARTISTS)],
        )?;
    }
    tx.execute(
        "UPDATE Track SET Milliseconds = Milliseconds + 1 WHERE TrackId = ?1",
        [track_of(i) as i64],
    )?;
    tx.execute(
        "UPDATE Customer SET Company = ?1 WHERE CustomerId = ?2",
        (format!("c-{i}"), customer_of(i) as i64),
    )?;
    tx.commit()
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    source_url: String,
    _target: PgServer,
    target_url: String,
    logs: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_journal("wal")
    }

    /// Chinook in journal mode `mode` (`wal`, or `delete`: rollback journal).
    fn with_journal(mode: &str) -> Setup {
        Setup::dataset("chinook/Chinook_Sqlite.sqlite", mode)
    }

    /// A copy of the dataset file `relative` in journal mode `mode`.
    fn dataset(relative: &str, mode: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (path, source_url) = sqlite_copy(relative, dir.path()).expect("dataset copy");
        let conn = Connection::open(&path).unwrap();
        let got: String = conn
            .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, mode);
        drop(conn);
        let target = PgServer::start(target_options()).expect("target");
        let db = target.create_database("dst").unwrap();
        let target_url = target.url(&db);
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Setup {
            path,
            source_url,
            target_url,
            _target: target,
            logs,
            _dir: dir,
        }
    }

    fn cmd(&self) -> std::process::Command {
        let mut cmd = ferry(&self.source_url, &self.target_url).unwrap();
        cmd.env("FERRY_CONTROL_LISTEN", "127.0.0.1:0");
        cmd
    }

    fn start(&self, name: &str, env: &[(&str, &str)]) -> Background {
        let mut cmd = self.cmd();
        cmd.env("FERRY_LOG", "info").arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Background::spawn(cmd, &self.logs.join(format!("{name}.log"))).expect("ferry run")
    }

    fn target_i64(&self, sql: &str) -> Option<i64> {
        let url = self.target_url.clone();
        let sql = sql.to_owned();
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.ok()?;
            let row = c.query_opt(&sql, &[]).await.ok()??;
            Some(row.get::<_, i64>(0))
        })
    }

    fn phase(&self) -> Option<String> {
        let url = self.target_url.clone();
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.ok()?;
            let row = c
                .query_opt("SELECT phase FROM ferry.pipeline", &[])
                .await
                .ok()??;
            Some(row.get::<_, String>(0))
        })
    }

    fn checkpoint(&self) -> Option<u64> {
        self.target_i64("SELECT position::int8 FROM ferry.checkpoint")
            .map(|p| p as u64)
    }

    /// The change log's head in the source file.
    fn source_head(&self) -> u64 {
        let conn = Connection::open(&self.path).unwrap();
        conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as u64
    }

    fn wait(&self, ferry: &mut Background, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if let Some(code) = ferry.exited().unwrap() {
                panic!("ferry exited with {code:?} before {what}:\n{}", ferry.log());
            }
            if done() {
                return;
            }
            assert!(start.elapsed() < LONG, "never {what}:\n{}", ferry.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_streaming(&self, ferry: &mut Background) {
        self.wait(ferry, "streaming", || {
            self.phase().as_deref() == Some("stream") && self.checkpoint().is_some()
        });
    }

    /// Wait until the load committed a chunk, polling one session every
    /// 10 ms so that the caller's kill lands while the load still runs.
    fn wait_first_chunk(&self, ferry: &mut Background) {
        let rt = pgsync::runtime();
        let mut dst = None;
        let start = Instant::now();
        loop {
            if dst.is_none() {
                dst = rt.block_on(pgsync::connect(&self.target_url)).ok();
            }
            let done = dst
                .as_ref()
                .map(|c| rt.block_on(c.query_opt("SELECT count(*) FROM ferry.chunks", &[])));
            match done {
                Some(Ok(Some(row))) if row.get::<_, i64>(0) >= 1 => return,
                Some(Err(_)) => dst = None, // no state schema yet
                _ => {}
            }
            if let Some(code) = ferry.exited().unwrap() {
                panic!(
                    "ferry exited during the load with {code:?}:\n{}",
                    ferry.log()
                );
            }
            assert!(start.elapsed() < LONG, "no chunk loaded:\n{}", ferry.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until the running `ferry` answers `ferry status` (live).
    fn wait_live(&self, ferry: &mut Background) {
        self.wait(ferry, "a live status", || {
            let mut st = self.cmd();
            st.args(["status", "--json"]);
            let ran = run(&mut st).unwrap();
            let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
            v["live"] == true && v["phase"] == "stream"
        });
    }

    fn wait_caught_up(&self, ferry: &mut Background) {
        let head = self.source_head();
        self.wait(ferry, &format!("applied change-log entry {head}"), || {
            self.checkpoint().is_some_and(|c| c >= head)
        });
    }

    /// Every table's rows, source and target, equal as PostgreSQL text.
    fn compare(&self, tables: &[&str]) {
        for t in tables {
            let (src, dst) = (self.source_rows(t), self.target_rows(t));
            assert_eq!(src.len(), dst.len(), "row count of {t}");
            for (s, d) in src.iter().zip(&dst) {
                assert_eq!(s, d, "a row of {t} differs");
            }
        }
    }

    /// The target's column names and types of `public.<table>`.
    fn target_columns(&self, table: &str) -> Vec<(String, String)> {
        let (url, table) = (self.target_url.clone(), table.to_owned());
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.unwrap();
            c.query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
                  WHERE attrelid = format('public.%I', $1::text)::regclass AND attnum > 0
                    AND NOT attisdropped ORDER BY attnum",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        })
    }

    /// The source's rows, each value cast by the target to the target
    /// column's type and printed as text; sorted.
    fn source_rows(&self, table: &str) -> Vec<Vec<Option<String>>> {
        let cols = self.target_columns(table);
        let conn =
            Connection::open_with_flags(&self.path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let names: Vec<String> = cols.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let mut stmt = conn
            .prepare(&format!("SELECT {} FROM \"{table}\"", names.join(", ")))
            .unwrap();
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); cols.len()];
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for (i, col) in columns.iter_mut().enumerate() {
                col.push(match r.get_ref(i).unwrap() {
                    ValueRef::Null => None,
                    ValueRef::Integer(v) => Some(v.to_string()),
                    ValueRef::Real(v) => Some(format!("{v:?}")),
                    ValueRef::Text(t) => Some(String::from_utf8(t.to_vec()).unwrap()),
                    ValueRef::Blob(b) => Some(format!(
                        "\\x{}",
                        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                    )),
                });
            }
        }
        let url = self.target_url.clone();
        let cast: Vec<Vec<Option<String>>> = pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.unwrap();
            let mut out = Vec::new();
            for ((_, ty), values) in cols.iter().zip(columns) {
                let rows = c
                    .query(
                        &format!(
                            "SELECT v::{ty}::text FROM unnest($1::text[]) WITH ORDINALITY u(v, i) ORDER BY i"
                        ),
                        &[&values],
                    )
                    .await
                    .unwrap();
                out.push(rows.iter().map(|r| r.get(0)).collect());
            }
            out
        });
        let n = cast.first().map_or(0, Vec::len);
        let mut out: Vec<Vec<Option<String>>> = (0..n)
            .map(|i| cast.iter().map(|c| c[i].clone()).collect())
            .collect();
        out.sort();
        out
    }

    fn target_rows(&self, table: &str) -> Vec<Vec<Option<String>>> {
        let cols = self.target_columns(table);
        let names: Vec<String> = cols.iter().map(|(n, _)| format!("\"{n}\"::text")).collect();
        let sql = format!("SELECT {} FROM public.\"{table}\"", names.join(", "));
        let url = self.target_url.clone();
        let mut out: Vec<Vec<Option<String>>> = pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.unwrap();
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
                .collect()
        });
        out.sort();
        out
    }

    fn target_map(&self, sql: &str) -> BTreeMap<i64, String> {
        let (url, sql) = (self.target_url.clone(), sql.to_owned());
        pgsync::runtime().block_on(async move {
            let c = pgsync::connect(&url).await.unwrap();
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        })
    }
}

/// `(id, value)` of the untouched dataset file.
fn dataset_map(sql: &str) -> BTreeMap<i64, String> {
    let path = ferry_testkit::dataset_file("chinook/Chinook_Sqlite.sqlite").unwrap();
    let conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn chinook_load_stream_kill9_and_fenced_cutover_under_writes() {
    chinook_under_writes(&Setup::new());
}

/// The same in rollback-journal mode: the snapshot copy and every read of
/// ferry only briefly hold the writer off.
#[test]
fn chinook_rollback_journal_under_writes() {
    chinook_under_writes(&Setup::with_journal("delete"));
}

fn chinook_under_writes(s: &Setup) {
    let small_chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "50"),
        ("FERRY_LOAD_PARALLELISM", "1"),
    ];

    // The application writes from before ferry starts to the end.
    let writer = Writer::start_with(&s.path, 1, write_txn);
    writer.wait_for(20);

    // 1. kill -9 during the load, after a chunk committed.
    let mut ferry_run = s.start("load", &small_chunks);
    s.wait_first_chunk(&mut ferry_run);
    ferry_run.kill9().unwrap();
    assert_eq!(
        s.phase().as_deref(),
        Some("load"),
        "the crash must hit the load"
    );

    // 2. Resume: the load finishes, the stream catches up.
    let mut ferry_run = s.start("resume", &small_chunks);
    s.wait_streaming(&mut ferry_run);
    let seen = writer.last();
    writer.wait_for(seen + 100);

    // 3. kill -9 mid-stream under writes, then resume.
    ferry_run.kill9().unwrap();
    writer.wait_for(writer.last() + 50);
    let mut ferry_run = s.start("stream-resume", &[]);
    s.wait_streaming(&mut ferry_run);
    writer.wait_for(writer.last() + 50);

    // The file's quick_check (every page read; writers wait for it in
    // rollback-journal mode) ran before the first load only.
    let log =
        |name: &str| plain(&std::fs::read_to_string(s.logs.join(format!("{name}.log"))).unwrap());
    assert!(
        log("load").contains("PRAGMA quick_check run"),
        "the first run checks the file:\n{}",
        log("load")
    );
    for resumed in ["resume", "stream-resume"] {
        let text = log(resumed);
        assert!(
            text.contains("PRAGMA quick_check not run again: the migration is resuming")
                && !text.contains("PRAGMA quick_check run"),
            "a resumed run does not check the file again ({resumed}):\n{text}"
        );
    }

    // 4. Writer stopped: caught up, every table equal.
    let first = writer.stop();
    assert!(first.last > 200, "the writer committed {}", first.last);
    s.wait_caught_up(&mut ferry_run);
    s.compare(TABLES);
    // The live status shows the change log's head applied and its size.
    let head = s.source_head().to_string();
    s.wait(&mut ferry_run, "a status at the head", || {
        let mut st = s.cmd();
        st.args(["status", "--json"]);
        let ran = run(&mut st).unwrap();
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
        v["live"] == true
            && v["phase"] == "stream"
            && v["source_position"] == head.as_str()
            && v["applied_position"] == head.as_str()
            && v["slot"]["name"] == "_ferry_changes"
            && v["lag"]["seconds"].as_f64().is_some_and(|l| l < 5.0)
    });
    let log = ferry_run.log();
    assert!(
        !log.contains("ERROR"),
        "ferry logged an error while streaming:\n{log}"
    );

    // 5. Fenced cutover while the application writes.
    let writer = Writer::start_with(&s.path, first.last + 1, write_txn);
    writer.wait_for(first.last + 50);
    let mut cut = s.cmd();
    cut.args(["cutover", "--fence", "--max-lag", "30", "--timeout", "120s"]);
    let cut: Ran = run(&mut cut).unwrap();
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry_run.log());
    assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
    let log = ferry_run.log();
    let code = ferry_run.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(0), "ferry run exits 0 after the cutover:\n{log}");
    let at_cutover = writer.last();
    writer.wait_for(at_cutover + 20);
    let second = writer.stop();
    assert!(
        second.max_latency >= Duration::from_millis(50),
        "the writer never waited for the fence (longest transaction {:?})",
        second.max_latency
    );

    // 6. Capture is gone from the file.
    let conn = Connection::open(&s.path).unwrap();
    let leftovers: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_ferry\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0, "ferry's triggers and tables are removed");
    drop(conn);
    let copies: Vec<String> = std::fs::read_dir(s.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("ferry-snapshot"))
        .collect();
    assert!(copies.is_empty(), "snapshot copies left behind: {copies:?}");

    // 7. The target holds exactly writer transactions 1..=k, k the last
    //    committed before the fence.
    let artists = s.target_map(
        "SELECT \"ArtistId\", \"Name\" FROM public.\"Artist\" WHERE \"Name\" LIKE 'w-%'",
    );
    let k = artists
        .values()
        .map(|n| n[2..].parse::<u64>().unwrap())
        .max()
        .expect("writer artists in the target");
    assert!(
        k > first.last && k < second.last,
        "the fence fell inside the second writer run (k {k}, runs end {} and {})",
        first.last,
        second.last
    );
    let want: Vec<String> = (k + 1 - KEEP_ARTISTS..=k)
        .map(|j| format!("w-{j}"))
        .collect();
    let got: Vec<String> = artists.values().cloned().collect();
    let mut got_sorted = got.clone();
    got_sorted.sort_by_key(|n| n[2..].parse::<u64>().unwrap());
    assert_eq!(got_sorted, want, "writer artists at the fence");
    let tracks = s.target_map("SELECT \"TrackId\", \"Milliseconds\"::text FROM public.\"Track\"");
    let orig = dataset_map("SELECT TrackId, CAST(Milliseconds AS TEXT) FROM Track");
    for (id, ms) in &orig {
        let added = (1..=k).filter(|&i| track_of(i) == *id as u64).count() as i64;
        let want = ms.parse::<i64>().unwrap() + added;
        assert_eq!(tracks[id], want.to_string(), "Track {id} milliseconds");
    }
    let companies = s.target_map(
        "SELECT \"CustomerId\", coalesce(\"Company\", '<null>') FROM public.\"Customer\"",
    );
    let orig = dataset_map("SELECT CustomerId, coalesce(Company, '<null>') FROM Customer");
    for (id, company) in &orig {
        let want = (1..=k)
            .rev()
            .find(|&i| customer_of(i) == *id as u64)
            .map_or_else(|| company.clone(), |i| format!("c-{i}"));
        assert_eq!(companies[id], want, "Customer {id} company");
    }
    // Tables the writer never touched are still exactly the source's.
    s.compare(&[
        "Album",
        "Employee",
        "Genre",
        "Invoice",
        "InvoiceLine",
        "MediaType",
        "Playlist",
        "PlaylistTrack",
    ]);

    // 8. The file's foreign keys are on the target, validated; indexes too.
    let fks = s
        .target_i64(
            "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
              WHERE n.nspname = 'public' AND c.contype = 'f' AND c.convalidated",
        )
        .unwrap();
    assert_eq!(fks, 11, "Chinook's 11 foreign keys, validated");
    let indexes = s
        .target_i64(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname LIKE 'IFK_%'",
        )
        .unwrap();
    assert_eq!(indexes, 11, "Chinook's 11 foreign-key indexes");

    // 9. Identity columns continue after the source's keys.
    let max_id = *artists.keys().max().unwrap();
    let next = s
        .target_i64(
            "INSERT INTO public.\"Artist\"(\"Name\") VALUES ('after cutover') RETURNING \"ArtistId\"",
        )
        .expect("insert into the target");
    assert!(next > max_id, "new target key {next} after {max_id}");
}

/// `log` without its ANSI colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
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

/// WAL mode: the load reads the file itself, no copy of it, through read
/// transactions that began under one brief hold of the write lock, with two
/// workers over hundreds of chunks, while the application keeps committing
/// (never an error); once caught up every table is exactly the source's.
#[test]
fn wal_load_reads_the_file_while_the_application_writes() {
    let s = Setup::new();
    let writer = Writer::start_with(&s.path, 1, write_txn);
    writer.wait_for(20);
    let mut ferry_run = s.start(
        "load",
        &[
            ("FERRY_LOAD_CHUNK_ROWS", "20"),
            ("FERRY_LOAD_PARALLELISM", "2"),
        ],
    );
    s.wait_first_chunk(&mut ferry_run);
    let at_first_chunk = writer.last();
    let copies: Vec<String> = std::fs::read_dir(s.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("ferry-snapshot"))
        .collect();
    assert!(copies.is_empty(), "a snapshot copy in WAL mode: {copies:?}");
    // The application commits while the chunks are read.
    let mut in_load = 0;
    s.wait(&mut ferry_run, "the end of the load", || {
        if s.phase().as_deref() == Some("load") {
            in_load = writer.last();
        }
        s.phase().as_deref() == Some("stream") && s.checkpoint().is_some()
    });
    assert!(
        in_load >= at_first_chunk + 10,
        "the application committed {} transactions during the load",
        in_load.saturating_sub(at_first_chunk)
    );
    writer.wait_for(writer.last() + 50);
    let report = writer.stop();
    s.wait_caught_up(&mut ferry_run);
    s.compare(TABLES);
    let log = plain(&ferry_run.log());
    assert!(
        log.contains("sqlite snapshot taken (WAL: read transactions on the file, no copy)")
            && log.contains("readers=2"),
        "the snapshot's log line:\n{log}"
    );
    assert!(
        log.contains("sqlite snapshot released"),
        "the snapshot is released after the load:\n{log}"
    );
    assert!(
        !log.contains("shares its connection"),
        "every worker had a read transaction of its own:\n{log}"
    );
    assert!(!log.contains("ERROR"), "ferry logged an error:\n{log}");
    assert!(report.last > in_load, "{report:?}");
}

/// `ALTER TABLE … ADD COLUMN` mid-stream is carried. SQLite's ALTER TABLE
/// procedure (create, copy, drop, rename) drops the table's triggers:
/// ferry must stop with the fix at the first read after it, having applied
/// everything before it, and refuse to start again until cleaned up.
#[test]
fn added_column_carried_and_rebuilt_table_stops_with_the_fix() {
    let s = Setup::new();
    let writer = Writer::start_with(&s.path, 1, write_txn);
    writer.wait_for(20);
    let mut ferry_run = s.start("run", &[]);
    s.wait_streaming(&mut ferry_run);
    writer.wait_for(writer.last() + 50);
    writer.stop();
    s.wait_caught_up(&mut ferry_run);
    s.compare(TABLES);

    // ALTER TABLE … ADD COLUMN is carried: the column appears on the
    // target with the values written after it.
    let conn = Connection::open(&s.path).unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    conn.execute_batch(
        "ALTER TABLE Genre ADD COLUMN Note TEXT;
         UPDATE Genre SET Note = 'loud' WHERE GenreId = 1;
         INSERT INTO Genre(Name, Note) VALUES ('added', 'new');",
    )
    .unwrap();
    s.wait_caught_up(&mut ferry_run);
    s.compare(TABLES);
    assert_eq!(
        s.target_i64("SELECT count(*) FROM public.\"Genre\" WHERE \"Note\" IS NOT NULL"),
        Some(2)
    );

    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         BEGIN IMMEDIATE;
         CREATE TABLE Genre_new (GenreId INTEGER PRIMARY KEY NOT NULL, Name NVARCHAR(120), Note TEXT);
         INSERT INTO Genre_new SELECT GenreId, Name, Note FROM Genre;
         DROP TABLE Genre;
         ALTER TABLE Genre_new RENAME TO Genre;
         COMMIT;
         INSERT INTO Genre(Name) VALUES ('after the rebuild');",
    )
    .unwrap();
    drop(conn);

    let code = ferry_run.wait(Duration::from_secs(60)).unwrap();
    let log = std::fs::read_to_string(s.logs.join("run.log")).unwrap();
    assert!(
        code.is_some_and(|c| c != 0),
        "ferry run must stop with an error ({code:?}):\n{log}"
    );
    assert!(
        log.contains("Genre") && log.contains("was rebuilt") && log.contains("ferry cleanup"),
        "the error names the table and the fix:\n{log}"
    );
    // Nothing of the rebuilt table's new life reached the target.
    assert_eq!(
        s.target_i64("SELECT count(*) FROM public.\"Genre\" WHERE \"Name\" = 'after the rebuild'"),
        Some(0)
    );

    // A new run refuses too, with the same fix, before streaming anything.
    let again = s.start("again", &[]);
    let code = again.wait(Duration::from_secs(120)).unwrap();
    let log = std::fs::read_to_string(s.logs.join("again.log")).unwrap();
    assert!(code.is_some_and(|c| c != 0), "{code:?}:\n{log}");
    assert!(log.contains("Genre") && log.contains("rebuilt"), "{log}");

    // The fix: `ferry cleanup --state`, drop the migrated tables, run again.
    let mut cleanup = s.cmd();
    cleanup.args(["cleanup", "--state"]);
    let ran = run(&mut cleanup).unwrap();
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.contains("change capture removed"),
        "{}",
        ran.all()
    );
    let url = s.target_url.clone();
    pgsync::runtime().block_on(async move {
        let c = pgsync::connect(&url).await.unwrap();
        c.batch_execute(
            "DROP SCHEMA public CASCADE; CREATE SCHEMA public; DROP SCHEMA main CASCADE",
        )
        .await
        .unwrap();
    });
    let mut fresh = s.start("fresh", &[]);
    s.wait_streaming(&mut fresh);
    s.wait_caught_up(&mut fresh);
    s.compare(TABLES);
    assert_eq!(
        s.target_i64("SELECT count(*) FROM public.\"Genre\" WHERE \"Name\" = 'after the rebuild'"),
        Some(1)
    );
    let code = fresh
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

const SAKILA_TABLES: &[&str] = &[
    "actor",
    "address",
    "category",
    "city",
    "country",
    "customer",
    "film",
    "film_actor",
    "film_category",
    "film_text",
    "inventory",
    "language",
    "payment",
    "rental",
    "staff",
    "store",
];

/// Sakila's application transaction `i`: a rental, a customer's email, a
/// film's description (the file's own trigger copies it to `film_text`)
/// and a payment deleted.
fn sakila_txn(conn: &mut Connection, i: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO rental(rental_date, inventory_id, customer_id, staff_id, last_update)
         VALUES (datetime('2030-01-01', ?1 || ' seconds'), ?2, ?3, 1, datetime('now'))",
        (i as i64, (i % 4581 + 1) as i64, (i % 599 + 1) as i64),
    )?;
    tx.execute(
        "UPDATE customer SET email = ?1 WHERE customer_id = ?2",
        (format!("w-{i}@example.com"), (i % 599 + 1) as i64),
    )?;
    tx.execute(
        "UPDATE film SET description = ?1 WHERE film_id = ?2",
        (format!("written {i}"), (i % 1000 + 1) as i64),
    )?;
    tx.execute("DELETE FROM payment WHERE payment_id = ?1", [i as i64])?;
    tx.commit()
}

/// Sakila (with its own triggers) under an application writer: load,
/// `kill -9` mid-stream, exact comparison, fenced cutover under writes.
#[test]
fn sakila_under_writes_with_fenced_cutover() {
    let s = Setup::dataset("sakila-sqlite/sakila.db", "wal");
    let writer = Writer::start_with(&s.path, 1, sakila_txn);
    writer.wait_for(20);
    let mut ferry_run = s.start("run", &[("FERRY_LOAD_CHUNK_ROWS", "2000")]);
    s.wait_streaming(&mut ferry_run);
    writer.wait_for(writer.last() + 100);
    ferry_run.kill9().unwrap();
    writer.wait_for(writer.last() + 50);
    let mut ferry_run = s.start("resume", &[]);
    s.wait_streaming(&mut ferry_run);
    writer.wait_for(writer.last() + 50);
    let first = writer.stop();
    s.wait_caught_up(&mut ferry_run);
    s.compare(SAKILA_TABLES);

    let writer = Writer::start_with(&s.path, first.last + 1, sakila_txn);
    writer.wait_for(first.last + 30);
    let mut cut = s.cmd();
    cut.args(["cutover", "--fence", "--max-lag", "30", "--timeout", "120s"]);
    let cut: Ran = run(&mut cut).unwrap();
    assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry_run.log());
    assert!(
        cut.stdout.contains("row counts equal for 16 tables"),
        "{}",
        cut.all()
    );
    let code = ferry_run.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(0));
    let at_cutover = writer.last();
    writer.wait_for(at_cutover + 10);
    let second = writer.stop();
    assert!(second.last > first.last + 30);
    // The rentals the writer made before the fence, and only those.
    let k = s
        .target_i64(
            "SELECT max(extract(epoch FROM rental_date - '2030-01-01'))::int8 FROM public.rental
              WHERE rental_date >= '2030-01-01'",
        )
        .unwrap() as u64;
    assert!(k > first.last && k < second.last, "fence at {k}");
    assert_eq!(
        s.target_i64("SELECT count(*) FROM public.rental WHERE rental_date >= '2030-01-01'"),
        Some(k as i64)
    );
}

/// Mixed storage classes: a file as applications really leave them
/// (integers and text in one column, 0/1 booleans, ISO-8601 text dates,
/// epoch milliseconds, reals, blobs, JSON text, NULLs, a table without a
/// key and a WITHOUT ROWID table), loaded and streamed exactly; a table
/// created mid-stream is not carried, also after a restart.
#[test]
fn mixed_storage_classes_load_and_stream_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE item (
             id INTEGER PRIMARY KEY,
             code,
             done BOOLEAN,
             created DATETIME,
             at_ms INTEGER,
             price REAL,
             raw BLOB,
             meta TEXT,
             loose
         );
         CREATE TABLE tag (item_id INTEGER, label TEXT);
         CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID;",
    )
    .unwrap();
    let row = |conn: &Connection, i: i64| {
        let code: rusqlite::types::Value = if i % 7 == 0 {
            format!("C-{i}").into()
        } else {
            i.into()
        };
        let loose: rusqlite::types::Value = match i % 3 {
            0 => i.into(),
            1 => (i as f64 + 0.25).into(),
            _ => rusqlite::types::Value::Null,
        };
        conn.execute(
            "INSERT INTO item(code, done, created, at_ms, price, raw, meta, loose)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                code,
                i % 2,
                format!("2024-01-{:02} 10:{:02}:00", i % 28 + 1, i % 60),
                1_700_000_000_000i64 + i,
                i as f64 / 3.0,
                vec![0u8, (i % 256) as u8, 255],
                format!("{{\"n\": {i}, \"s\": \"x\\\"y\"}}"),
                loose,
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO tag VALUES (?1, ?2)",
            (i, format!("t{}", i % 5)),
        )
        .unwrap();
        conn.execute(
            "INSERT OR REPLACE INTO kv VALUES (?1, ?2)",
            (format!("k{}", i % 50), i),
        )
        .unwrap();
    };
    for i in 1..=500 {
        row(&conn, i);
    }
    drop(conn);
    let target = PgServer::start(target_options()).expect("target");
    let db = target.create_database("dst").unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let s = Setup {
        source_url: format!("sqlite://{}", path.display()),
        path,
        target_url: target.url(&db),
        _target: target,
        logs,
        _dir: dir,
    };
    let mut ferry_run = s.start("run", &[]);
    s.wait_streaming(&mut ferry_run);
    let conn = Connection::open(&s.path).unwrap();
    conn.busy_timeout(Duration::from_secs(60)).unwrap();
    for i in 501..=700 {
        row(&conn, i);
    }
    conn.execute_batch(
        "UPDATE item SET code = 'changed', done = 0, loose = 2.5 WHERE id % 10 = 0;
         DELETE FROM tag WHERE item_id % 4 = 0;
         UPDATE tag SET label = NULL WHERE item_id % 9 = 0;
         DELETE FROM kv WHERE k = 'k7';
         CREATE TABLE later (x INTEGER PRIMARY KEY, y TEXT);
         INSERT INTO later VALUES (1, 'not carried');",
    )
    .unwrap();
    drop(conn);
    s.wait_caught_up(&mut ferry_run);
    s.compare(&["item", "tag", "kv"]);
    // A table created after the migration started is not carried, also
    // not by a restarted run, and the cutover goes through without it.
    ferry_run.kill9().unwrap();
    let mut ferry_run = s.start("restart", &[]);
    s.wait_live(&mut ferry_run);
    let mut cut = s.cmd();
    cut.args(["cutover", "--fence", "--max-lag", "30", "--timeout", "120s"]);
    let ran = run(&mut cut).unwrap();
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.all(), ferry_run.log());
    assert!(
        ran.stdout.contains("row counts equal for 3 tables"),
        "{}",
        ran.all()
    );
    let code = ferry_run.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(
        s.target_i64("SELECT count(*) FROM pg_class WHERE relname = 'later'"),
        Some(0)
    );
    let types: Vec<(String, String)> = s.target_columns("item");
    assert_eq!(
        types
            .iter()
            .map(|(c, t)| format!("{c} {t}"))
            .collect::<Vec<_>>(),
        [
            "id bigint",
            "code text",
            "done boolean",
            "created timestamp without time zone",
            "at_ms bigint",
            "price double precision",
            "raw bytea",
            "meta text",
            "loose double precision",
        ],
        "types chosen from the sampled values"
    );
}

/// A value beyond the sampled rows that does not fit its column's type
/// stops the load with the table, column, type and fix: an operator
/// error, not a retry loop.
#[test]
fn misfit_beyond_the_sample_stops_the_load_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1500)
         INSERT INTO t SELECT i, i * 2 FROM s;
         UPDATE t SET n = 'oops' WHERE id = 1400;",
    )
    .unwrap();
    drop(conn);
    let target = PgServer::start(target_options()).expect("target");
    let db = target.create_database("dst").unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let s = Setup {
        source_url: format!("sqlite://{}", path.display()),
        path,
        target_url: target.url(&db),
        _target: target,
        logs,
        _dir: dir,
    };
    let ferry_run = s.start("run", &[]);
    let code = ferry_run.wait(Duration::from_secs(120)).unwrap();
    let log = std::fs::read_to_string(s.logs.join("run.log")).unwrap();
    assert!(code.is_some_and(|c| c != 0), "{code:?}:\n{log}");
    assert!(
        log.contains("main.t")
            && log.contains("column n (bigint)")
            && log.contains("fix the value"),
        "{log}"
    );
    assert!(!log.contains("will reconnect"), "not retried:\n{log}");
}
