//! Change capture on real SQLite files (copies of the shared datasets),
//! with the application writing from other connections and threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_core::config::TablesConfig;
use ferry_core::value::Numeric;
use ferry_core::{Change, ChangeLogSeq, ErrorClass, Event, OldRow, Row, Value};
use ferry_sqlite::capture::{self, Installed};
use ferry_sqlite::catalog;
use ferry_sqlite::fence::Fence;
use ferry_sqlite::reader::ChangeReader;
use ferry_sqlite::snapshot;
use rusqlite::Connection;

/// A private copy of a dataset file, switched to WAL (the recommended mode).
fn copy_of(relative: &str) -> (tempfile::TempDir, PathBuf) {
    let src = ferry_testkit::dataset_file(relative).expect("dataset present");
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = dir.path().join(src.file_name().expect("file name"));
    std::fs::copy(&src, &dst).expect("copy dataset");
    let c = Connection::open(&dst).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    (dir, dst)
}

/// The application's connection: an ordinary read-write one with a busy timeout.
fn app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(20)).unwrap();
    c
}

fn install(path: &Path, only: &[&str]) -> Vec<Installed> {
    let mut conn = capture::open_read_write(path).unwrap();
    let filter = TablesConfig::default().filter().unwrap();
    let mut cat = catalog::read(&conn, &filter, &Default::default()).unwrap();
    if !only.is_empty() {
        cat.tables
            .retain(|t| only.contains(&t.schema.id.name.as_str()));
    }
    capture::install(&mut conn, &cat.tables).unwrap()
}

/// The changes with their entries' positions. A transaction holds
/// consecutive entries: its `final_position` is its first entry's
/// position minus one and its commit is at its last entry's position (a
/// snapshot at `S` holds exactly the entries whose `final_position < S`).
fn changes(events: &[Event<ChangeLogSeq>]) -> Vec<(ChangeLogSeq, Change)> {
    transactions(events).into_iter().flatten().collect()
}

/// [`changes`] grouped by transaction.
fn transactions(events: &[Event<ChangeLogSeq>]) -> Vec<Vec<(ChangeLogSeq, Change)>> {
    let mut out = Vec::new();
    let mut open: Option<(u64, Vec<(ChangeLogSeq, Change)>)> = None;
    for e in events {
        match e {
            Event::Begin { final_position, .. } => {
                assert!(open.is_none(), "Begin inside a transaction");
                open = Some((final_position.unwrap().0, Vec::new()));
            }
            Event::Change(c) => {
                let (first, txn) = open.as_mut().expect("change outside a transaction");
                let seq = ChangeLogSeq(*first + 1 + txn.len() as u64);
                txn.push((seq, c.clone()));
            }
            Event::Commit { position, .. } => {
                let (first, txn) = open.take().expect("Commit without Begin");
                assert_eq!(*position, ChangeLogSeq(first + txn.len() as u64));
                out.push(txn);
            }
            _ => {}
        }
    }
    assert!(open.is_none(), "a transaction left open");
    out
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn read_all(r: &mut ChangeReader, after: ChangeLogSeq) -> Vec<Event<ChangeLogSeq>> {
    let mut out = Vec::new();
    let mut pos = after;
    loop {
        let b = r.read_after(pos, 500).unwrap();
        out.extend(b.events);
        let Some(last) = b.last else { return out };
        assert!(last > pos);
        pos = last;
    }
}

#[test]
fn install_is_idempotent_and_cleanup_removes_everything() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let first = install(&path, &[]);
    assert_eq!(first.len(), 11);
    assert!(first.contains(&Installed::New("Track".into())), "{first:?}");
    let again = install(&path, &[]);
    assert!(
        again.iter().all(|i| matches!(i, Installed::Present(_))),
        "{again:?}"
    );
    let a = app(&path);
    let n: i64 = a
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_ferry\\_%' ESCAPE '\\' AND type = 'trigger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 33);
    // What plan shows is exactly what is installed.
    let conn = capture::open_read_write(&path).unwrap();
    let filter = TablesConfig::default().filter().unwrap();
    let mut cat = catalog::read(&conn, &filter, &Default::default()).unwrap();
    cat.tables.retain(|t| t.schema.id.name == "Genre");
    let planned = capture::install_statements(&cat.tables).unwrap();
    let ins: String = a
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = '_ferry_ins_Genre'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(planned.contains(&ins), "{planned:#?}\n{ins}");
    assert!(planned[0].contains("seq INTEGER PRIMARY KEY AUTOINCREMENT"));

    let mut rw = capture::open_read_write(&path).unwrap();
    capture::uninstall(&mut rw).unwrap();
    capture::uninstall(&mut rw).unwrap();
    let left: i64 = a
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_ferry\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    a.execute("INSERT INTO Genre(GenreId, Name) VALUES (99, 'Polka')", [])
        .unwrap();
}

