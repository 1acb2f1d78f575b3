//! The applier on application schemas: secondary unique, partial unique,
//! exclusion and deferrable constraints (source order), NOT NULL domains
//! (staging on base types), tables without a key with json columns and
//! target indexes. Real target PostgreSQL.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use ferry_apply::{Applier, ApplierConfig};
use ferry_core::config::ApplyConfig;
use ferry_core::{Event, Lsn, OldRow, Row, Value};

fn cfg() -> ApplierConfig {
    let apply = ApplyConfig {
        batch_rows: 10_000,
        batch_ms: 60_000,
        ..ApplyConfig::default()
    };
    ApplierConfig::new("main", &apply, false)
}

/// Run an applier over `events` with [`cfg`]; see [`common::run_events`].
async fn run_events(url: &str, events: Vec<Event<Lsn>>) -> (Vec<Lsn>, Applier<Lsn>) {
    common::run_events(url, cfg(), events).await
}

fn full(values: Vec<Value>) -> Option<OldRow> {
    Some(OldRow::Full(Row::new(values)))
}

fn i8(n: i64) -> Value {
    Value::Int8(n)
}

const USERS: &str = "
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text);
INSERT INTO users VALUES (1, 'old@x', 'one');
CREATE TABLE emails (id bigint PRIMARY KEY, user_id bigint NOT NULL, addr text, is_primary bool NOT NULL);
CREATE UNIQUE INDEX one_primary ON emails (user_id) WHERE is_primary;
INSERT INTO emails VALUES (1, 7, 'a', true), (2, 7, 'b', false);
CREATE TABLE bookings (id int PRIMARY KEY, room int, during int4range,
    EXCLUDE USING gist (during WITH &&));
INSERT INTO bookings VALUES (1, 1, '[1,10)');
CREATE TABLE slots (id int PRIMARY KEY, pos int UNIQUE DEFERRABLE INITIALLY IMMEDIATE);
INSERT INTO slots VALUES (1, 1), (2, 2);
";

