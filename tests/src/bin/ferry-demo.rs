//! `make demo`: throwaway servers, the Chinook sample in a PostgreSQL source,
//! a MariaDB source and an SQLite file, and `ferry plan` against each with a
//! fresh target database. Everything is removed when the demo ends.

use anyhow::Context;
use ferry_e2e::{ferry, run, sqlite_copy};
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
    if failed.is_empty() {
        say("\ndemo: every source is ready to migrate (ferry plan exit 0 for all three).");
        Ok(())
    } else {
        anyhow::bail!("demo failed: {}", failed.join("; "))
    }
}

#[allow(clippy::print_stdout)]
fn say(s: &str) {
    println!("{s}");
}