#[test]
fn every_storage_class_round_trips_exactly() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let a = app(&path);
    a.execute_batch(
        "CREATE TABLE samples(id INTEGER PRIMARY KEY, r REAL, b BLOB, t TEXT, n NUMERIC(10,2));\
         INSERT INTO samples VALUES (0, 1.5, x'00', 'seed', 1.25);",
    )
    .unwrap();
    install(&path, &["samples", "Track"]);
    let reals = [
        0.1,
        1.0 / 3.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -2.5e-300,
        123_456_789.123_456_79,
        -0.000_123_456_789_012_345_68,
        f64::INFINITY,
    ];
    for (i, r) in reals.iter().enumerate() {
        a.execute(
            "INSERT INTO samples VALUES (?1, ?2, ?3, ?4, 0.99)",
            rusqlite::params![
                i as i64 + 1,
                r,
                vec![0u8, 255, i as u8, 0],
                "é\"'\u{1F600}\n"
            ],
        )
        .unwrap();
    }
    a.execute(
        "INSERT INTO Track VALUES (9001, 'Song \"q\" ''x''', 1, 1, NULL, NULL, 1000, 9223372036854775807, 0.99)",
        [],
    )
    .unwrap();
    a.execute(
        "UPDATE Track SET TrackId = 9002, Name = 'Renamed' WHERE TrackId = 9001",
        [],
    )
    .unwrap();
    a.execute("UPDATE Track SET Milliseconds = 1 WHERE TrackId = 1", [])
        .unwrap();
    a.execute("DELETE FROM Track WHERE TrackId = 9002", [])
        .unwrap();

    let mut r = ChangeReader::open(&path).unwrap();
    let events = read_all(&mut r, ChangeLogSeq(0));
    let relations: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Relation(s) => Some(s.id.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(relations, ["samples", "Track"]);
    let ch = changes(&events);
    assert_eq!(ch.len(), reals.len() + 4);
    assert_eq!(
        ch.iter().map(|(p, _)| p.0).collect::<Vec<_>>(),
        (1..=ch.len() as u64).collect::<Vec<_>>()
    );
    for (i, want) in reals.iter().enumerate() {
        let Change::Insert { new, .. } = &ch[i].1 else {
            panic!("{:?}", ch[i])
        };
        let Value::Float8(got) = new.values[1] else {
            panic!("{new:?}")
        };
        assert_eq!(got.to_bits(), want.to_bits(), "real #{i}");
        assert_eq!(new.values[2], Value::Bytes(vec![0, 255, i as u8, 0]));
        assert_eq!(new.values[3], text("é\"'\u{1F600}\n"));
        assert_eq!(
            new.values[4],
            Value::Numeric(Numeric::parse("0.99").unwrap())
        );
    }
    let n = reals.len();
    let track_id = ferry_core::TableId::new("main", "Track");
    assert_eq!(
        ch[n].1,
        Change::Insert {
            table: track_id.clone(),
            new: Row::new(vec![
                Value::Int8(9001),
                text("Song \"q\" 'x'"),
                Value::Int8(1),
                Value::Int8(1),
                Value::Null,
                Value::Null,
                Value::Int8(1000),
                Value::Int8(i64::MAX),
                Value::Numeric(Numeric::parse("0.99").unwrap()),
            ]),
        }
    );
    let Change::Update {
        old: Some(OldRow::Key(old)),
        new,
        ..
    } = &ch[n + 1].1
    else {
        panic!("key change carries the old key: {:?}", ch[n + 1])
    };
    assert_eq!(old.values[0], Value::Int8(9001));
    assert_eq!(old.values[1], Value::Null);
    assert_eq!(
        (&new.values[0], &new.values[1]),
        (&Value::Int8(9002), &text("Renamed"))
    );
    let Change::Update { old: None, new, .. } = &ch[n + 2].1 else {
        panic!("same key: no old image: {:?}", ch[n + 2])
    };
    assert_eq!(new.values[0], Value::Int8(1));
    assert_eq!(
        new.values[1],
        text("For Those About To Rock (We Salute You)")
    );
    assert_eq!(new.values[6], Value::Int8(1));
    let Change::Delete {
        old: OldRow::Key(old),
        ..
    } = &ch[n + 3].1
    else {
        panic!("{:?}", ch[n + 3])
    };
    assert_eq!(old.values[0], Value::Int8(9002));
}

