//! `ferry validate` PostgreSQL → PostgreSQL through the CLI, against real
//! throwaway servers, while pgbench-like writes run on the source: every
//! difference planted on the target is found (and nothing else), `--repair`
//! makes the rows equal while the stream keeps running, the running `ferry
//! run` validates on request (`POST /validate`) and shows the results in
//! its status and metrics, and `ferry cutover --require-validated` follows
//! the results.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_e2e::migration::{LONG, Migration, target_options};
use ferry_e2e::pgsync::{self, BENCH_SCHEMA, Writer};
use ferry_e2e::validation::{by_table, differences, expected};
use ferry_testkit::PgOptions;
use serde_json::Value;

/// The writer's pace (see its start).
const WRITES_PER_SECOND: u32 = 150;

const BENCH_TABLES: &[&str] = &["branches", "tellers", "accounts", "history", "docs"];

/// `items`: keys 2, 4, …, 10000 (odd keys are free for extra rows), a name
/// that is the empty string for key 404, a timestamp. The writer never
/// touches it, so what is planted on the target stays planted.
const ITEMS: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, name text, qty int NOT NULL, at timestamptz);
INSERT INTO items SELECT 2 * i, CASE WHEN 2 * i = 404 THEN '' ELSE 'item ' || i END, i % 13,
    timestamptz '2024-03-01 12:00:00.123456+00' + i * interval '1 second'
  FROM generate_series(1, 5000) i;
"#;

/// The differences planted on the target, and how validation names them.
const PLANT: &str = r#"
UPDATE items SET qty = qty + 1 WHERE id = 102;
DELETE FROM items WHERE id = 202;
INSERT INTO items VALUES (3001, 'extra in the middle', 1, now());
INSERT INTO items VALUES (20001, 'extra past the end', 1, now());
UPDATE items SET name = NULL WHERE id = 404;
UPDATE items SET at = at + interval '1 microsecond' WHERE id = 506;
"#;

fn planted() -> BTreeMap<String, (String, Vec<String>)> {
    expected(&[
        ("102", "changed", &["qty"]),
        ("202", "missing", &[]),
        ("3001", "extra", &[]),
        ("20001", "extra", &[]),
        ("404", "changed", &["name"]),
        ("506", "changed", &["at"]),
    ])
}

fn setup() -> Migration {
    let m = Migration::new(
        PgOptions::new(),
        target_options(),
        &format!("{BENCH_SCHEMA}{ITEMS}"),
    )
    .poll(Duration::from_millis(100))
    // Small ranges: several windows and splits even on small tables.
    .env("FERRY_VALIDATE_CHUNK_ROWS", "1000")
    .env("FERRY_VALIDATE_LEAF_ROWS", "100")
    .env("FERRY_VALIDATE_ROWS_PER_SECOND", "0")
    // Validation waits for the applier rather than call lag a difference:
    // on a loaded 2-core machine it may trail the writer by a minute.
    .env("FERRY_VALIDATE_WAIT_SECONDS", "600");
    m.source
        .psql(&m.source_db, &pgsync::bench_data(20_000, 1_000))
        .unwrap();
    m
}

/// The keys a table's result lists as unsettled (single-column keys).
fn unsettled_keys(v: &Value) -> std::collections::BTreeSet<String> {
    v["unsettled"]
        .as_array()
        .expect("unsettled")
        .iter()
        .map(|k| match k.as_array().map(Vec::as_slice) {
            Some([one]) => one.as_str().expect("key text").to_owned(),
            _ => panic!("not a one-column key: {k}"),
        })
        .collect()
}

/// `ferry validate <args> --json`: exit code and the results by table.
fn validate(m: &Migration, args: &[&str]) -> (Option<i32>, BTreeMap<String, Value>, String) {
    let mut all = vec!["validate", "--json"];
    all.extend_from_slice(args);
    let ran = m.ferry(&all);
    let results = by_table(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.all()));
    (ran.code, results, ran.all())
}

