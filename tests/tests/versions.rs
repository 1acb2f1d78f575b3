//! The version matrix: for every PostgreSQL major ferry supports (sources
//! 12–18, targets 13–18; the servers `make setup` installs), one short
//! end-to-end migration through the CLI — `ferry plan` naming what the
//! source's version cannot do, a full load under concurrent writes that is
//! killed with `kill -9` and resumed, a large transaction streamed while in
//! progress where the source can (14+), a fenced cutover, and an exact
//! comparison of source and target — plus the cross-version pairs users
//! make. The source role is not a superuser (see `roles.rs`). PostgreSQL
//! 15 → 15 is the rest of the suite.

use std::time::{Duration, Instant};

use ferry_e2e::migration::{LONG, Migration, OwnerSource};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_testkit::PgOptions;

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];
const ACCOUNTS: u32 = 100_000;
const APP: &str = "app_owner";
const APP_PW: &str = "app-owner-pw";

/// A migration between PostgreSQL `source_major` and `target_major`, with
/// the source's `pg_dump` (also returned).
fn pair(source_major: u32, target_major: u32) -> (Migration, String) {
    let mut opts = PgOptions::new().version(source_major);
    if source_major >= 13 {
        // Small enough that the large transaction below is streamed (14+).
        opts = opts.setting("logical_decoding_work_mem", "64kB");
    }
    // ferry and the application connect as a role that is not a superuser:
    // REPLICATION, owner of the database and its tables, and (for the
    // fence) pg_signal_backend — what RDS/Aurora can give.
    let owner = OwnerSource::start(opts, APP, APP_PW);
    let source = &owner.server;
    source.psql_conninfo(&owner.conninfo, BENCH_SCHEMA).unwrap();
    source
        .psql_conninfo(&owner.conninfo, &pgsync::bench_data(ACCOUNTS, 300))
        .unwrap();
    let pg_dump = ferry_testkit::pg_dump_for(source_major).expect("pg_dump");
    let pg_dump = pg_dump.to_string_lossy().into_owned();
    let target_opts = PgOptions::new().version(target_major).wal_level("replica");
    let m = owner
        .migration(target_opts)
        .env("FERRY_PG_DUMP", &pg_dump)
        .poll(Duration::from_millis(100));
    (m, pg_dump)
}

/// `ferry plan` passes and names what this source version cannot do.
fn plan_names_the_version_features(p: &Migration, source_major: u32, pg_dump: &str) {
    let ran = p.ferry(&["plan"]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.contains("plan: runnable (5 tables)"),
        "{}",
        ran.all()
    );
    let m = source_major;
    let line = |name: &str| -> String {
        ran.stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no `{name}` check:\n{}", ran.stdout))
            .to_owned()
    };
    assert!(
        line("server version").contains(&format!("PostgreSQL {m}")),
        "{}",
        ran.stdout
    );
    assert!(
        line("pg_dump").contains(&format!(
            "pg_dump (PostgreSQL) {}",
            ferry_testkit::binary_major(std::path::Path::new(pg_dump)).unwrap()
        )),
        "{}",
        ran.stdout
    );
    let streaming = line("large-transaction streaming");
    if m >= 14 {
        assert!(
            streaming.contains("on (pgoutput protocol 2)"),
            "{streaming}"
        );
        assert!(
            !ran.stdout.contains("partition-root publishing"),
            "{}",
            ran.stdout
        );
    } else {
        assert!(streaming.starts_with("  WARN"), "{streaming}");
        assert!(
            streaming.contains(&format!(
                "unavailable on PostgreSQL {m} (pgoutput protocol 2 needs 14)"
            )),
            "{streaming}"
        );
        let partition = ran
            .stdout
            .lines()
            .find(|l| l.contains("partition-root publishing"));
        if m < 13 {
            let partition = partition.unwrap_or_else(|| panic!("{}", ran.stdout));
            assert!(
                partition
                    .contains("unavailable on PostgreSQL 12 (publish_via_partition_root needs 13)"),
                "{partition}"
            );
        } else {
            assert!(partition.is_none(), "{}", ran.stdout);
        }
    }
}

/// Progress on stderr (shown with `--nocapture`): what the matrix costs.
fn step(started: Instant, what: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    }
}