/// Replays snapshot + stream for Artist into a map, as the target would.
fn replay(map: &mut BTreeMap<i64, String>, c: &Change) {
    let id = |r: &Row| match r.values[0] {
        Value::Int8(i) => i,
        ref v => panic!("{v:?}"),
    };
    let name = |r: &Row| match &r.values[1] {
        Value::Text(s) => s.clone(),
        v => panic!("{v:?}"),
    };
    match c {
        Change::Insert { new, .. } => {
            map.insert(id(new), name(new));
        }
        Change::Update { old, new, .. } => {
            if let Some(o) = old {
                map.remove(&id(o.row()));
            }
            map.insert(id(new), name(new));
        }
        Change::Delete { old, .. } => {
            map.remove(&id(old.row()));
        }
        Change::Truncate { .. } => unreachable!(),
    }
}

fn artists(c: &Connection) -> BTreeMap<i64, String> {
    c.prepare("SELECT ArtistId, Name FROM Artist")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn snapshot_hand_off_is_exact_while_the_application_writes() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    hand_off_is_exact(&path);
}

#[test]
fn snapshot_hand_off_is_exact_in_rollback_journal_mode() {
    let (d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let mode: String = app(&path)
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    hand_off_is_exact(&path);
    // The scratch copy is gone.
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ferry-snapshot"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn hand_off_is_exact(path: &Path) {
    let path = path.to_path_buf();
    install(&path, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started) = std::sync::mpsc::channel();
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let a = app(&path);
            let mut i = 0i64;
            while !stop.load(Ordering::SeqCst) || i < 300 {
                let id = 10_000 + i;
                a.execute(
                    "INSERT INTO Artist(ArtistId, Name) VALUES (?1, ?2)",
                    rusqlite::params![id, format!("artist {id}")],
                )
                .unwrap();
                if i % 3 == 1 {
                    a.execute(
                        "UPDATE Artist SET Name = Name || ' (renamed)' WHERE ArtistId = ?1",
                        [id - 1],
                    )
                    .unwrap();
                }
                if i % 5 == 4 {
                    a.execute("DELETE FROM Artist WHERE ArtistId = ?1", [id - 2])
                        .unwrap();
                }
                if i % 7 == 6 {
                    // A multi-row transaction.
                    a.execute_batch(&format!(
                        "BEGIN; UPDATE Artist SET Name = 'batch' WHERE ArtistId IN ({}, {});\
                         UPDATE Artist SET ArtistId = {} WHERE ArtistId = {}; COMMIT;",
                        id,
                        id - 1,
                        id + 500_000,
                        id - 3
                    ))
                    .unwrap();
                }
                if i == 100 {
                    started_tx.send(()).unwrap();
                }
                i += 1;
            }
            i
        })
    };
    started.recv().unwrap();
    let mut target: BTreeMap<i64, String> = BTreeMap::new();
    let scratch = path.parent().unwrap().to_path_buf();
    let position = snapshot::read_auto(&path, &scratch, |schema, row| {
        if schema.id.name == "Artist" {
            replay(
                &mut target,
                &Change::Insert {
                    table: schema.id.clone(),
                    new: row,
                },
            );
        }
        Ok(())
    })
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(position.0 > 0, "the snapshot ran while the writer wrote");
    let snapshot_state = target.clone();

    let mut r = ChangeReader::open(&path).unwrap();
    let ch = changes(&read_all(&mut r, ChangeLogSeq(0)));
    assert!(ch.iter().any(|(p, _)| *p <= position) && ch.iter().any(|(p, _)| *p > position));
    // The snapshot is exactly the original table plus the log up to its
    // position (no change in both) …
    let original = artists(
        &Connection::open(ferry_testkit::dataset_file("chinook/Chinook_Sqlite.sqlite").unwrap())
            .unwrap(),
    );
    let mut upto = original;
    for (_, c) in ch.iter().filter(|(p, _)| *p <= position) {
        replay(&mut upto, c);
    }
    assert_eq!(
        snapshot_state, upto,
        "snapshot = original + log[..=position]"
    );
    // … and the snapshot plus the log after it is the source (no change in neither).
    let a = app(&path);
    let ch: Vec<_> = ch.into_iter().filter(|(p, _)| *p > position).collect();
    assert!(written > 100);
    for (_, c) in &ch {
        replay(&mut target, c);
    }
    let source = artists(&a);
    assert!(source.len() > 275);
    assert_eq!(target, source, "snapshot + stream equals the source");
    assert_eq!(source.get(&1).map(String::as_str), Some("AC/DC"));
}