#[tokio::test]
async fn freed_unique_values_reused_in_one_batch_apply_in_source_order() {
    let pg = server();
    let db = pg.create_database("order").unwrap();
    pg.psql(&db, USERS).unwrap();
    let url = pg.url(&db);
    let users = table(
        "users",
        vec![col("id", "int8"), col("email", "text"), col("name", "text")],
        vec![0],
    );
    let emails = table(
        "emails",
        vec![
            col("id", "int8"),
            col("user_id", "int8"),
            col("addr", "text"),
            col("is_primary", "bool"),
        ],
        vec![0],
    );
    let bookings = table(
        "bookings",
        vec![
            col("id", "int4"),
            col("room", "int4"),
            col("during", "int4range"),
        ],
        vec![0],
    );
    let slots = table(
        "slots",
        vec![col("id", "int4"), col("pos", "int4")],
        vec![0],
    );
    let mut ev: Vec<Event<Lsn>> = [users, emails, bookings, slots]
        .into_iter()
        .map(Event::Relation)
        .collect();
    ev.extend([
        // Free 'old@x' and take it for a new user, in one transaction.
        begin(),
        upd("users", None, vec![i8(1), txt("new@x"), Value::Unchanged]),
        ins("users", vec![i8(2), txt("old@x"), txt("two")]),
        commit(100),
        // Move the one primary address of user 7.
        begin(),
        upd(
            "emails",
            None,
            vec![i8(1), i8(7), Value::Unchanged, Value::Bool(false)],
        ),
        upd(
            "emails",
            None,
            vec![i8(2), i8(7), Value::Unchanged, Value::Bool(true)],
        ),
        commit(200),
        // Shrink booking 1, then book the freed range; then delete and
        // re-insert a key whose range another row takes meanwhile.
        begin(),
        upd(
            "bookings",
            None,
            vec![Value::Int4(1), Value::Int4(1), txt("[20,30)")],
        ),
        ins(
            "bookings",
            vec![Value::Int4(2), Value::Int4(1), txt("[1,10)")],
        ),
        del(
            "bookings",
            OldRow::Key(Row::new(vec![Value::Int4(2), Value::Null, Value::Null])),
        ),
        ins(
            "bookings",
            vec![Value::Int4(3), Value::Int4(1), txt("[1,10)")],
        ),
        commit(300),
        // Swap the positions of a deferrable unique constraint.
        begin(),
        upd("slots", None, vec![Value::Int4(1), Value::Int4(2)]),
        upd("slots", None, vec![Value::Int4(2), Value::Int4(1)]),
        commit(400),
        // The email comes back to user 1 through a key change.
        begin(),
        del(
            "users",
            OldRow::Key(Row::new(vec![i8(2), Value::Null, Value::Null])),
        ),
        upd(
            "users",
            Some(OldRow::Key(Row::new(vec![i8(1), Value::Null, Value::Null]))),
            vec![i8(10), txt("old@x"), Value::Unchanged],
        ),
        commit(500),
    ]);
    let (acks, applier) = run_events(&url, ev).await;
    assert_eq!(acks, vec![Lsn(500)], "one batch");
    let c = connect(&url).await;
    assert_eq!(
        rows(&c, "SELECT id::text, email, name FROM users ORDER BY id").await,
        vec!["10|old@x|one"]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT id::text, addr, is_primary::text FROM emails ORDER BY id"
        )
        .await,
        vec!["1|a|false", "2|b|true"]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT id::text, during::text FROM bookings ORDER BY id"
        )
        .await,
        vec!["1|[20,30)", "3|[1,10)"]
    );
    assert_eq!(
        rows(&c, "SELECT id::text, pos::text FROM slots ORDER BY id").await,
        vec!["1|2", "2|1"]
    );
    let stats = applier.stats();
    // users (2 + 2), emails (2), bookings (4): in source order; slots (its
    // only other constraint is deferrable) folded.
    assert_eq!(stats.source_order_changes.load(Ordering::Relaxed), 10);
    assert_eq!(stats.batches.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn not_null_domains_stage_on_base_types() {
    let pg = server();
    let db = pg.create_database("domains").unwrap();
    pg.psql(
        &db,
        "CREATE DOMAIN email AS text NOT NULL CHECK (VALUE LIKE '%@%');
         CREATE DOMAIN positive AS int NOT NULL CHECK (VALUE > 0);
         CREATE DOMAIN doc AS json NOT NULL;
         CREATE TABLE acct (id int PRIMARY KEY, mail email, n positive, body text NOT NULL, d doc);
         INSERT INTO acct SELECT g, 'u' || g || '@x', g, repeat('b', 5000) || g, '{}' FROM generate_series(1, 3) g;
         CREATE TABLE log (mail email, d doc, n int);
         INSERT INTO log VALUES ('a@x', '{\"a\": 1}', 1), ('a@x', '{\"a\": 1}', 1), ('b@x', '[]', 2);",
    )
    .unwrap();
    let url = pg.url(&db);
    let acct = table(
        "acct",
        vec![
            col("id", "int4"),
            col("mail", "text"),
            col("n", "int4"),
            col("body", "text"),
            col("d", "json"),
        ],
        vec![0],
    );
    let log = table(
        "log",
        vec![col("mail", "text"), col("d", "json"), col("n", "int4")],
        vec![],
    );
    let mut ev: Vec<Event<Lsn>> = vec![Event::Relation(acct), Event::Relation(log)];
    ev.extend([
        begin(),
        // Delete: non-key columns are NULL in the staged row.
        del(
            "acct",
            OldRow::Key(Row::new(vec![
                Value::Int4(1),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ])),
        ),
        // Unchanged TOAST: staged as NULL, kept on the target.
        upd(
            "acct",
            None,
            vec![
                Value::Int4(2),
                txt("new@x"),
                Value::Int4(20),
                Value::Unchanged,
                Value::Json("{\"k\": 2}".into()),
            ],
        ),
        ins(
            "acct",
            vec![
                Value::Int4(4),
                txt("d@x"),
                Value::Int4(4),
                txt("body4"),
                Value::Json("[4]".into()),
            ],
        ),
        // A table without a key with a domain over json: matched as text,
        // one of two duplicates changed.
        upd(
            "log",
            full(vec![
                txt("a@x"),
                Value::Json("{\"a\": 1}".into()),
                Value::Int4(1),
            ]),
            vec![txt("a@x"), Value::Json("{\"a\": 2}".into()), Value::Int4(1)],
        ),
        del(
            "log",
            OldRow::Full(Row::new(vec![
                txt("b@x"),
                Value::Json("[]".into()),
                Value::Int4(2),
            ])),
        ),
        commit(100),
    ]);
    let (acks, _applier) = run_events(&url, ev).await;
    assert_eq!(acks, vec![Lsn(100)]);
    let c = connect(&url).await;
    assert_eq!(
        rows(
            &c,
            "SELECT id::text, mail, n::text, length(body)::text, d::text FROM acct ORDER BY id"
        )
        .await,
        vec![
            "2|new@x|20|5001|{\"k\": 2}",
            "3|u3@x|3|5001|{}",
            "4|d@x|4|5|[4]"
        ]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT mail, d::text, n::text FROM log ORDER BY d::text"
        )
        .await,
        vec!["a@x|{\"a\": 1}|1", "a@x|{\"a\": 2}|1"]
    );
}

