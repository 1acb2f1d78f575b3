//! Measures server start, first query and drop times:
//! `cargo run -p ferry-testkit --example startup_times`.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use ferry_testkit::{MariaDbOptions, MariaDbServer, PgAuth, PgOptions, PgServer};

fn main() -> Result<(), ferry_testkit::TestkitError> {
    for round in 1..=3 {
        let t = Instant::now();
        let pg = PgServer::start(PgOptions::new())?;
        let started = t.elapsed();
        pg.psql("postgres", "SELECT 1")?;
        let queried = t.elapsed();
        drop(pg);
        println!(
            "round {round} postgres (trust): start {started:?}, first query {queried:?}, dropped {:?}",
            t.elapsed()
        );

        let t = Instant::now();
        let pg = PgServer::start(PgOptions::new().auth(PgAuth::Scram).tls(true))?;
        let started = t.elapsed();
        drop(pg);
        println!(
            "round {round} postgres (scram+tls): start {started:?}, dropped {:?}",
            t.elapsed()
        );

        let t = Instant::now();
        let my = MariaDbServer::start(MariaDbOptions::new())?;
        let started = t.elapsed();
        my.sql("", "SELECT 1")?;
        let queried = t.elapsed();
        drop(my);
        println!(
            "round {round} mariadb: start {started:?}, first query {queried:?}, dropped {:?}",
            t.elapsed()
        );
    }
    Ok(())
}
