//! `ferry plan` on real SQLite files (copies of the shared datasets).

use std::path::{Path, PathBuf};

use ferry_core::config::Config;
use ferry_core::plan::{CheckStatus, SourcePlan};

fn config(path: &Path) -> Config {
    let text = format!(
        "[source]\nurl = \"sqlite://{}\"\n[target]\nurl = \"postgres://ferry@127.0.0.1:1/target\"\n",
        path.display()
    );
    Config::from_parts(&text, "test", Vec::new()).expect("test config parses")
}

fn run_plan(path: &Path) -> SourcePlan {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(ferry_sqlite::plan(&config(path)))
        .expect("plan")
}

/// A private copy of a dataset file (the dataset is never touched).
fn copy_of(relative: &str) -> (tempfile::TempDir, PathBuf) {
    let src = ferry_testkit::dataset_file(relative).expect("dataset present");
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = dir.path().join(src.file_name().expect("file name"));
    std::fs::copy(&src, &dst).expect("copy dataset");
    (dir, dst)
}

fn check<'a>(plan: &'a SourcePlan, name: &str) -> &'a ferry_core::plan::Check {
    plan.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {:#?}", plan.checks))
}

fn table<'a>(plan: &'a SourcePlan, source: &str) -> &'a ferry_core::plan::TablePlan {
    plan.tables
        .iter()
        .find(|t| t.source == source)
        .unwrap_or_else(|| panic!("no table {source}"))
}

fn pg_type(t: &ferry_core::plan::TablePlan, col: &str) -> String {
    t.columns
        .iter()
        .find(|c| c.name == col)
        .unwrap_or_else(|| panic!("no column {col}"))
        .pg_type
        .clone()
}

#[test]
fn chinook_plans_eleven_tables() {
    let (_dir, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let plan = run_plan(&path);
    assert_eq!(plan.flavor, "sqlite");
    assert!(plan.version.starts_with("3."), "{}", plan.version);
    for name in ["file", "open read-only", "quick_check", "sqlite version"] {
        assert_eq!(check(&plan, name).status, CheckStatus::Pass, "{name}");
    }
    let jm = check(&plan, "journal_mode");
    assert_eq!(jm.status, CheckStatus::Warn);
    assert!(
        jm.fix
            .as_deref()
            .unwrap()
            .contains("PRAGMA journal_mode=WAL")
    );
    let others: Vec<_> = plan
        .checks
        .iter()
        .filter(|c| c.status != CheckStatus::Pass && c.name != "journal_mode")
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    assert_eq!(plan.tables.len(), 11);
    let track = table(&plan, "main.\"Track\"");
    assert_eq!(track.target, "public.\"Track\"");
    assert_eq!(track.row_estimate, Some(3503));
    assert_eq!(track.key, ["TrackId"]);
    assert_eq!(pg_type(track, "TrackId"), "bigint");
    assert_eq!(pg_type(track, "Name"), "text");
    assert_eq!(pg_type(track, "UnitPrice"), "numeric(10,2)");
    let invoice = table(&plan, "main.\"Invoice\"");
    assert_eq!(pg_type(invoice, "InvoiceDate"), "timestamp");
    assert_eq!(
        table(&plan, "main.\"PlaylistTrack\"").key,
        ["PlaylistId", "TrackId"]
    );
    for t in &plan.tables {
        assert!(!t.key.is_empty(), "{}", t.source);
    }
}

#[test]
fn sakila_plans_with_inferred_types() {
    let (_dir, path) = copy_of("sakila-sqlite/sakila.db");
    let before = std::fs::read(&path).unwrap();
    let plan = run_plan(&path);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "plan must not modify the file"
    );
    assert!(
        plan.checks.iter().all(|c| c.status != CheckStatus::Fail),
        "{:#?}",
        plan.checks
    );
    assert_eq!(plan.tables.len(), 16, "sqlite_sequence excluded");
    assert!(
        plan.tables
            .iter()
            .all(|t| t.source != "main.sqlite_sequence")
    );
    let customer = table(&plan, "main.customer");
    assert_eq!(customer.row_estimate, Some(599));
    assert_eq!(pg_type(customer, "active"), "boolean");
    assert_eq!(pg_type(customer, "create_date"), "timestamp");
    let film = table(&plan, "main.film");
    assert_eq!(pg_type(film, "rental_rate"), "numeric(4,2)");
    assert_eq!(pg_type(film, "release_year"), "bigint");
    assert_eq!(pg_type(film, "rating"), "text");
    assert_eq!(pg_type(film, "special_features"), "text");
    assert_eq!(pg_type(table(&plan, "main.staff"), "picture"), "bytea");
    assert_eq!(
        pg_type(table(&plan, "main.rental"), "return_date"),
        "timestamp"
    );
    assert_eq!(table(&plan, "main.film_actor").key, ["actor_id", "film_id"]);
}

#[test]
fn missing_file_fails_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.db");
    let plan = run_plan(&path);
    let c = check(&plan, "file");
    assert_eq!(c.status, CheckStatus::Fail);
    assert!(c.detail.contains(&path.display().to_string()), "{c:?}");
    assert!(c.fix.is_some());
    assert!(!path.exists(), "read-only open must not create the file");
}