#[test]
fn finds_every_planted_difference_under_writes_and_repairs_them() {
    let m = setup();
    // A steady application load: 150 transactions a second, 60% of them
    // tpcb-like (updating the one branch row). Unthrottled, the writer
    // outran a debug-build applier on a loaded CI machine by minutes
    // (one validation took 25 minutes), so the test measured the
    // machine, not validation.
    let mut writer = Writer::start_paced(&m.source_url, 20_000, WRITES_PER_SECOND);
    writer.wait_for(50, LONG).unwrap();
    let mut ferry = m.start("run");
    m.wait_streaming(&mut ferry);
    m.wait_caught_up();
    m.target.psql(&m.target_db, PLANT).unwrap();
    let seen = writer.committed();
    writer.wait_for(seen + 100, LONG).unwrap();

    // Every keyed table, while the writer keeps committing.
    let keyed = "public.branches,public.tellers,public.accounts,public.docs,public.items";
    let (code, results, out) = validate(&m, &["--tables", keyed]);
    assert_eq!(code, Some(2), "not clean exits 2:\n{out}");
    assert_eq!(results.len(), 5, "{out}");
    for (table, v) in &results {
        if table == "public.items" {
            assert_eq!(differences(v), planted(), "{out}");
            assert_eq!(v["clean"], false);
            assert_eq!(v["rows_checked"], 5000, "source rows of items");
        } else {
            assert_eq!(
                differences(v),
                BTreeMap::new(),
                "false positives in {table}:\n{out}"
            );
            // Every tpcb transaction updates one of the 1 branch and 10
            // tellers and 20 of the 1000 `docs` rows: those rows change
            // faster than any confirmation round (nothing is locked on the
            // source), so they may come out unsettled — never different,
            // and the table not clean. An account row may too when the
            // applier trails the writer (each round waits for it). The
            // quiet validation at the end finds them all clean.
            let unsettled = unsettled_keys(v);
            assert_eq!(v["clean"], unsettled.is_empty(), "{table}:\n{out}");
        }
        assert!(v["ranges"].as_u64().unwrap_or(0) >= 1, "{out}");
    }
    assert!(
        writer.committed() > seen + 100,
        "the writer kept committing during validation"
    );

    // The cutover refuses while a table is not clean (dry run: nothing changes).
    let cut = m.ferry(&["cutover", "--dry-run", "--require-validated", "1h"]);
    assert_eq!(cut.code, Some(2), "{}", cut.all());
    assert!(
        cut.stdout
            .contains("public.items is not clean (6 differences"),
        "{}",
        cut.all()
    );

    // Repair re-copies exactly the differing keys while writes go on.
    let (code, results, out) = validate(&m, &["--tables", "items", "--repair"]);
    assert_eq!(code, Some(0), "{out}\n{}", ferry.log());
    let items = &results["public.items"];
    assert_eq!(differences(items), planted(), "{out}");
    assert_eq!(items["repaired"], 6, "{out}");
    assert_eq!(items["clean"], true, "{out}");
    assert!(
        ferry.log().contains("applier paused by the control API")
            && ferry.log().contains("applier resumed by the control API"),
        "the repair paused and resumed the running applier:\n{}",
        ferry.log()
    );
    let (code, results, out) = validate(&m, &["--tables", "items"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(differences(&results["public.items"]), BTreeMap::new());

    // Lag is never a difference: with the applier paused, a source change
    // not yet applied makes validation wait (and give up saying why), not
    // report the key; once resumed, the table validates clean.
    let paused = m.ferry(&["pause"]);
    assert_eq!(paused.code, Some(0), "{}", paused.all());
    m.source
        .psql(&m.source_db, "UPDATE items SET qty = 999 WHERE id = 600")
        .unwrap();
    let mut cmd = m.cmd();
    cmd.env("FERRY_VALIDATE_WAIT_SECONDS", "2")
        .args(["validate", "--tables", "items"]);
    let waited = ferry_e2e::run(&mut cmd).unwrap();
    assert_eq!(waited.code, Some(1), "{}", waited.all());
    assert!(
        waited
            .stderr
            .contains("the applier did not pass source position"),
        "{}",
        waited.all()
    );
    assert!(!waited.stdout.contains("600"), "{}", waited.all());
    let resumed = m.ferry(&["resume"]);
    assert_eq!(resumed.code, Some(0), "{}", resumed.all());
    let (code, results, out) = validate(&m, &["--tables", "items"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(differences(&results["public.items"]), BTreeMap::new());

    // The running ferry validates on request and shows the result.
    let answer = m.control_post("/validate", r#"{"tables": ["public.items"]}"#);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"started\":true"), "{answer}");
    let before = results["public.items"]["finished_at"].clone();
    m.wait_until(
        &mut ferry,
        "the requested validation never finished",
        || {
            let s = m.status();
            s["validating"] == false
                && s["validation"].as_array().is_some_and(|v| {
                    v.iter().any(|t| {
                        t["table"] == "public.items"
                            && t["finished_at"] != before
                            && t["clean"] == true
                    })
                })
        },
    );
    let metrics = m.control_get("/metrics");
    assert!(
        metrics.contains("ferry_validation_clean{table=\"public.items\"} 1"),
        "{metrics}"
    );
    let text = m.ferry(&["status"]);
    assert!(text.stdout.contains("validation"), "{}", text.all());

    // Repair racing the writer on the same keys: a quarter of the accounts
    // differ on the target while the writer keeps updating random accounts;
    // after the repair and the stream, they all equal the source (checked
    // below once writes stop).
    // The planting races the applier's own updates of random accounts
    // (rows locked in another order): a deadlock that picks the planting as
    // its victim is retried.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match m.target.psql(
            &m.target_db,
            "UPDATE accounts SET filler = 'planted' WHERE aid <= 5000",
        ) {
            Ok(_) => break,
            Err(e) if attempt < 10 && format!("{e:?}").contains("deadlock detected") => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("planting: {e:?}"),
        }
    }
    let (code, results, out) = validate(&m, &["--tables", "accounts", "--repair"]);
    let accounts = &results["public.accounts"];
    let found = differences(accounts);
    // Rows the writer deleted, moved or updated since are not among them.
    assert!(!found.is_empty(), "{out}");
    assert!(
        found.iter().all(
            |(k, (kind, cols))| k.parse::<i64>().is_ok_and(|aid| aid <= 5000)
                && kind == "changed"
                && cols.contains(&"filler".to_owned())
        ),
        "{out}"
    );
    // Every difference is repaired, except a repaired key the writer kept
    // changing through every round of the re-check (with the applier
    // trailing the writer on a loaded machine, some may): that one is
    // listed unsettled — never left different, never called repaired —
    // and the table is not clean (exit 2) until it is quiet.
    let unsettled = unsettled_keys(accounts);
    let still_moving = found.keys().filter(|k| unsettled.contains(*k)).count();
    assert_eq!(
        accounts["repaired"].as_u64(),
        Some((found.len() - still_moving) as u64),
        "{out}"
    );
    assert_eq!(
        code,
        Some(if unsettled.is_empty() { 0 } else { 2 }),
        "{out}"
    );
    assert_eq!(accounts["clean"], unsettled.is_empty(), "{out}");

    // The stream kept running: once writes stop, everything is equal.
    let committed = writer.stop().unwrap();
    assert!(committed > seen + 100);
    let still = m.target_i64("SELECT count(*) FROM accounts WHERE filler = 'planted'");
    assert_eq!(still, Some(0), "planted rows left after the repair");
    let mut tables = BENCH_TABLES.to_vec();
    tables.push("items");
    m.compare_caught_up(&tables);

    // Quiet now: every table (also the keyless history) validates clean,
    // and the cutover accepts it.
    let (code, results, out) = validate(&m, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(results.len(), 6, "{out}");
    let cut = m.ferry(&["cutover", "--dry-run", "--require-validated", "1h"]);
    assert_eq!(cut.code, Some(0), "{}", cut.all());
    assert!(
        cut.stdout.contains("dry run: preconditions hold"),
        "{}",
        cut.all()
    );
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn a_running_ferry_validates_on_its_schedule() {
    let m = Migration::new(PgOptions::new(), target_options(), ITEMS)
        .poll(Duration::from_millis(100))
        .env("FERRY_VALIDATE_EVERY_SECONDS", "2");
    let mut ferry = m.start("run");
    m.wait_streaming(&mut ferry);
    m.target
        .psql(&m.target_db, "DELETE FROM items WHERE id = 4242")
        .unwrap();
    // No request: the schedule finds the missing row by itself.
    m.wait_until(
        &mut ferry,
        "no scheduled validation found the missing row",
        || {
            m.status()["validation"].as_array().is_some_and(|v| {
                v.iter().any(|t| {
                    t["table"] == "public.items"
                        && t["clean"] == false
                        && differences(t)
                            == BTreeMap::from([("4242".to_owned(), ("missing".to_owned(), vec![]))])
                })
            })
        },
    );
    assert!(
        ferry.log().contains("scheduled validation started"),
        "{}",
        ferry.log()
    );
    let metrics = m.control_get("/metrics");
    assert!(
        metrics.contains("ferry_validation_differences{table=\"public.items\"} 1"),
        "{metrics}"
    );
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}

/// An inheritance parent and its child are validated (and repaired) as
/// the tables they are: the parent's own rows only, so a row missing from
/// the child is the child's difference alone, even where the parent holds
/// the same key, and its repair restores the child's row without touching
/// the parent's row of that key.
#[test]
fn an_inheritance_parent_and_its_child_validate_apart() {
    let m = Migration::new(
        PgOptions::new(),
        target_options(),
        "CREATE TABLE animals (id int PRIMARY KEY, name text);
         CREATE TABLE dogs (bark text) INHERITS (animals);
         ALTER TABLE dogs ADD PRIMARY KEY (id);
         INSERT INTO animals SELECT g, 'a' || g FROM generate_series(1, 100) g;
         INSERT INTO dogs SELECT g, 'd' || g, 'woof' FROM generate_series(1, 50) g;",
    )
    .poll(Duration::from_millis(100));
    let mut ferry = m.start("run");
    m.wait_streaming(&mut ferry);
    m.wait_caught_up();
    m.target
        .psql(&m.target_db, "DELETE FROM ONLY dogs WHERE id = 7")
        .unwrap();
    let tables = "public.animals,public.dogs";
    let (code, results, out) = validate(&m, &["--tables", tables, "--repair"]);
    assert_eq!(code, Some(0), "{out}\n{}", ferry.log());
    assert_eq!(
        differences(&results["public.animals"]),
        BTreeMap::new(),
        "{out}"
    );
    assert_eq!(results["public.animals"]["rows_checked"], 100, "{out}");
    assert_eq!(
        differences(&results["public.dogs"]),
        expected(&[("7", "missing", &[])]),
        "{out}"
    );
    assert_eq!(results["public.dogs"]["repaired"], 1, "{out}");
    let (code, results, out) = validate(&m, &["--tables", tables]);
    assert_eq!(code, Some(0), "{out}");
    assert!(results.values().all(|v| v["clean"] == true), "{out}");
    let counts = pgsync::runtime().block_on(async {
        let c = pgsync::connect(&m.target_url).await.unwrap();
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM ONLY animals), (SELECT name FROM ONLY animals WHERE id = 7), (SELECT name FROM dogs WHERE id = 7)",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
        )
    });
    assert_eq!(counts, (100, "a7".to_owned(), "d7".to_owned()));
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}
