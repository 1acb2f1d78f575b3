//! A migration in progress survives an upgrade of ferry: `ferry run` is
//! killed in the middle of the load, its state schema is put back into the
//! shape the ferry before versioned state schemas left (version 1: nullable
//! `lag_history` figures, no `control` table yet, one `schema_version` row
//! without a key), and the next `ferry run` migrates the state and finishes
//! the load and the stream with the target equal to the source.

use std::time::Duration;

use ferry_e2e::migration::{LONG, Migration, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_testkit::PgOptions;

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];

/// The state schema as the ferry before versioned state schemas created
/// it (see ferry-apply's `tests/fixtures/state_v1_*.sql`), from the latest
/// one: a sample only version 1 allowed is added.
const DOWNGRADE_TO_V1: &str = "
ALTER TABLE ferry.lag_history ALTER COLUMN lag_seconds DROP NOT NULL,
    ALTER COLUMN lag_bytes DROP NOT NULL;
ALTER TABLE ferry.schema_version DROP CONSTRAINT schema_version_pkey;
DELETE FROM ferry.schema_version WHERE version > 1;
DROP TABLE ferry.control;
INSERT INTO ferry.lag_history (at, lag_seconds, lag_bytes)
    VALUES (now() - interval '1 hour', NULL, 42);
";

#[test]
fn a_load_interrupted_under_the_old_state_schema_finishes_after_the_upgrade() {
    let s = Migration::new(PgOptions::new(), target_options(), BENCH_SCHEMA)
        .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
        .poll(Duration::from_millis(100));
    s.source
        .psql(&s.source_db, &pgsync::bench_data(200_000, 1_000))
        .unwrap();
    let mut writer = Writer::start(&s.source_url, 200_000);
    writer.wait_for(20, LONG).unwrap();
    let chunks = [
        ("FERRY_LOAD_CHUNK_ROWS", "50000"),
        ("FERRY_LOAD_PARALLELISM", "2"),
    ];

    let mut ferry = s.start_with("old", &chunks);
    s.wait_first_chunk(&mut ferry);
    ferry.kill9().unwrap();
    let chunks_before = s
        .target_i64("SELECT count(*) FROM ferry.chunks")
        .expect("chunks recorded");
    assert!(chunks_before >= 1);
    s.target.psql(&s.target_db, DOWNGRADE_TO_V1).unwrap();
    assert_eq!(
        s.target_i64("SELECT max(version)::int8 FROM ferry.schema_version"),
        Some(1)
    );

    let mut ferry = s.start_with("upgraded", &chunks);
    s.wait_streaming(&mut ferry);
    let log = ferry.log();
    assert!(log.contains("state schema migrated"), "{log}");
    let seen = writer.committed();
    writer.wait_for(seen + 200, LONG).unwrap();
    let committed = writer.stop().expect("writer");
    assert!(committed > 0, "the writer committed nothing");
    s.compare_caught_up(BENCH_TABLES);

    // The state is at the latest version, every version recorded once, and
    // the load went on from the chunks the old run had committed.
    let latest = s
        .target_i64("SELECT max(version)::int8 FROM ferry.schema_version")
        .expect("version");
    assert!(latest >= 2, "migrated past version 1");
    assert_eq!(
        s.target_i64("SELECT count(DISTINCT version) FROM ferry.schema_version"),
        Some(latest)
    );
    assert_eq!(
        s.target_i64("SELECT count(*) FROM ferry.lag_history WHERE lag_seconds IS NULL"),
        Some(0)
    );
    assert_eq!(
        s.target_i64("SELECT count(*) FROM ferry.control"),
        Some(1),
        "the control table exists again and holds the running address"
    );
    assert!(
        s.target_i64("SELECT count(*) FROM ferry.chunks")
            .expect("chunks")
            >= chunks_before
    );
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}
