//! Lag history against a real PostgreSQL target.

use std::time::{Duration, Instant, SystemTime};

use ferry_monitor::LagFigures;
use ferry_monitor::history::{
    self, BUCKET, LagSample, SamplerConfig, compact, read_history, record,
};
use ferry_testkit::{PgOptions, PgServer};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to test target");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The state schema, as every ferry process creates it before sampling.
async fn ensure_state(client: &Client, schema: &str) {
    ferry_apply::StateStore::new(schema)
        .ensure(client)
        .await
        .expect("create the state schema");
}

fn ago(now: SystemTime, secs: u64) -> SystemTime {
    now - Duration::from_secs(secs)
}

fn sample(at: SystemTime, s: f64, b: u64) -> LagSample {
    LagSample {
        at,
        lag_seconds: s,
        lag_bytes: b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_round_trip_and_old_rows_compact_to_window_maxima() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("lag_history").expect("create db");
    let mut client = connect(&pg.url(&db)).await;
    ensure_state(&client, "ferry_state").await;

    // Align to a window start so the expected windows are easy to name.
    let width = BUCKET.as_secs();
    let now_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs / width * width);
    let old = ago(now, 3 * 86_400);
    let mut rows = vec![
        // Window A (3 days ago): three samples, max seconds and max bytes in different rows.
        sample(old + Duration::from_secs(10), 1.0, 500),
        sample(old + Duration::from_secs(20), 7.5, 100),
        sample(old + Duration::from_secs(290), 2.0, 900),
        // Window B: a single sample not at its start.
        sample(old + Duration::from_secs(width + 30), 3.0, 30),
    ];
    // Recent: full resolution, every 10 s for a minute.
    rows.extend((0..6).map(|i| sample(ago(now, 3600 - i * 10), i as f64, i)));
    for r in &rows {
        record(&client, "ferry_state", r).await.expect("record");
    }

    let all = read_history(&client, "ferry_state", SystemTime::UNIX_EPOCH)
        .await
        .expect("read");
    assert_eq!(all, rows, "round trip, oldest first");
    let recent = read_history(&client, "ferry_state", ago(now, 7200))
        .await
        .expect("read since");
    assert_eq!(recent.len(), 6);

    let removed = compact(&mut client, "ferry_state", now)
        .await
        .expect("compact");
    assert_eq!(removed, 2, "window A folds 3 rows into 1; window B moves");
    let after = read_history(&client, "ferry_state", SystemTime::UNIX_EPOCH)
        .await
        .expect("read");
    assert_eq!(after.len(), 2 + 6, "{after:?}");
    assert_eq!(
        after[0],
        sample(old, 7.5, 900),
        "window A: max of each figure"
    );
    assert_eq!(after[1], sample(old + BUCKET, 3.0, 30), "window B");
    assert_eq!(&after[2..], &rows[4..], "recent rows untouched");

    // Idempotent: a second pass changes nothing.
    assert_eq!(
        compact(&mut client, "ferry_state", now)
            .await
            .expect("again"),
        0
    );
    let again = read_history(&client, "ferry_state", SystemTime::UNIX_EPOCH)
        .await
        .expect("read");
    assert_eq!(again, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampler_records_until_shutdown() {
    let pg = PgServer::start(PgOptions::default()).expect("start postgres");
    let db = pg.create_database("lag_sampler").expect("create db");
    let client = connect(&pg.url(&db)).await;
    let reader = connect(&pg.url(&db)).await;
    ensure_state(&reader, "ferry").await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut cfg = SamplerConfig::new("ferry");
    cfg.interval = Duration::from_millis(50);
    let task = tokio::spawn(history::run_sampler(
        client,
        cfg,
        || LagFigures {
            seconds: 4.25,
            bytes: 1234,
            caught_up: false,
        },
        async {
            let _ = stopped.await;
        },
    ));

    let deadline = Instant::now() + Duration::from_secs(20);
    let samples = loop {
        let s = read_history(&reader, "ferry", SystemTime::UNIX_EPOCH)
            .await
            .expect("read the samples");
        if s.len() >= 3 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "sampler wrote fewer than 3 rows in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        samples
            .iter()
            .all(|s| s.lag_seconds == 4.25 && s.lag_bytes == 1234)
    );
    assert!(samples.windows(2).all(|w| w[0].at < w[1].at));

    stop.send(()).expect("sampler alive");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("sampler stops on shutdown")
        .expect("join")
        .expect("sampler result");
}