#[test]
fn corrupt_file_fails_quick_check() {
    let (_dir, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let mut bytes = std::fs::read(&path).unwrap();
    for (i, b) in bytes.iter_mut().take(4096).enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(&path, &bytes).unwrap();
    let plan = run_plan(&path);
    let c = check(&plan, "quick_check");
    assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
    assert!(c.detail.contains("not a database"), "{c:?}");
    assert!(c.fix.as_deref().unwrap().contains("integrity_check"));
    assert!(plan.tables.is_empty());
}

#[test]
fn unparsable_datetime_is_reported_by_rowid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE events (id INTEGER PRIMARY KEY, at DATETIME, n INT);
             INSERT INTO events (id, at, n) VALUES (1, '2024-01-01 10:00:00', 1), (2, '2024-01-02 11:00:00', 2),
                 (41, 'next tuesday', 3), (42, NULL, 4);
             CREATE TABLE nokey (a TEXT);
             CREATE TABLE _ferry_changes (seq INTEGER PRIMARY KEY);",
        )
        .unwrap();
    }
    let plan = run_plan(&path);
    assert_eq!(check(&plan, "journal_mode").status, CheckStatus::Pass);
    let c = check(&plan, "values main.events.at");
    assert_eq!(c.status, CheckStatus::Warn);
    assert!(c.detail.contains("rowid 41"), "{c:?}");
    assert!(
        !c.detail.contains("next tuesday"),
        "no row values in messages: {c:?}"
    );
    assert_eq!(pg_type(table(&plan, "main.events"), "at"), "text");
    assert_eq!(
        check(&plan, "primary key main.nokey").status,
        CheckStatus::Warn
    );
    assert_eq!(plan.tables.len(), 2, "ferry's own tables are excluded");
}

#[test]
fn plan_says_what_change_capture_installs_and_finds_a_rebuilt_table() {
    let (_dir, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    let plan = run_plan(&path);
    assert_eq!(check(&plan, "write access").status, CheckStatus::Pass);
    let cc = check(&plan, "change capture");
    assert_eq!(cc.status, CheckStatus::Pass);
    for part in [
        "tables _ferry_changes, _ferry_tables, _ferry_state, _ferry_epoch",
        "AFTER INSERT/UPDATE/DELETE triggers _ferry_ins_T, _ferry_upd_T, _ferry_del_T on 11 table(s)",
        "Album, Artist, Customer",
        "ferry cutover and ferry cleanup remove them",
    ] {
        assert!(cc.detail.contains(part), "{part}: {}", cc.detail);
    }
    let jm = check(&plan, "journal_mode");
    assert!(jm.detail.contains("a read blocks writers"), "{}", jm.detail);
    assert!(jm.detail.contains("VACUUM INTO copy"), "{}", jm.detail);

    // Installed, then the application rebuilds Genre: plan fails with the fix.
    let mut conn = ferry_sqlite::capture::open_read_write(&path).unwrap();
    let filter = ferry_core::config::TablesConfig::default()
        .filter()
        .unwrap();
    let cat = ferry_sqlite::catalog::read(&conn, &filter, &Default::default()).unwrap();
    ferry_sqlite::capture::install(&mut conn, &cat.tables).unwrap();
    let cc = check(&run_plan(&path), "change capture").clone();
    assert_eq!(cc.status, CheckStatus::Pass, "{}", cc.detail);
    assert!(
        cc.detail.contains("installed for 11 table(s)"),
        "{}",
        cc.detail
    );
    conn.execute_batch(
        "PRAGMA foreign_keys=OFF; PRAGMA legacy_alter_table=ON; BEGIN;\
         CREATE TABLE g2(GenreId INTEGER NOT NULL PRIMARY KEY, Name NVARCHAR(200));\
         INSERT INTO g2 SELECT * FROM Genre; DROP TABLE Genre; ALTER TABLE g2 RENAME TO Genre; COMMIT;",
    )
    .unwrap();
    let cc = check(&run_plan(&path), "change capture").clone();
    assert_eq!(cc.status, CheckStatus::Fail);
    assert!(
        cc.detail.contains("main.\"Genre\" was rebuilt"),
        "{}",
        cc.detail
    );
    assert!(
        cc.fix
            .unwrap()
            .contains("`ferry cleanup`, then `ferry run`")
    );
}

#[test]
fn unique_indexes_besides_the_key_warn_about_replace() {
    let (_dir, path) = copy_of("chinook/Chinook_Sqlite.sqlite");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE UNIQUE INDEX genre_name ON Genre(Name)")
        .unwrap();
    let plan = run_plan(&path);
    let w = check(&plan, "replace main.\"Genre\"");
    assert_eq!(w.status, CheckStatus::Warn);
    assert!(w.detail.contains("(genre_name)"), "{}", w.detail);
    assert!(
        w.fix
            .as_deref()
            .unwrap()
            .contains("PRAGMA recursive_triggers=ON")
    );
    assert!(
        plan.checks
            .iter()
            .all(|c| !c.name.starts_with("replace main.\"Track\""))
    );
}
