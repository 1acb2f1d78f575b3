//! The source seam, proven with a third source: an in-memory log that
//! replays scripted transactions (inserts, updates, key changes, deletes,
//! truncates) through the real generic pipeline (`run_source`: schema,
//! load, catch-up, streaming, checkpoints) into a real PostgreSQL target.
//! Crashes are injected in the middle: the change stream ends inside a
//! transaction, the whole pipeline is dropped during the load and during
//! streaming; after each, the target must equal the source exactly and its
//! checkpoint must be the source position of the last transaction.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::pipeline::run_source;
use ferry::plan::Refused;
use ferry_core::config::Config;
use ferry_core::source::{
    self, BoxFuture, ChangeOptions, Chunk, ChunkData, Retention, SequenceValue, SuperviseContext,
    TargetSchema,
};
use ferry_core::value::Timestamp;
use ferry_core::{
    Change, ChangeLogSeq, Column, Error, Event, OldRow, ReplicaIdentity, Row, TableId, TableSchema,
    Value,
};
use ferry_testkit::{PgOptions, PgServer};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

// ---------------------------------------------------------------------
// The in-memory source.
//
// Transaction i (1-based) has Begin.final_position = 2i and
// Commit.position = 2i + 1: like PostgreSQL's final_lsn < end_lsn. A
// snapshot taken after m transactions is at 2m + 1, so it holds exactly
// the transactions whose commit is at or before it and the stream sends
// those after it; a table reloaded from it skips changes of transactions
// whose final position (2i) precedes it (i ≤ m).
// ---------------------------------------------------------------------

type Tables = BTreeMap<TableId, BTreeMap<i64, Row>>;

#[derive(Default)]
struct Log {
    /// Committed transactions, oldest first.
    txns: Vec<Vec<Change>>,
    /// The tables after every transaction in `txns`.
    state: Tables,
}

#[derive(Clone)]
struct MemorySource {
    schemas: Arc<Vec<TableSchema>>,
    log: Arc<Mutex<Log>>,
    /// The next change stream ends inside transaction N (1-based) once.
    break_in_txn: Arc<Mutex<Option<usize>>>,
    /// Delay per chunk read, so a test can crash during the load.
    chunk_delay: Duration,
    /// Highest acknowledged position (raw number).
    acked: Arc<AtomicUsize>,
    /// Streams started (reconnects show here).
    streams: Arc<AtomicUsize>,
    /// The next N catalog reads fail as a restarting server's would.
    catalog_down: Arc<AtomicUsize>,
}

fn commit_pos(i: usize) -> ChangeLogSeq {
    ChangeLogSeq(2 * i as u64 + 1)
}

