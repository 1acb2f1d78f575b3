//! `make demo`: throwaway servers, the Chinook sample in a PostgreSQL source,
//! a MariaDB source and an SQLite file, and `ferry plan` against each with a
//! fresh target database; then the whole migration of the PostgreSQL source:
//! `ferry run`, writes while it runs, `ferry status`, a fenced `ferry
//! cutover`, `ferry report`, and a table-by-table comparison. Everything is
//! removed when the demo ends (the HTML report stays in `target/`).

use anyhow::Context;
use std::time::{Duration, Instant};

use ferry_e2e::{Background, ferry, run, sqlite_copy};
use ferry_testkit::{MariaDbOptions, MariaDbServer, PgOptions, PgServer};

fn main() -> anyhow::Result<()> {
    say("starting throwaway servers (PostgreSQL source + target, MariaDB) on 127.0.0.1 …");
    let source = PgServer::start(PgOptions::new()).context("starting the PostgreSQL source")?;
    let target = PgServer::start(PgOptions::new().wal_level("replica"))
        .context("starting the PostgreSQL target")?;
    let maria = MariaDbServer::start(MariaDbOptions::new()).context("starting MariaDB")?;
    let files = tempfile::tempdir().context("creating a temp dir")?;

    say("loading Chinook into each source …");
    let pg_db = source.create_database("chinook")?;
    source.load_chinook(&pg_db)?;
    let my_db = maria.create_database("chinook")?;
    maria.load_chinook(&my_db)?;
    let (_, sqlite_url) = sqlite_copy("chinook/Chinook_Sqlite.sqlite", files.path())?;

    let sources = [
        ("PostgreSQL", source.url(&pg_db)),
        ("MariaDB", maria.url(&my_db)),
        ("SQLite", sqlite_url),
    ];
    let mut failed = Vec::new();
    for (name, url) in &sources {
        let target_db = target.create_database("demo_target")?;
        say(&format!(
            "\n=== ferry plan: {name} source → PostgreSQL target ===\n"
        ));
        let ran = run(ferry(url, &target.url(&target_db))?.arg("plan"))?;
        say(&ran.stdout);
        if !ran.stderr.trim().is_empty() {
            say(&ran.stderr);
        }
        if ran.code != Some(0) {
            failed.push(format!("{name}: ferry plan exited {:?}", ran.code));
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("demo failed: {}", failed.join("; "));
    }
    say("\nevery source is ready to migrate (ferry plan exit 0 for all three).");
    migrate(&source, &pg_db, &target, files.path())
}

/// The whole path on the PostgreSQL Chinook source.
fn migrate(
    source: &PgServer,
    db: &str,
    target: &PgServer,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let target_db = target.create_database("chinook_new")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cmd = |args: &[&str]| -> anyhow::Result<std::process::Command> {
        let mut c = ferry(&source.url(db), &target.url(&target_db))?;
        c.env("FERRY_SOURCE_SSLMODE", "disable")
            .env("FERRY_TARGET_SSLMODE", "disable")
            .env("FERRY_CONTROL_LISTEN", format!("127.0.0.1:{port}"))
            .args(args);
        Ok(c)
    };
    say("\n=== ferry run: full load, then change data capture (log in ferry-run.log) ===");
    let mut running = Background::spawn(cmd(&["run"])?, &dir.join("ferry-run.log"))?;
    for i in 1..=20 {
        source.psql(
            db,
            &format!(
                "INSERT INTO artist (artist_id, name) VALUES ({}, 'Demo Artist {i}')",
                10_000 + i
            ),
        )?;
        source.psql(
            db,
            &format!("UPDATE track SET unit_price = unit_price + 0.01 WHERE track_id = {i}"),
        )?;
    }
    let started = Instant::now();
    loop {
        if let Some(code) = running.exited()? {
            anyhow::bail!("ferry run exited with {code:?}:\n{}", running.log());
        }
        let ran = run(&mut cmd(&["status", "--json"])?)?;
        let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
        if v["live"] == true && v["phase"] == "stream" && v["lag"]["seconds"] == 0.0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "ferry did not reach streaming in 2 minutes:\n{}",
                running.log()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    source.psql(db, "DELETE FROM artist WHERE artist_id = 10001")?;
    say("\n=== ferry status ===\n");
    say(&run(&mut cmd(&["status"])?)?.stdout);
    say("=== ferry cutover --fence ===\n");
    let cut = run(&mut cmd(&["cutover", "--fence", "--max-lag", "10s"])?)?;
    say(&cut.stdout);
    if cut.code != Some(0) {
        anyhow::bail!("cutover failed: {}\n{}", cut.all(), running.log());
    }
    let code = running.wait(Duration::from_secs(60))?;
    say(&format!("ferry run exited with {code:?} after the cutover"));
    let report = std::env::current_dir()?
        .join("target")
        .join("ferry-demo-report.html");
    let ran = run(&mut cmd(&[
        "report",
        "--output",
        &report.display().to_string(),
    ])?)?;
    say(&ran.stdout);
    // Every table the migration carried, as the source lists them.
    let tables = source.psql(
        db,
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname = 'public' ORDER BY 1",
    )?;
    let mut same = 0;
    for t in tables.lines() {
        let q = format!(
            "SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t"
        );
        let (a, b) = (source.psql(db, &q)?, target.psql(&target_db, &q)?);
        if a != b {
            anyhow::bail!("{t} differs after cutover: source {a}, target {b}");
        }
        same += 1;
    }
    say(&format!(
        "\ndemo: migrated; {same} tables compared equal (count + checksum) between source and target."
    ));
    Ok(())
}

#[allow(clippy::print_stdout)]
fn say(s: &str) {
    println!("{s}");
}