#[tokio::test]
async fn keyless_runs_and_indexed_matching() {
    let pg = server();
    let db = pg.create_database("keyless").unwrap();
    pg.psql(
        &db,
        "CREATE TABLE hist (tid int, aid int, delta int, note json);
         INSERT INTO hist SELECT g % 100, g, 0, NULL FROM generate_series(1, 20000) g;
         CREATE INDEX hist_aid ON hist (aid);
         ANALYZE hist;",
    )
    .unwrap();
    let url = pg.url(&db);
    let hist = table(
        "hist",
        vec![
            col("tid", "int4"),
            col("aid", "int4"),
            col("delta", "int4"),
            col("note", "json"),
        ],
        vec![],
    );
    let row = |tid: i32, aid: i32, delta: i32, note: Option<&str>| {
        vec![
            Value::Int4(tid),
            Value::Int4(aid),
            Value::Int4(delta),
            note.map_or(Value::Null, |n| Value::Json(n.into())),
        ]
    };
    let mut ev: Vec<Event<Lsn>> = vec![Event::Relation(hist)];
    ev.push(begin());
    for i in 0..300 {
        ev.push(ins("hist", row(1, 30_000 + i, i, None)));
    }
    for aid in 1..=200 {
        ev.push(upd(
            "hist",
            full(row(aid % 100, aid, 0, None)),
            row(aid % 100, aid, 1, Some("{\"u\": true}")),
        ));
    }
    for aid in 201..=400 {
        ev.push(del(
            "hist",
            OldRow::Full(Row::new(row(aid % 100, aid, 0, None))),
        ));
    }
    // Insert, update of what was just inserted, and its delete: in order.
    ev.push(ins("hist", row(5, 50_000, 7, Some("[1]"))));
    ev.push(upd(
        "hist",
        full(row(5, 50_000, 7, Some("[1]"))),
        row(5, 50_001, 7, Some("[1]")),
    ));
    ev.push(ins("hist", row(5, 50_000, 8, None)));
    ev.push(del(
        "hist",
        OldRow::Full(Row::new(row(5, 50_001, 7, Some("[1]")))),
    ));
    ev.push(commit(100));
    let c = connect(&url).await;
    let scans = "SELECT idx_scan::text FROM pg_stat_user_tables WHERE relname = 'hist'";
    let before: i64 = rows(&c, scans).await[0].parse().unwrap();
    let (acks, _applier) = run_events(&url, ev).await;
    assert_eq!(acks, vec![Lsn(100)]);
    assert_eq!(
        rows(
            &c,
            "SELECT count(*)::text, count(*) FILTER (WHERE delta = 1 AND note::text = '{\"u\": true}')::text,
                    count(*) FILTER (WHERE aid BETWEEN 201 AND 400)::text,
                    count(*) FILTER (WHERE aid >= 30000 AND aid < 30300)::text
             FROM hist"
        )
        .await,
        vec!["20101|200|0|300"]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT tid::text, aid::text, delta::text, coalesce(note::text, 'NULL') FROM hist WHERE aid >= 50000"
        )
        .await,
        vec!["5|50000|8|NULL"]
    );
    // Each update and delete found its row through the index on aid.
    wait_for(10, "index scans counted", || {
        let c = &c;
        async move {
            let now: i64 = rows(c, scans).await[0].parse().unwrap();
            now - before >= 402
        }
    })
    .await;
}