impl MemorySource {
    fn new(schemas: Vec<TableSchema>, initial: Tables) -> Self {
        MemorySource {
            schemas: Arc::new(schemas),
            log: Arc::new(Mutex::new(Log {
                txns: Vec::new(),
                state: initial,
            })),
            break_in_txn: Arc::new(Mutex::new(None)),
            chunk_delay: Duration::ZERO,
            acked: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(AtomicUsize::new(0)),
            catalog_down: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Commit a transaction on the source.
    fn commit(&self, changes: Vec<Change>) {
        let mut log = self.log.lock().unwrap();
        for c in &changes {
            apply(&self.schemas, &mut log.state, c);
        }
        log.txns.push(changes);
    }

    fn head(&self) -> ChangeLogSeq {
        commit_pos(self.log.lock().unwrap().txns.len())
    }

    fn tables(&self) -> Tables {
        self.log.lock().unwrap().state.clone()
    }

    fn snapshot(&self) -> MemorySnapshot {
        let log = self.log.lock().unwrap();
        MemorySnapshot {
            position: commit_pos(log.txns.len()),
            tables: Arc::new(log.state.clone()),
            delay: self.chunk_delay,
        }
    }
}

fn key_of(row: &Row) -> i64 {
    match row.values[0] {
        Value::Int8(k) => k,
        ref v => panic!("key {v:?}"),
    }
}

/// A change's effect on the in-memory tables (the source's truth).
fn apply(schemas: &[TableSchema], state: &mut Tables, change: &Change) {
    match change {
        Change::Insert { table, new } => {
            state
                .entry(table.clone())
                .or_default()
                .insert(key_of(new), new.clone());
        }
        Change::Update { table, old, new } => {
            let t = state.entry(table.clone()).or_default();
            if let Some(old) = old {
                t.remove(&key_of(old.row()));
            }
            t.insert(key_of(new), new.clone());
        }
        Change::Delete { table, old } => {
            state
                .entry(table.clone())
                .or_default()
                .remove(&key_of(old.row()));
        }
        Change::Truncate { tables, .. } => {
            for t in tables {
                assert!(schemas.iter().any(|s| &s.id == t));
                state.entry(t.clone()).or_default().clear();
            }
        }
    }
}

struct MemoryCatalog(Vec<TableSchema>, Tables);

impl source::Catalog for MemoryCatalog {
    fn tables(&self) -> Vec<source::SourceTable> {
        self.0
            .iter()
            .map(|s| source::SourceTable {
                schema: s.clone(),
                row_estimate: self.1.get(&s.id).map(|t| t.len() as u64),
                bytes: None,
            })
            .collect()
    }
}

struct MemorySnapshot {
    position: ChangeLogSeq,
    tables: Arc<Tables>,
    delay: Duration,
}

impl source::Snapshot for MemorySnapshot {
    type Position = ChangeLogSeq;
    type Reader = MemorySnapshot;

    fn position(&self) -> ChangeLogSeq {
        self.position
    }

    async fn reader(&self) -> Result<MemorySnapshot, Error> {
        Ok(MemorySnapshot {
            position: self.position,
            tables: self.tables.clone(),
            delay: self.delay,
        })
    }

    async fn release(self) {}
}

/// Chunk predicates are `first..last` row ranges in key order.
const CHUNK_ROWS: usize = 100;

impl source::SnapshotReader for MemorySnapshot {
    async fn read(&mut self, chunk: &Chunk, _schema: &TableSchema) -> Result<ChunkData, Error> {
        tokio::time::sleep(self.delay).await;
        let (from, to) = chunk
            .predicate
            .as_deref()
            .and_then(|p| p.split_once(".."))
            .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
            .unwrap_or((0, usize::MAX));
        let rows: Vec<Result<Row, Error>> = self
            .tables
            .get(&chunk.table)
            .map(|t| {
                t.values()
                    .skip(from)
                    .take(to.saturating_sub(from))
                    .cloned()
                    .map(Ok)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ChunkData::Rows(Box::pin(futures_util::stream::iter(rows))))
    }
}

struct MemoryChanges {
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl source::ChangeHandle<ChangeLogSeq> for MemoryChanges {
    fn ack(&self, position: ChangeLogSeq) {
        self.acked.fetch_max(position.0 as usize, Ordering::AcqRel);
    }

    async fn shutdown(self) -> Result<(), Error> {
        self.task.abort();
        Ok(())
    }
}

struct MemoryProbe(MemorySource);

impl source::Probe<ChangeLogSeq> for MemoryProbe {
    async fn head(&mut self) -> Result<ChangeLogSeq, Error> {
        Ok(self.0.head())
    }

    async fn heartbeat(&mut self) -> Result<Option<ChangeLogSeq>, Error> {
        Ok(None)
    }

    async fn retention(&mut self) -> Result<Option<Retention>, Error> {
        Ok(None)
    }

    fn is_closed(&self) -> bool {
        false
    }
}

struct MemoryCutover(MemorySource);

impl source::Cutover<ChangeLogSeq> for MemoryCutover {
    fn fence_description(&self) -> String {
        "nothing to fence in memory".into()
    }

    async fn fence(&mut self) -> Result<(), Error> {
        Ok(())
    }

    async fn unfence(&mut self) -> Result<(), Error> {
        Ok(())
    }

    async fn final_position(&mut self) -> Result<ChangeLogSeq, Error> {
        Ok(self.0.head())
    }

    async fn sequences(&mut self) -> Result<Vec<SequenceValue>, Error> {
        Ok(Vec::new())
    }

    async fn count_rows(&mut self, table: &TableId) -> Result<u64, Error> {
        Ok(self.0.tables().get(table).map_or(0, |t| t.len() as u64))
    }
}

impl source::Source for MemorySource {
    type Position = ChangeLogSeq;
    type Catalog = MemoryCatalog;
    type Snapshot = MemorySnapshot;
    type Changes = MemoryChanges;
    type Probe = MemoryProbe;
    type Cutover = MemoryCutover;

    async fn catalog(&self) -> Result<MemoryCatalog, Error> {
        let down = self
            .catalog_down
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if down.is_ok() {
            return Err(Error::transient("the in-memory source is restarting"));
        }
        Ok(MemoryCatalog(self.schemas.to_vec(), self.tables()))
    }

    async fn prepare_capture(&self, _after_interrupted: bool) -> Result<(), Error> {
        Ok(())
    }

    async fn start_capture(&self, _catalog: &MemoryCatalog) -> Result<MemorySnapshot, Error> {
        Ok(self.snapshot())
    }

    async fn new_snapshot(&self) -> Result<MemorySnapshot, Error> {
        Ok(self.snapshot())
    }

    async fn target_schema(
        &self,
        catalog: &MemoryCatalog,
        _snapshot: &Self::Snapshot,
    ) -> Result<TargetSchema, Error> {
        let pre_data = catalog
            .0
            .iter()
            .map(|s| ferry_apply::ddl::create_table(&s.id, s) + ";\n")
            .collect::<String>();
        Ok(TargetSchema {
            pre_data,
            ..TargetSchema::default()
        })
    }

    fn plan_chunks(
        &self,
        catalog: &MemoryCatalog,
        _chunk_rows: u64,
        _split_for: Option<usize>,
    ) -> Vec<Chunk> {
        let mut out = Vec::new();
        for s in &catalog.0 {
            let rows = catalog.1.get(&s.id).map_or(0, BTreeMap::len);
            let total = rows.div_ceil(CHUNK_ROWS).max(1);
            for index in 0..total {
                out.push(Chunk {
                    table: s.id.clone(),
                    relation: s.id.clone(),
                    index,
                    total,
                    predicate: Some(format!(
                        "{}..{}",
                        index * CHUNK_ROWS,
                        if index + 1 == total {
                            usize::MAX
                        } else {
                            (index + 1) * CHUNK_ROWS
                        }
                    )),
                    only: true,
                });
            }
        }
        out
    }

    async fn changes(
        &self,
        _catalog: &MemoryCatalog,
        from: ChangeLogSeq,
        mut options: ChangeOptions<ChangeLogSeq>,
    ) -> Result<(mpsc::Receiver<Event<ChangeLogSeq>>, MemoryChanges), Error> {
        self.streams.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut send = |e: Event<ChangeLogSeq>| {
                let e = match options.map.as_mut() {
                    Some(f) => f(e),
                    None => Some(e),
                };
                let tx = tx.clone();
                async move {
                    match e {
                        Some(e) => tx.send(e).await.is_ok(),
                        None => true,
                    }
                }
            };
            for s in me.schemas.iter() {
                if !send(Event::Relation(Arc::new(s.clone()))).await {
                    return;
                }
            }
            // First transaction not yet applied: commit position > from.
            let mut next = ((from.0 as usize).saturating_sub(1)) / 2 + 1;
            loop {
                let txn = me.log.lock().unwrap().txns.get(next - 1).cloned();
                let Some(changes) = txn else {
                    let at = me.head();
                    if !send(Event::Heartbeat {
                        position: at,
                        time: Timestamp::now(),
                    })
                    .await
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let now = Timestamp::now();
                if !send(Event::Begin {
                    xid: Some(next as u64),
                    commit_time: now,
                    final_position: Some(ChangeLogSeq(2 * next as u64)),
                })
                .await
                {
                    return;
                }
                let breaks = {
                    let mut b = me.break_in_txn.lock().unwrap();
                    let hit = *b == Some(next);
                    if hit {
                        *b = None;
                    }
                    hit
                };
                for (i, c) in changes.into_iter().enumerate() {
                    if breaks && i == 1 {
                        // The connection is lost inside the transaction.
                        return;
                    }
                    if !send(Event::Change(c)).await {
                        return;
                    }
                }
                if !send(Event::Commit {
                    position: commit_pos(next),
                    commit_time: now,
                })
                .await
                {
                    return;
                }
                next += 1;
            }
        });
        Ok((
            rx,
            MemoryChanges {
                acked: self.acked.clone(),
                task,
            },
        ))
    }

    async fn probe(&self) -> Result<MemoryProbe, Error> {
        Ok(MemoryProbe(self.clone()))
    }

    fn supervise(
        &self,
        _context: SuperviseContext<ChangeLogSeq>,
    ) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    async fn cutover(&self) -> Result<MemoryCutover, Error> {
        Ok(MemoryCutover(self.clone()))
    }

    fn release_plan(&self, _keep: bool) -> String {
        "forget the in-memory log".into()
    }

    async fn release_capture(&self, _keep: bool) -> Result<source::Released, Error> {
        Ok(source::Released {
            dropped: true,
            note: "forgot the in-memory log".into(),
        })
    }
}

// ---------------------------------------------------------------------
// The script and the checks.
// ---------------------------------------------------------------------

fn items() -> TableId {
    TableId::new("public", "items")
}

fn notes() -> TableId {
    TableId::new("shop", "Order Notes")
}

fn col(name: &str, ty: &str, nullable: bool) -> Column {
    Column {
        name: name.into(),
        source_type: ty.into(),
        pg_type: ty.into(),
        type_oid: None,
        nullable,
    }
}

fn schemas() -> Vec<TableSchema> {
    vec![
        TableSchema {
            id: items(),
            columns: vec![
                col("id", "bigint", false),
                col("name", "text", true),
                col("qty", "bigint", true),
            ],
            key: vec![0],
            replica_identity: ReplicaIdentity::Default,
        },
        TableSchema {
            id: notes(),
            columns: vec![col("id", "bigint", false), col("body", "text", true)],
            key: vec![0],
            replica_identity: ReplicaIdentity::Default,
        },
    ]
}

fn item(id: i64, name: &str, qty: i64) -> Row {
    Row::new(vec![
        Value::Int8(id),
        Value::Text(name.into()),
        Value::Int8(qty),
    ])
}

fn note(id: i64, body: Option<&str>) -> Row {
    Row::new(vec![
        Value::Int8(id),
        body.map_or(Value::Null, |b| Value::Text(b.into())),
    ])
}

fn initial() -> Tables {
    let mut t = Tables::new();
    t.insert(
        items(),
        (1..=450)
            .map(|i| (i, item(i, &format!("item {i}"), i * 10)))
            .collect(),
    );
    t.insert(
        notes(),
        (1..=120)
            .map(|i| (i, note(i, (i % 7 != 0).then_some("a \"quoted\"\tnote\\n"))))
            .collect(),
    );
    t
}

/// A round of every kind of change, `round` keeps keys apart.
fn script_round(src: &MemorySource, round: i64) {
    let base = 10_000 * round;
    // Inserts in one transaction, in both tables.
    src.commit(
        (0..20)
            .map(|i| Change::Insert {
                table: items(),
                new: item(base + i, &format!("new {round}/{i}"), i),
            })
            .chain((0..5).map(|i| Change::Insert {
                table: notes(),
                new: note(base + i, Some("fresh")),
            }))
            .collect(),
    );
    // Updates of loaded rows and of the rows just inserted.
    src.commit(vec![
        Change::Update {
            table: items(),
            old: None,
            new: item(round, "updated", -1),
        },
        Change::Update {
            table: items(),
            old: None,
            new: item(base + 3, "updated new", 33),
        },
    ]);
    // A key change.
    src.commit(vec![Change::Update {
        table: items(),
        old: Some(OldRow::Key(Row::new(vec![
            Value::Int8(base + 4),
            Value::Null,
            Value::Null,
        ]))),
        new: item(base + 5_000, "moved", 4),
    }]);
    // Deletes.
    src.commit(vec![
        Change::Delete {
            table: items(),
            old: OldRow::Key(Row::new(vec![
                Value::Int8(base + 1),
                Value::Null,
                Value::Null,
            ])),
        },
        Change::Delete {
            table: notes(),
            old: OldRow::Key(Row::new(vec![Value::Int8(round + 1), Value::Null])),
        },
    ]);
    // Many single-row transactions.
    for i in 0..30 {
        src.commit(vec![Change::Update {
            table: items(),
            old: None,
            new: item(100 + i, &format!("tick {round}"), round),
        }]);
    }
}

fn config(target_url: &str) -> Config {
    let text = format!(
        r#"
[source]
url = "memory://scripted"
[target]
url = "{target_url}"
[control]
listen = "127.0.0.1:0"
[load]
parallelism = 2
[apply]
batch_rows = 50
batch_ms = 20
"#
    );
    Config::from_parts(&text, "memory test", Vec::<(String, String)>::new()).expect("config")
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The target's rows of `table`, as the source models them.
async fn target_rows(c: &Client, table: &TableId, width: usize) -> BTreeMap<i64, Row> {
    let cols = if width == 3 {
        "id, name, qty"
    } else {
        "id, body"
    };
    let rows = c
        .query(
            &format!("SELECT {cols} FROM {} ORDER BY id", table.quoted()),
            &[],
        )
        .await
        .expect("read target");
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let row = if width == 3 {
                item(id, r.get::<_, &str>(1), r.get(2))
            } else {
                note(id, r.get::<_, Option<&str>>(1))
            };
            (id, row)
        })
        .collect()
}

async fn checkpoint(c: &Client) -> Option<String> {
    c.query_opt(
        "SELECT position FROM ferry.checkpoint WHERE stream = 'main'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
}

async fn phase(c: &Client) -> Option<String> {
    c.query_opt("SELECT phase FROM ferry.pipeline", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Wait until the target's checkpoint is the source head and the phase is
/// `stream`, then compare every row.
async fn assert_caught_up(src: &MemorySource, c: &Client, task: &Running, what: &str) {
    let head = src.head().to_string();
    let started = Instant::now();
    loop {
        let (cp, ph) = (checkpoint(c).await, phase(c).await);
        if cp.as_deref() == Some(head.as_str()) && ph.as_deref() == Some("stream") {
            break;
        }
        assert!(
            !task.is_finished(),
            "{what}: the pipeline ended (refused or failed: see its log above)"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: not caught up: checkpoint {cp:?}, phase {ph:?}, source head {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let truth = src.tables();
    for (table, width) in [(items(), 3), (notes(), 2)] {
        let want = truth.get(&table).cloned().unwrap_or_default();
        let got = target_rows(c, &table, width).await;
        assert_eq!(got.len(), want.len(), "{what}: row count of {table}");
        for (k, row) in &want {
            assert_eq!(got.get(k), Some(row), "{what}: row {k} of {table}");
        }
    }
    // Acknowledged never beyond the checkpoint.
    let acked = src.acked.load(Ordering::Acquire) as u64;
    assert!(
        acked <= src.head().0,
        "{what}: acknowledged {acked} beyond the head {}",
        src.head()
    );
}

type Running = tokio::task::JoinHandle<anyhow::Result<ferry::Outcome>>;

fn start(src: &MemorySource, config: &Config) -> (Running, ferry::shutdown::Shutdown) {
    start_checked(src, config, |_| None)
}

/// What the checks of `ferry plan` answer on their `n`th call (1-based).
type Checks = fn(usize) -> Option<Refused>;

/// Start the pipeline with scripted checks; `calls` counts them.
fn start_checked(
    src: &MemorySource,
    config: &Config,
    checks: Checks,
) -> (Running, ferry::shutdown::Shutdown) {
    start_counted(src, config, checks, Arc::default())
}

fn start_counted(
    src: &MemorySource,
    config: &Config,
    checks: Checks,
    calls: Arc<AtomicUsize>,
) -> (Running, ferry::shutdown::Shutdown) {
    let trigger = ferry::shutdown::Shutdown::new();
    let shutdown = trigger.clone();
    let (src, config) = (Arc::new(src.clone()), config.clone());
    let task = tokio::spawn(async move {
        let refusal = || -> BoxFuture<'_, Option<Refused>> {
            let n = calls.fetch_add(1, Ordering::AcqRel) + 1;
            Box::pin(async move { checks(n) })
        };
        run_source(src, &config, &refusal, shutdown).await
    });
    (task, trigger)
}

/// Stop the pipeline as on SIGTERM: it ends `Ok`.
async fn stop_cleanly(task: Running, trigger: ferry::shutdown::Shutdown) {
    trigger.cancel();
    let outcome = task.await.expect("pipeline task").expect("pipeline result");
    assert!(matches!(outcome, ferry::Outcome::Ok), "{outcome:?}");
}

/// The pipeline ends `Refused` by itself, promptly.
async fn assert_refused(task: Running) {
    let outcome = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("refused promptly");
    let outcome = outcome.expect("pipeline task").expect("pipeline result");
    assert!(matches!(outcome, ferry::Outcome::Refused), "{outcome:?}");
}

/// A failed check as `ferry plan` reports it; `transient` when the server
/// could not be reached (restarting).
fn refused(transient: bool) -> Option<Refused> {
    let found = if transient {
        "source connect: connection refused"
    } else {
        "source wal_level: replica"
    };
    Some(Refused {
        message: format!("ferry run refuses to start: 1 prerequisite(s) failed:\n  FAIL {found}"),
        found: found.into(),
        transient,
    })
}

/// A throwaway target with the `shop` schema, a session on it and the
/// test's configuration (logs go to the test's output).
async fn target() -> (PgServer, Client, Config) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let pg = PgServer::start(PgOptions::default()).expect("start throwaway PostgreSQL");
    let url = pg.url("postgres");
    let c = connect(&url).await;
    c.batch_execute("CREATE SCHEMA shop").await.unwrap();
    let config = config(&url);
    (pg, c, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_source_through_the_real_pipeline_with_crashes() {
    let (_pg, c, config) = target().await;
    let mut src = MemorySource::new(schemas(), initial());
    src.chunk_delay = Duration::from_millis(150);
    // Changes committed before capture starts are in the snapshot.
    script_round(&src, 1);

    // 1. Crash during the load: drop the whole pipeline once the first
    //    chunk is marked done, while the source keeps committing.
    let (task, _t) = start(&src, &config);
    let started = Instant::now();
    loop {
        let done: i64 = c
            .query_opt("SELECT count(*) FROM ferry.chunks", &[])
            .await
            .ok()
            .flatten()
            .map_or(0, |r| r.get(0));
        if done >= 1 {
            break;
        }
        if task.is_finished() {
            panic!("the pipeline ended during the load: {:?}", task.await);
        }
        if started.elapsed() > Duration::from_secs(30) {
            let act: Vec<String> = c
                .query(
                    "SELECT coalesce(wait_event_type, '') || ' ' || coalesce(wait_event, '') || ' ' || state || ': ' || query
                     FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            panic!("no chunk loaded within 30 s; target sessions: {act:#?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    script_round(&src, 2);
    task.abort();
    let _ = task.await;
    let chunks_done: i64 = c
        .query_one("SELECT count(*) FROM ferry.chunks", &[])
        .await
        .unwrap()
        .get(0);
    let chunks_planned: i64 = c
        .query_one("SELECT count(*) FROM ferry.load_plan", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        chunks_done < chunks_planned,
        "the crash must land during the load ({chunks_done} of {chunks_planned} chunks)"
    );
    script_round(&src, 3);

    // 2. Restart: the load resumes from a new snapshot (reloaded tables
    //    skip what it holds), then catch-up and streaming.
    src.chunk_delay = Duration::ZERO;
    let (task, trigger) = start(&src, &config);
    assert_caught_up(&src, &c, &task, "after the resumed load").await;
    let reloaded: i64 = c
        .query_one("SELECT count(*) FROM ferry.table_snapshots", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        reloaded >= 1,
        "the resumed load recorded its snapshot positions"
    );

    // 3. The stream ends inside a transaction: the pipeline reconnects and
    //    resumes from the checkpoint; nothing lost, nothing doubled.
    let streams_before = src.streams.load(Ordering::Acquire);
    let next_txn = src.log.lock().unwrap().txns.len() + 2;
    *src.break_in_txn.lock().unwrap() = Some(next_txn);
    script_round(&src, 4);
    assert_caught_up(&src, &c, &task, "after the stream broke mid-transaction").await;
    assert!(
        src.streams.load(Ordering::Acquire) > streams_before,
        "the pipeline reconnected the change stream"
    );
    assert!(
        src.break_in_txn.lock().unwrap().is_none(),
        "the break happened"
    );

    // 4. Crash while streaming: drop the pipeline, commit more, restart.
    script_round(&src, 5);
    task.abort();
    let _ = task.await;
    drop(trigger);
    script_round(&src, 6);
    let (task, trigger) = start(&src, &config);
    assert_caught_up(&src, &c, &task, "after the crash while streaming").await;
    // A truncate reaches the target too.
    src.commit(vec![Change::Truncate {
        tables: vec![notes()],
        cascade: false,
        restart_identity: false,
    }]);
    src.commit(vec![Change::Insert {
        table: notes(),
        new: note(1, Some("after truncate")),
    }]);
    assert_caught_up(&src, &c, &task, "after a truncate").await;

    // 5. A clean stop: the checkpoint is the head, acknowledged up to it.
    stop_cleanly(task, trigger).await;
    assert_eq!(
        checkpoint(&c).await.as_deref(),
        Some(src.head().to_string().as_str())
    );
    assert_eq!(src.acked.load(Ordering::Acquire) as u64, src.head().0);
}

/// A source that restarts while the pipeline starts again after a transient
/// failure: the checks of `ferry plan` cannot reach it for a while. A run
/// that got past them once (or resumes one that did) waits for the server;
/// a fresh run refuses, and so does any run on a failure an operator must
/// fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_restarting_during_a_retry_is_waited_for_not_refused() {
    let (_pg, c, config) = target().await;
    let src = MemorySource::new(schemas(), initial());
    script_round(&src, 1);

    // 1. A fresh run whose checks cannot reach the source refuses at once
    //    (a wrong host looks the same): nothing was started.
    let (task, _t) = start_checked(&src, &config, |_| refused(true));
    assert_refused(task).await;
    assert_eq!(phase(&c).await, None, "a refused run recorded a phase");

    // 2. The checks pass, then the source fails while the catalog is read
    //    (transient); the next two attempts find it unreachable, the third
    //    gets through: the run goes on to streaming, nothing refused.
    src.catalog_down.store(1, Ordering::Release);
    let calls = Arc::new(AtomicUsize::new(0));
    let restarting = |n| match n {
        2 | 3 => refused(true),
        _ => None,
    };
    let (task, trigger) = start_counted(&src, &config, restarting, calls.clone());
    script_round(&src, 2);
    assert_caught_up(&src, &c, &task, "after the source restarted during a retry").await;
    assert_eq!(
        src.catalog_down.load(Ordering::Acquire),
        0,
        "the injected catalog failure happened"
    );
    assert_eq!(
        calls.load(Ordering::Acquire),
        4,
        "one passing check, two unreachable, one passing"
    );
    stop_cleanly(task, trigger).await;

    // 3. A new process resuming this run (phase stream) while the source
    //    restarts waits for it too.
    let calls = Arc::new(AtomicUsize::new(0));
    let (task, trigger) = start_counted(
        &src,
        &config,
        |n| if n == 1 { refused(true) } else { None },
        calls.clone(),
    );
    script_round(&src, 3);
    assert_caught_up(&src, &c, &task, "after resuming while the source restarted").await;
    assert_eq!(
        calls.load(Ordering::Acquire),
        2,
        "unreachable once, then passing"
    );
    stop_cleanly(task, trigger).await;

    // 4. A failure an operator must fix is refused even then.
    let (task, _t) = start_checked(&src, &config, |_| refused(false));
    assert_refused(task).await;
}
