//! Pagila (enums, domains, arrays, a partitioned payment table, triggers,
//! sequences, full-text columns) migrated completely while writes continue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_e2e::{Background, ferry, pgsync};
use ferry_testkit::{PgOptions, PgServer};

const LONG: Duration = Duration::from_secs(240);

/// Writes a mix of Pagila changes until `stop`.
async fn pagila_writes(
    url: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut c = pgsync::connect(&url).await?;
    let mut i: i32 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let tx = c.transaction().await?;
        let customer = 1 + i % 599;
        tx.execute(
            "INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date) \
             SELECT $1, 1, (SELECT min(rental_id) FROM rental WHERE customer_id = $1), 4.99, timestamptz '2022-03-15 12:00:00+00' + $2 * interval '1 second'",
            &[&customer, &f64::from(i)],
        )
        .await?;
        tx.execute(
            "UPDATE customer SET activebool = NOT activebool, last_update = now() WHERE customer_id = $1",
            &[&customer],
        )
        .await?;
        tx.execute(
            "UPDATE film SET rental_rate = rental_rate + 0.01, special_features = special_features || '{Trailers}'::text[] \
             WHERE film_id = $1",
            &[&(1 + i % 1000)],
        )
        .await?;
        tx.execute(
            "INSERT INTO actor (first_name, last_name) VALUES ('NEW', 'ACTOR ' || $1::int::text)",
            &[&i],
        )
        .await?;
        if i % 3 == 0 {
            tx.execute(
                "DELETE FROM actor WHERE actor_id = (SELECT max(actor_id) FROM actor WHERE first_name = 'NEW')",
                &[],
            )
            .await?;
        }
        tx.commit().await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[test]
fn pagila_migrates_completely_while_writes_continue() {
    let source = PgServer::start(PgOptions::new()).unwrap();
    let target = PgServer::start(PgOptions::new().wal_level("replica")).unwrap();
    let sdb = source.create_database("pagila").unwrap();
    let tdb = target.create_database("pagila_dst").unwrap();
    source.load_pagila(&sdb).unwrap();
    // The target needs the roles the dump refers to? ferry dumps without owners.
    let (source_url, target_url) = (source.url(&sdb), target.url(&tdb));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writer = {
        let (u, s, d) = (source_url.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            let result = pgsync::runtime().block_on(pagila_writes(u, s, d));
            #[allow(clippy::print_stderr)]
            if let Err(e) = &result {
                eprintln!("pagila writer failed: {e:#}");
            }
            result
        })
    };
    while done.load(Ordering::Relaxed) < 20 {
        assert!(!writer.is_finished(), "the pagila writer stopped early");
        std::thread::sleep(Duration::from_millis(20));
    }

    let logs = tempfile::tempdir().unwrap();
    let mut cmd = ferry(&source_url, &target_url).unwrap();
    cmd.env("FERRY_LOG", "info")
        .env("FERRY_SOURCE_SSLMODE", "disable")
        .env("FERRY_TARGET_SSLMODE", "disable")
        .env("FERRY_CONTROL_LISTEN", "127.0.0.1:0")
        .arg("run");
    let mut ferry = Background::spawn(cmd, &logs.path().join("pagila.log")).unwrap();

    let rt = pgsync::runtime();
    rt.block_on(async {
        // Let writes continue through the load and into streaming.
        let start = std::time::Instant::now();
        loop {
            if let Some(code) = ferry.exited().unwrap() {
                panic!("ferry exited with {code:?}:\n{}", ferry.log());
            }
            let dst = pgsync::connect(&target_url).await.unwrap();
            if pgsync::applied_lsn(&dst).await.ok().flatten().is_some() {
                let phase = dst
                    .query_opt("SELECT phase FROM ferry.pipeline", &[])
                    .await
                    .ok()
                    .flatten();
                if phase.is_some_and(|r| matches!(r.get::<_, &str>(0), "stream" | "catchup")) {
                    break;
                }
            }
            assert!(
                start.elapsed() < LONG,
                "never reached streaming:\n{}",
                ferry.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let seen = done.load(Ordering::Relaxed);
        let start = std::time::Instant::now();
        while done.load(Ordering::Relaxed) < seen + 50 {
            assert!(!writer.is_finished(), "the pagila writer stopped early");
            assert!(start.elapsed() < LONG, "the pagila writer made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap().unwrap();

    rt.block_on(async {
        let src = pgsync::connect(&source_url).await.unwrap();
        let lsn = pgsync::current_lsn(&src).await.unwrap();
        pgsync::wait_applied(&target_url, lsn, LONG).await.unwrap();
        let dst = pgsync::connect(&target_url).await.unwrap();
        let tables: Vec<String> = src
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                 WHERE schemaname = 'public' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(tables.len() >= 15, "pagila tables: {tables:?}");
        assert!(
            tables.iter().any(|t| t.starts_with("public.payment_p2022")),
            "partitions present"
        );
        let names: Vec<&str> = tables.iter().map(String::as_str).collect();
        pgsync::compare_tables(&src, &dst, &names).await.unwrap();
        // Enum, domain and array columns arrived typed, not as text.
        let t = dst
            .query_one(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = 'public.film'::regclass AND a.attname = 'rating'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(t.get::<_, &str>(0), "mpaa_rating");
        // Every index and key was built (small tables' index builds share
        // transactions), and the foreign keys were validated while the
        // applier caught up: every table was loaded from the stream's start.
        let indexes = "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'";
        let (want, got): (i64, i64) = (
            src.query_one(indexes, &[]).await.unwrap().get(0),
            dst.query_one(indexes, &[]).await.unwrap().get(0),
        );
        assert!(want > 50, "pagila indexes on the source: {want}");
        assert_eq!(got, want, "indexes on the target");
        let fks = "SELECT count(*) FILTER (WHERE convalidated), count(*) FROM pg_constraint \
                   WHERE contype = 'f' AND connamespace = 'public'::regnamespace";
        let start = std::time::Instant::now();
        loop {
            let phase = dst
                .query_one("SELECT phase FROM ferry.pipeline", &[])
                .await
                .unwrap();
            if phase.get::<_, &str>(0) == "stream" {
                break;
            }
            assert!(start.elapsed() < LONG, "never caught up:\n{}", ferry.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (valid, all): (i64, i64) = {
            let r = dst.query_one(fks, &[]).await.unwrap();
            (r.get(0), r.get(1))
        };
        assert!(all > 30, "pagila foreign keys on the target: {all}");
        assert_eq!(valid, all, "foreign keys validated");
        let log = ferry.log();
        assert!(
            log.contains("validating foreign keys while catching up"),
            "{log}"
        );
    });
    let code = ferry
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
        .unwrap();
    assert_eq!(code, Some(0));
}