/// One migration between PostgreSQL `source_major` and `target_major`.
fn migrate(source_major: u32, target_major: u32) {
    let started = Instant::now();
    let (p, pg_dump) = pair(source_major, target_major);
    step(started, "servers up, data loaded");
    plan_names_the_version_features(&p, source_major, &pg_dump);
    step(started, "plan checked");

    let mut writer = Writer::start(&p.source_url, ACCOUNTS);
    writer.wait_for(20, LONG).unwrap();

    // 1. The load, killed with -9 once a chunk is committed.
    let chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "5000"),
        ("FERRY_LOAD_PARALLELISM", "1"),
    ];
    let mut ferry = p.start_with("load", &chunks);
    p.wait_first_chunk(&mut ferry);
    ferry.kill9().unwrap();
    step(started, "killed during the load");

    // 2. Resume: the unfinished tables are copied from a new snapshot, taken
    //    with a temporary slot in this server's syntax.
    let mut ferry = p.start_with("resume", &chunks);
    p.wait_phase(&mut ferry, "stream");
    let log = ferry.log();
    assert!(
        log.contains("resuming the full load from a new snapshot"),
        "the load was not resumed:\n{log}"
    );

    step(started, "resumed and streaming");

    // 3. A large transaction, streamed while in progress where the source can.
    let rt = pgsync::runtime();
    rt.block_on(async {
        let src = pgsync::connect(&p.source_url).await.unwrap();
        src.batch_execute(
            "INSERT INTO accounts SELECT g, 1, 0, 'large transaction' \
             FROM generate_series(900000001, 900020000) g",
        )
        .await
        .unwrap();
        if source_major >= 14 {
            // The source's own statistics say it was sent while in progress.
            let t = Instant::now();
            loop {
                let streamed: i64 = src
                    .query_one(
                        "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots \
                         WHERE slot_name = 'ferry'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if streamed > 0 {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "PostgreSQL {source_major} streams large transactions, but slot ferry streamed none"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    writer.wait_for(writer.committed() + 100, LONG).unwrap();

    step(started, "large transaction sent");

    // 4. Fenced cutover under writes, then an exact comparison.
    p.fenced_cutover(ferry, "60s");
    step(started, "cut over");
    let _ = writer.stop();
    p.compare(BENCH_TABLES);
    let large = p.target_i64("SELECT count(*) FROM accounts WHERE filler = 'large transaction'");
    assert_eq!(large, Some(20_000), "the large transaction arrived whole");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "PostgreSQL {source_major} -> {target_major}: {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn pg12_to_13() {
    migrate(12, 13);
}

#[test]
fn pg13_to_13() {
    migrate(13, 13);
}

#[test]
fn pg14_to_14() {
    migrate(14, 14);
}

#[test]
fn pg16_to_16() {
    migrate(16, 16);
}

#[test]
fn pg17_to_17() {
    migrate(17, 17);
}

#[test]
fn pg18_to_18() {
    migrate(18, 18);
}

#[test]
fn pg12_to_16() {
    migrate(12, 16);
}

#[test]
fn pg14_to_17() {
    migrate(14, 17);
}

#[test]
fn pg15_to_18() {
    migrate(15, 18);
}

/// A `pg_dump` older than the source is refused by `ferry plan` with the
/// fix, before anything is created.
#[test]
fn plan_refuses_a_pg_dump_older_than_the_source() {
    let old = "/usr/lib/postgresql/15/bin/pg_dump";
    let p = Migration::new(
        PgOptions::new().version(18),
        PgOptions::new().version(18).wal_level("replica"),
        "CREATE TABLE t (id int PRIMARY KEY)",
    )
    .env("FERRY_PG_DUMP", old);
    assert_eq!(
        ferry_testkit::binary_major(std::path::Path::new(old)).unwrap(),
        15
    );
    let ran = p.ferry(&["plan"]);
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    let line = ran
        .stdout
        .lines()
        .find(|l| l.contains("pg_dump"))
        .unwrap_or_else(|| panic!("{}", ran.stdout));
    assert!(line.starts_with("  FAIL"), "{line}");
    assert!(
        line.contains(&format!(
            "{old} is version 15 but the source server is PostgreSQL 18"
        )),
        "{line}"
    );
    assert!(
        ran.stdout
            .contains("set FERRY_PG_DUMP to a pg_dump of version 18 or later"),
        "fix missing: {}",
        ran.stdout
    );
    assert!(ran.stdout.contains("NOT runnable"), "{}", ran.stdout);
}
