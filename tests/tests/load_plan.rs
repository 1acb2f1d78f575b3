//! The full load's plan through the CLI against real servers: only a table
//! over its share of the load is split into ctid chunks, and a table copied
//! whole is written frozen (`COPY … FREEZE` after a `TRUNCATE` in the same
//! transaction) when it has 1 MiB or more and plainly when smaller, which
//! the target's visibility map shows.

use ferry_e2e::migration::{Migration, target_options};
use ferry_testkit::PgOptions;

/// With `load.chunk_rows` unset (500,000): `big` (1.5M rows, about 73% of
/// the bytes) is over 1.25× its share of two workers and is split; `mid`
/// has more rows than `load.chunk_rows` but is under its share, so it is
/// copied whole (before, it was split in two); `small` is tiny (under
/// 1 MiB: copied without `TRUNCATE` and `FREEZE`).
const SCHEMA: &str = "
CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO big SELECT i, i % 1000 FROM generate_series(1, 1500000) i;
CREATE TABLE mid (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO mid SELECT i, i * 2 FROM generate_series(1, 550000) i;
CREATE TABLE small (id int PRIMARY KEY, note text);
INSERT INTO small SELECT i, 'n' || i FROM generate_series(1, 500) i;
ANALYZE;
";

#[test]
fn only_tables_over_their_share_are_split_and_whole_tables_from_1_mib_load_frozen() {
    let s = Migration::new(PgOptions::new(), target_options(), SCHEMA)
        .env("FERRY_LOAD_PARALLELISM", "2");
    let mut ferry = s.start("run");
    s.wait_streaming(&mut ferry);
    for table in ["big", "mid", "small"] {
        let sql = format!("SELECT count(*) * 1000000 + coalesce(sum(id % 1000), 0) FROM {table}");
        let source: i64 = s
            .source
            .psql(&s.source_db, &sql)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            s.target_i64(&sql),
            Some(source),
            "{table}: rows on the target"
        );
    }
    s.compare(&["small"]);

    let chunks = |table: &str| {
        s.target_i64(&format!(
            "SELECT count(*) FROM ferry.load_plan WHERE table_name = '{table}'"
        ))
    };
    assert_eq!(chunks("big"), Some(3), "big is split by load.chunk_rows");
    assert_eq!(chunks("mid"), Some(1), "mid is under its share: one chunk");
    assert_eq!(chunks("small"), Some(1));

    s.target_query(async |dst| {
        dst.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
            .await
            .ok()
    })
    .expect("pg_visibility on the target");
    let unfrozen = |table: &str| {
        s.target_i64(&format!(
            "SELECT count(*) FILTER (WHERE NOT all_frozen) FROM pg_visibility_map('{table}')"
        ))
        .expect("visibility map")
    };
    let pages = |table: &str| {
        s.target_i64(&format!(
            "SELECT count(*) FROM pg_visibility_map('{table}')"
        ))
        .expect("page count")
    };
    assert!(pages("mid") > 1, "mid fills several pages");
    assert_eq!(unfrozen("mid"), 0, "mid was loaded with COPY FREEZE");
    // Under 1 MiB the TRUNCATE costs more than the freeze saves.
    assert!(
        unfrozen("small") > 0,
        "small (under 1 MiB) was loaded with a plain COPY"
    );
    // The chunks of a split table share it: no TRUNCATE, no FREEZE.
    assert!(
        unfrozen("big") > 0,
        "big was loaded in chunks, without FREEZE"
    );
    let code = ferry
        .signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}