#[test]
fn table_rebuild_stops_with_an_operator_error() {
    let (_d, path) = copy_of("sakila-sqlite/sakila.db");
    install(&path, &["actor", "category"]);
    let a = app(&path);
    a.execute(
        "INSERT INTO actor VALUES (500, 'ANN', 'LEE', '2024-01-01 00:00:00')",
        [],
    )
    .unwrap();
    let mut r = ChangeReader::open(&path).unwrap();
    let b = r.read_after(ChangeLogSeq(0), 100).unwrap();
    assert_eq!(b.last, Some(ChangeLogSeq(1)));
    // SQLite's 12-step ALTER TABLE procedure (make last_update nullable).
    a.execute_batch(
        "PRAGMA foreign_keys=OFF; PRAGMA legacy_alter_table=ON; BEGIN;\
         CREATE TABLE new_actor (actor_id INTEGER PRIMARY KEY AUTOINCREMENT, first_name VARCHAR(45) NOT NULL,\
           last_name VARCHAR(45) NOT NULL, last_update TIMESTAMP);\
         INSERT INTO new_actor SELECT * FROM actor;\
         DROP TABLE actor;\
         ALTER TABLE new_actor RENAME TO actor;\
         COMMIT;",
    )
    .unwrap();
    a.execute(
        "UPDATE actor SET first_name = 'LOST' WHERE actor_id = 1",
        [],
    )
    .unwrap();
    a.execute(
        "INSERT INTO category(category_id, name, last_update) VALUES (100, 'Opera', '2024-01-01 00:00:00')",
        [],
    )
    .unwrap();
    let err = r.read_after(ChangeLogSeq(1), 100).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Operator);
    let msg = err.to_string();
    assert!(
        msg.contains("main.actor was rebuilt or ferry's triggers on it were dropped"),
        "{msg}"
    );
    assert!(
        msg.contains("changes written since then were not captured"),
        "{msg}"
    );
    assert!(msg.contains("`ferry cleanup`, then `ferry run`"), "{msg}");
    // The snapshot refuses too: the stream after it would miss actor's changes.
    let snap = snapshot::read(&path, |_, _| Ok(())).unwrap_err();
    assert!(
        snap.to_string().contains("main.actor was rebuilt"),
        "{snap}"
    );
    // Installing again does not paper over the gap either.
    let mut conn = capture::open_read_write(&path).unwrap();
    let filter = TablesConfig::default().filter().unwrap();
    let mut cat = catalog::read(&conn, &filter, &Default::default()).unwrap();
    cat.tables.retain(|t| t.schema.id.name == "actor");
    let e = capture::install(&mut conn, &cat.tables).unwrap_err();
    assert!(e.to_string().contains("main.actor was rebuilt"), "{e}");
}

#[test]
fn add_column_is_carried_and_rename_column_stops() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    install(&path, &["Artist"]);
    let a = app(&path);
    let mut r = ChangeReader::open(&path).unwrap();
    a.execute("INSERT INTO Artist VALUES (900, 'Before')", [])
        .unwrap();
    let b = r.read_after(ChangeLogSeq(0), 100).unwrap();
    assert_eq!(changes(&b.events).len(), 1);
    // The application adds a column and writes with it before ferry looks.
    a.execute_batch("ALTER TABLE Artist ADD COLUMN Country TEXT DEFAULT 'n/a'")
        .unwrap();
    a.execute(
        "INSERT INTO Artist(ArtistId, Name, Country) VALUES (901, 'Kiri', 'NZ')",
        [],
    )
    .unwrap();
    a.execute("UPDATE Artist SET Country = 'AU' WHERE ArtistId = 1", [])
        .unwrap();
    let b = r.read_after(ChangeLogSeq(1), 100).unwrap();
    assert_eq!(b.added.len(), 1);
    assert_eq!(
        (b.added[0].column.as_str(), b.added[0].pg_type.as_str()),
        ("Country", "text")
    );
    // The new schema comes before the first change (after its Begin).
    let Some(Event::Relation(schema)) = b
        .events
        .iter()
        .find(|e| matches!(e, Event::Relation(_) | Event::Change(_)))
    else {
        panic!("new schema first: {:?}", b.events)
    };
    assert_eq!(schema.columns.len(), 3);
    assert_eq!(schema.columns[2].name, "Country");
    let ch = changes(&b.events);
    assert_eq!(
        ch[0].1,
        Change::Insert {
            table: schema.id.clone(),
            new: Row::new(vec![Value::Int8(901), text("Kiri"), text("NZ")]),
        }
    );
    let Change::Update { new, .. } = &ch[1].1 else {
        panic!("{:?}", ch[1])
    };
    assert_eq!(new.values, vec![Value::Int8(1), text("AC/DC"), text("AU")]);
    // After the carry the triggers record the new column directly.
    a.execute("INSERT INTO Artist VALUES (902, 'After', 'FR')", [])
        .unwrap();
    let b = r.read_after(ChangeLogSeq(3), 100).unwrap();
    assert!(b.added.is_empty());
    let Change::Insert { new, .. } = &changes(&b.events)[0].1 else {
        panic!()
    };
    assert_eq!(new.values[2], text("FR"));
    // SQLite itself refuses DROP COLUMN while ferry's triggers use the column.
    let e = a
        .execute_batch("ALTER TABLE Artist DROP COLUMN Country")
        .unwrap_err();
    assert!(e.to_string().contains("no such column"), "{e}");
    // Anything else stops, naming the table, the change and the fix.
    a.execute_batch("ALTER TABLE Artist RENAME COLUMN Name TO Title")
        .unwrap();
    a.execute("INSERT INTO Artist VALUES (903, 'x', 'y')", [])
        .unwrap();
    let err = r.read_after(ChangeLogSeq(4), 100).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("main.\"Artist\" changed schema: column Name is now named Title"),
        "{msg}"
    );
    assert!(msg.contains("only with ALTER TABLE … ADD COLUMN"), "{msg}");
}

#[test]
fn trim_lag_and_restart() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    install(&path, &["Genre"]);
    let a = app(&path);
    for i in 0..10 {
        a.execute(
            "INSERT INTO Genre(GenreId, Name) VALUES (?1, ?2)",
            rusqlite::params![100 + i, format!("g{i}")],
        )
        .unwrap();
    }
    let mut r = ChangeReader::open(&path).unwrap();
    let lag = r.lag(ChangeLogSeq(4)).unwrap();
    assert_eq!((lag.head, lag.entries), (ChangeLogSeq(10), 6));
    assert!(lag.seconds >= 0.0 && lag.seconds < 60.0, "{lag:?}");
    assert_eq!(r.lag(ChangeLogSeq(10)).unwrap().seconds, 0.0);
    assert_eq!(r.trim(ChangeLogSeq(4)).unwrap(), 4);
    let left: i64 = a
        .query_row("SELECT count(*) FROM _ferry_changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 6);
    let err = r.read_after(ChangeLogSeq(3), 100).unwrap_err();
    assert!(
        err.to_string()
            .contains("position 3 is behind the change log, which was trimmed up to 4"),
        "{err}"
    );
    // A restarted reader resumes exactly after the checkpoint.
    drop(r);
    let mut r = ChangeReader::open(&path).unwrap();
    let ch = changes(&r.read_after(ChangeLogSeq(4), 100).unwrap().events);
    assert_eq!(ch.len(), 6);
    assert_eq!(ch[0].0, ChangeLogSeq(5));
    let Change::Insert { new, .. } = &ch[0].1 else {
        panic!()
    };
    assert_eq!(new.values, vec![Value::Int8(104), text("g4")]);
    // Trimming everything never reuses a position.
    assert_eq!(r.trim(ChangeLogSeq(10)).unwrap(), 6);
    a.execute("DELETE FROM Genre WHERE GenreId = 100", [])
        .unwrap();
    let ch = changes(&r.read_after(ChangeLogSeq(10), 100).unwrap().events);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].0, ChangeLogSeq(11));
}

#[test]
fn fence_holds_writers_until_released() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    install(&path, &["MediaType"]);
    let a = app(&path);
    a.execute("INSERT INTO MediaType VALUES (10, 'Tape')", [])
        .unwrap();
    let fence = Fence::acquire(&path, Duration::from_secs(5)).unwrap();
    assert_eq!(fence.final_position(), ChangeLogSeq(1));
    let (done_tx, done) = std::sync::mpsc::channel();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let w = app(&path);
            let res = w.execute("INSERT INTO MediaType VALUES (11, 'Vinyl')", []);
            done_tx.send(res.map_err(|e| e.to_string())).unwrap();
        })
    };
    // The writer waits on the lock (its busy timeout is 20 s) …
    assert!(
        done.recv_timeout(Duration::from_millis(800)).is_err(),
        "the writer committed while fenced"
    );
    // … while ferry still reads up to the final position.
    let mut r = ChangeReader::open(&path).unwrap();
    let b = r.read_after(ChangeLogSeq(0), 100).unwrap();
    assert_eq!(b.last, Some(fence.final_position()));
    fence.release().unwrap();
    assert_eq!(done.recv_timeout(Duration::from_secs(20)).unwrap(), Ok(1));
    writer.join().unwrap();
    let ch = changes(&r.read_after(ChangeLogSeq(1), 100).unwrap().events);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].0, ChangeLogSeq(2));

    // The cutover variant removes capture inside the fence.
    let fence = Fence::acquire(&path, Duration::from_secs(5)).unwrap();
    assert_eq!(fence.final_position(), ChangeLogSeq(2));
    fence.remove_capture_and_release().unwrap();
    a.execute("INSERT INTO MediaType VALUES (12, 'Cassette')", [])
        .unwrap();
    let left: i64 = a
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '\\_ferry\\_%' ESCAPE '\\'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn tables_wider_than_a_function_call_are_captured() {
    // 1200 columns: more than SQLite allows in one json_array() call.
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let a = app(&path);
    let cols: Vec<String> = (1..1200).map(|i| format!("c{i} TEXT")).collect();
    a.execute_batch(&format!(
        "CREATE TABLE wide(id INTEGER PRIMARY KEY, {})",
        cols.join(", ")
    ))
    .unwrap();
    install(&path, &["wide"]);
    a.execute(
        "INSERT INTO wide(id, c1, c1150, c1199) VALUES (1, 'a', 'b', 'c')",
        [],
    )
    .unwrap();
    a.execute("UPDATE wide SET c1150 = 'z' WHERE id = 1", [])
        .unwrap();
    let mut r = ChangeReader::open(&path).unwrap();
    let ch = changes(&read_all(&mut r, ChangeLogSeq(0)));
    let Change::Insert { new, .. } = &ch[0].1 else {
        panic!()
    };
    assert_eq!(new.values.len(), 1200);
    assert_eq!(
        (
            &new.values[0],
            &new.values[1],
            &new.values[1150],
            &new.values[1199],
            &new.values[2]
        ),
        (
            &Value::Int8(1),
            &text("a"),
            &text("b"),
            &text("c"),
            &Value::Null
        )
    );
    let Change::Update { new, .. } = &ch[1].1 else {
        panic!()
    };
    assert_eq!(new.values[1150], text("z"));
}

/// What the plan's REPLACE warning says, shown on SQLite itself.
#[test]
fn replace_through_a_unique_index_is_captured_only_with_recursive_triggers() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let a = app(&path);
    a.execute_batch(
        "CREATE UNIQUE INDEX genre_name ON Genre(Name); INSERT INTO Genre VALUES (50, 'Polka'), (51, 'Ska');",
    )
    .unwrap();
    install(&path, &["Genre"]);
    // Replacing by name removes row 50 (then 51) through the unique index.
    a.execute("INSERT OR REPLACE INTO Genre VALUES (100, 'Polka')", [])
        .unwrap();
    a.execute_batch("PRAGMA recursive_triggers=ON").unwrap();
    a.execute("INSERT OR REPLACE INTO Genre VALUES (101, 'Ska')", [])
        .unwrap();
    let mut r = ChangeReader::open(&path).unwrap();
    let ops: Vec<String> = changes(&read_all(&mut r, ChangeLogSeq(0)))
        .iter()
        .map(|(_, c)| match c {
            Change::Insert { new, .. } => format!("I {:?}", new.values[0]),
            Change::Delete { old, .. } => format!("D {:?}", old.row().values[0]),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(ops, ["I Int8(100)", "D Int8(51)", "I Int8(101)"]);
}

#[test]
fn install_after_a_restart_carries_columns_added_meanwhile() {
    let (_d, path) = copy_of("sakila-sqlite/sakila.db");
    install(&path, &["language"]);
    let a = app(&path);
    // ferry is stopped; the application adds a column and writes with it.
    a.execute_batch("ALTER TABLE language ADD COLUMN iso_code CHAR(2)")
        .unwrap();
    a.execute(
        "INSERT INTO language(language_id, name, last_update, iso_code) VALUES (7, 'Maori', '2024-05-01 10:00:00', 'mi')",
        [],
    )
    .unwrap();
    let again = install(&path, &["language"]);
    let [Installed::Carried(table, added)] = again.as_slice() else {
        panic!("{again:?}")
    };
    assert_eq!(table, "language");
    assert_eq!(
        (added[0].column.as_str(), added[0].pg_type.as_str()),
        ("iso_code", "text")
    );
    // The snapshot sees the carried schema; the entry has the new column.
    let mut width = 0;
    snapshot::read(&path, |s, row| {
        width = s.columns.len();
        assert_eq!(row.values.len(), 4);
        Ok(())
    })
    .unwrap();
    assert_eq!(width, 4);
    let mut r = ChangeReader::open(&path).unwrap();
    let ch = changes(&read_all(&mut r, ChangeLogSeq(0)));
    let Change::Insert { new, .. } = &ch[0].1 else {
        panic!("{ch:?}")
    };
    assert_eq!(new.values[0], Value::Int8(7));
    assert_eq!(new.values[1], text("Maori"));
    assert_eq!(new.values[3], text("mi"));
}

/// The whole cycle under a live writer: snapshot, stream, trim after each
/// batch, and an ADD COLUMN the application runs mid-stream. The writer's
/// statements all succeed (ferry never fails them) and the replayed target
/// equals the source, new column included.
#[test]
fn live_writer_with_add_column_mid_stream_ends_equal() {
    let (_d, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    install(&path, &["Artist", "Genre"]);
    let (added_tx, added_rx) = std::sync::mpsc::channel();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let a = app(&path);
            for i in 0..400i64 {
                let id = 20_000 + i;
                if i == 200 {
                    a.execute_batch("ALTER TABLE Artist ADD COLUMN Country TEXT")
                        .unwrap();
                    added_tx.send(()).unwrap();
                }
                if i < 200 {
                    a.execute(
                        "INSERT INTO Artist(ArtistId, Name) VALUES (?1, ?2)",
                        rusqlite::params![id, format!("a{i}")],
                    )
                    .unwrap();
                } else {
                    a.execute(
                        "INSERT INTO Artist(ArtistId, Name, Country) VALUES (?1, ?2, ?3)",
                        rusqlite::params![id, format!("a{i}"), format!("c{i}")],
                    )
                    .unwrap();
                    // Rows written before the column existed get one too.
                    a.execute(
                        "UPDATE Artist SET Country = 'old' WHERE ArtistId = ?1",
                        [id - 190],
                    )
                    .unwrap();
                }
                if i % 4 == 3 {
                    a.execute(
                        "UPDATE Artist SET Name = Name || '!' WHERE ArtistId = ?1",
                        [id - 1],
                    )
                    .unwrap();
                }
                if i % 9 == 8 {
                    a.execute("DELETE FROM Artist WHERE ArtistId = ?1", [id - 5])
                        .unwrap();
                }
            }
        })
    };
    // Target: ArtistId → row values, widened when a Relation adds columns.
    let mut target: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    let key = |r: &Row| match r.values[0] {
        Value::Int8(i) => i,
        ref v => panic!("{v:?}"),
    };
    let mut pos = snapshot::read(&path, |s, row| {
        if s.id.name == "Artist" {
            target.insert(key(&row), row.values);
        }
        Ok(())
    })
    .unwrap();
    let mut r = ChangeReader::open(&path).unwrap();
    let mut added = Vec::new();
    let mut finished = false;
    loop {
        let done = writer.is_finished();
        let b = r.read_after(pos, 37).unwrap();
        added.extend(b.added);
        for e in &b.events {
            match e {
                Event::Relation(s) if s.id.name == "Artist" => {
                    for v in target.values_mut() {
                        v.resize(s.columns.len(), Value::Null);
                    }
                }
                Event::Change(Change::Insert { new, .. }) if new.values.len() >= 2 => {
                    target.insert(key(new), new.values.clone());
                }
                Event::Change(Change::Update { old, new, .. }) => {
                    if let Some(o) = old {
                        target.remove(&key(o.row()));
                    }
                    target.insert(key(new), new.values.clone());
                }
                Event::Change(Change::Delete { old, .. }) => {
                    target.remove(&key(old.row()));
                }
                _ => {}
            }
        }
        match b.last {
            Some(last) => {
                pos = last;
                r.trim(pos).unwrap();
            }
            None if finished => break,
            None => finished = done,
        }
    }
    writer.join().unwrap();
    added_rx.recv().unwrap();
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0].column, "Country");
    let a = app(&path);
    let source: BTreeMap<i64, Vec<Value>> = a
        .prepare("SELECT ArtistId, Name, Country FROM Artist")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                vec![
                    Value::Int8(r.get(0)?),
                    r.get::<_, Option<String>>(1)?
                        .map_or(Value::Null, Value::Text),
                    r.get::<_, Option<String>>(2)?
                        .map_or(Value::Null, Value::Text),
                ],
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(source.get(&20_015).map(|v| &v[2]), Some(&text("old")));
    assert_eq!(source.get(&20_399).map(|v| &v[2]), Some(&text("c399")));
    assert_eq!(target, source);
    let left: i64 = a
        .query_row("SELECT count(*) FROM _ferry_changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "every applied entry was trimmed");
}
