//! The full-load stage: copy every unfinished chunk from the source snapshot
//! into the target, several at once.
//!
//! Consumes the chunk plan of the selected tables and the source's
//! [`Snapshot`]; each worker holds one [`SnapshotReader`] and writes each
//! chunk with `COPY … FROM STDIN`: binary COPY bytes passed straight through
//! when the source sends them (PostgreSQL), COPY text passed through when
//! the source encodes it (SQLite), rows encoded otherwise. With
//! existing target tables ([`super::existing`]) rows go straight into the
//! application's tables under their column names, each value converted to
//! its column's type (`ferry_apply::conversion`).
//!
//! Invariants: a chunk's rows and its `ferry.chunks` mark commit in one
//! target transaction, so a crash leaves each chunk either fully loaded and
//! marked, or absent; on restart the unmarked chunks are copied again.
//! Chunks are taken largest first (table bytes, else rows, over its chunk
//! count), so the workers finish together. A table ferry created that is
//! loaded in one chunk, of 1 MiB or more ([`FREEZE_MIN_BYTES`]), is
//! truncated and copied with `FREEZE` in that transaction (no hint-bit or
//! freeze rewrite of its pages later).
//! Workers each hold one snapshot reader and one target connection; memory
//! is bounded by the COPY streams' buffers.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use ferry_apply::conversion::TargetKind;
use ferry_apply::existing::Mapping;
use ferry_apply::load::{LoadData, LoadProgress, LoadTarget, load_chunk};
use ferry_apply::state::StateStore;
use ferry_core::TableId;
use ferry_core::TableSchema;
use ferry_core::config::Config;
use ferry_core::source::{Chunk, ChunkData, Snapshot, SnapshotReader, SourceTable};
use futures_util::StreamExt;
use tracing::info;

use super::plan_store;
use super::progress::{self, Board, TableProgress};
use crate::shutdown::Shutdown;

/// A chunk still to copy, with the table it belongs to.
struct Job {
    chunk: Chunk,
    table: Arc<SourceTable>,
    progress: Arc<LoadProgress>,
}

impl Job {
    /// The chunk's share of its table's size: bytes where the source
    /// reports them, else rows.
    fn weight(&self) -> u64 {
        let size = self.table.bytes.or(self.table.row_estimate).unwrap_or(0);
        size / self.chunk.total.max(1) as u64
    }

    /// The chunk is the whole of a plain table of [`FREEZE_MIN_BYTES`] or
    /// more (or of unknown size): it is truncated and copied with `FREEZE`
    /// in its own transaction.
    fn frozen(&self) -> bool {
        self.chunk.total == 1
            && self.chunk.only
            && self.chunk.relation == self.table.schema.id
            && self.table.bytes.is_none_or(|b| b >= FREEZE_MIN_BYTES)
    }
}

/// The smallest table loaded with `TRUNCATE` and `COPY … FREEZE`. The
/// `TRUNCATE` gives the table new files and its commit drops the old
/// ones: 2.2–10.2 ms of target time per table on an idle server (more
/// with a TOAST table). Not freezing costs the target a hint-bit pass and
/// a freeze later, about 2–3 ms per MiB (an 8 MiB table written without
/// `FREEZE`, three runs: its first read took 5.6–9.0 ms more than the
/// second, which found the hint bits set; `VACUUM (FREEZE)` 8.4–13.8 ms).
/// The two meet between about 0.8 and 5.7 MiB; at 1 MiB, the low end, a
/// table under it is copied plainly, its rows and its done mark still in
/// one transaction, and every larger one keeps `FREEZE`.
const FREEZE_MIN_BYTES: u64 = 1 << 20;

/// A load worker's two sessions: a reader of the snapshot and a target
/// session.
pub type Sessions<R> = Vec<(R, tokio_postgres::Client)>;

/// How many workers copy `chunks` chunks.
pub fn workers_for(config: &Config, chunks: usize) -> usize {
    config.load.effective_parallelism().min(chunks.max(1))
}

/// Log in `workers` load workers' sessions, all at once: each reader
/// imports the snapshot while its target session logs in.
pub async fn open_sessions<T: Snapshot>(
    config: &Config,
    snapshot: &T,
    workers: usize,
) -> anyhow::Result<Sessions<T::Reader>> {
    let opened = futures_util::future::join_all((0..workers).map(|_| async {
        let (reader, target) = tokio::join!(
            snapshot.reader(),
            ferry_postgres::connect::connect(&config.target, "target")
        );
        anyhow::Ok((reader?, target?))
    }))
    .await;
    opened.into_iter().collect()
}

/// Copy every chunk of `tables` that is not done yet, on the `opened`
/// sessions (logged in while the schema was created) and as many more as
/// the workers need. Returns the workers' target sessions, idle, for the
/// post-data builds (a login each fewer).
#[allow(clippy::too_many_arguments)]
pub async fn run<T: Snapshot>(
    config: &Config,
    state: &StateStore,
    target: &tokio_postgres::Client,
    tables: &[SourceTable],
    snapshot: &T,
    mut opened: Sessions<T::Reader>,
    shutdown: Shutdown,
    mapping: Option<&Mapping>,
) -> anyhow::Result<Vec<tokio_postgres::Client>> {
    let mapping = mapping.map(|m| Arc::new(m.clone()));
    let mut queue = VecDeque::new();
    let mut board = Board::new();
    // Two queries for all tables (two per table before: a round trip or
    // two each, on the way to the first chunk).
    let (mut done_all, mut planned) = tokio::try_join!(
        async { anyhow::Ok(state.chunks_done_all(target).await?) },
        plan_store::all_chunks(target, state)
    )?;
    for t in tables {
        let progress = Arc::new(LoadProgress::default());
        let done: BTreeSet<i32> = done_all
            .remove(&ferry_apply::state::table_key(&t.schema.id))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let table = Arc::new(t.clone());
        for chunk in planned.remove(&t.schema.id).unwrap_or_default() {
            if !done.contains(&(chunk.index as i32)) {
                queue.push_back(Job {
                    chunk,
                    table: table.clone(),
                    progress: progress.clone(),
                });
            }
        }
        if !done.is_empty() || queue.iter().any(|j| j.table.schema.id == t.schema.id) {
            board.insert(
                t.schema.id.clone(),
                TableProgress {
                    counters: progress,
                    estimate: t.row_estimate,
                },
            );
        }
    }
    // Largest first: the last chunk to start is a small one.
    let mut queue = Vec::from(queue);
    queue.sort_by_key(|j| std::cmp::Reverse(j.weight()));
    let queue = VecDeque::from(queue);
    let jobs = queue.len();
    let workers = workers_for(config, jobs);
    info!(chunks = jobs, workers, "full load started");
    let queue = Arc::new(Mutex::new(queue));
    let progress_done = crate::shutdown::Shutdown::new();
    let reporter = tokio::spawn(progress::report(
        board,
        progress_done.clone().cancelled_owned(),
    ));
    let mut set = tokio::task::JoinSet::new();
    opened.retain(|(_, target)| !target.is_closed());
    opened.truncate(workers);
    if opened.len() < workers {
        match open_sessions(config, snapshot, workers - opened.len()).await {
            Ok(more) => opened.extend(more),
            Err(e) => {
                progress_done.cancel();
                let _ = reporter.await;
                return Err(e);
            }
        }
    }
    for (worker, (reader, target)) in opened.into_iter().enumerate() {
        let (config, state, queue, shutdown, mapping) = (
            config.clone(),
            state.clone(),
            queue.clone(),
            shutdown.clone(),
            mapping.clone(),
        );
        set.spawn(async move {
            let w = Worker {
                id: worker,
                config: &config,
                state: &state,
                mapping: mapping.as_deref(),
            };
            load_worker(&w, reader, target, &queue, &shutdown).await
        });
    }
    let mut first_error = None;
    let mut sessions = Vec::new();
    while let Some(res) = set.join_next().await {
        match res.context("load worker panicked").and_then(|r| r) {
            Ok(session) => sessions.push(session),
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
                // Let the other workers run dry quickly: empty the queue.
                queue.lock().map(|mut q| q.clear()).ok();
            }
        }
    }
    progress_done.cancel();
    let _ = reporter.await;
    match first_error {
        Some(e) => Err(e),
        None if shutdown.is_cancelled() => {
            anyhow::bail!("full load interrupted by shutdown; it resumes on the next run")
        }
        None => Ok(sessions),
    }
}

/// The table a chunk's rows are copied into: the chunk's relation under its
/// source name (renames follow post-data), or with existing target tables
/// the application's table.
pub(super) fn relation(config: &Config, table: &TableId, existing: bool) -> TableId {
    match existing {
        true => config.tables.target_name(table),
        false => table.clone(),
    }
}

/// One load worker's settings.
struct Worker<'a> {
    id: usize,
    config: &'a Config,
    state: &'a StateStore,
    /// Existing target tables: names and types to write under.
    mapping: Option<&'a Mapping>,
}

impl Worker<'_> {
    /// Where a chunk of `schema` goes: table, columns and their kinds.
    fn load_target(&self, job: &Job) -> LoadTarget {
        let schema = &job.table.schema;
        let Some(m) = self.mapping else {
            return LoadTarget {
                source: schema.id.clone(),
                // Renames (`tables.rename`) happen after post-data.
                target: job.chunk.relation.clone(),
                columns: schema.columns.iter().map(|c| c.name.clone()).collect(),
                kinds: Vec::new(),
                chunk: Some(job.chunk.index as i32),
                freeze: job.frozen(),
            };
        };
        let view = m.view(schema);
        LoadTarget {
            source: schema.id.clone(),
            target: relation(self.config, &schema.id, true),
            columns: view.columns.iter().map(|c| c.name.clone()).collect(),
            kinds: view
                .columns
                .iter()
                .map(|c| TargetKind::of(&c.pg_type))
                .collect(),
            chunk: Some(job.chunk.index as i32),
            // The application's tables: no TRUNCATE (its foreign keys).
            freeze: false,
        }
    }
}

async fn load_worker<R: SnapshotReader>(
    w: &Worker<'_>,
    mut reader: R,
    mut target: tokio_postgres::Client,
    queue: &Mutex<VecDeque<Job>>,
    shutdown: &Shutdown,
) -> anyhow::Result<tokio_postgres::Client> {
    let (worker, config, state) = (w.id, w.config, w.state);
    loop {
        if shutdown.is_cancelled() {
            return Ok(target);
        }
        let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            return Ok(target);
        };
        let schema = &job.table.schema;
        let to = w.load_target(&job);
        // Excluded columns (existing target tables) are not read at all.
        let read_schema = match w.mapping {
            Some(m) => m.project_schema(schema),
            None => schema.clone(),
        };
        // Into a table ferry created nothing is converted: a source may
        // encode the COPY text itself.
        let chunk_data = match w.mapping {
            Some(_) => reader.read(&job.chunk, &read_schema).await?,
            None => reader.read_copy_text(&job.chunk, &read_schema).await?,
        };
        let data = match chunk_data {
            ChunkData::BinaryCopy(bytes) => LoadData::BinaryCopy(bytes),
            ChunkData::TextCopy(bytes) => LoadData::TextCopy(bytes),
            ChunkData::Rows(rows) => LoadData::Rows(rows),
        };
        let what = format!(
            "loading {} chunk {}/{}",
            schema.id,
            job.chunk.index + 1,
            job.chunk.total
        );
        let replaced = reader.replaced();
        let loaded = load_chunk(
            &mut target,
            state,
            &to,
            data,
            Some(&job.progress),
            replaced.as_ref(),
        )
        .await;
        let result = match loaded {
            Ok(r) => r,
            Err(e) => match ferry_apply::find_copy_failure(&e) {
                Some(failure) => {
                    let key = refused_key(&mut reader, &job.chunk, &read_schema, failure.line)
                        .await
                        .unwrap_or_else(|| format!("(row {} of the chunk)", failure.line));
                    let fix = refused_fix(config, schema, failure.column.as_deref());
                    return Err(ferry_apply::value_refused(
                        &what,
                        &read_schema,
                        &key,
                        &failure,
                        &fix,
                        e,
                    )
                    .into());
                }
                None => return Err(anyhow::Error::from(e).context(what)),
            },
        };
        tracing::debug!(worker, table = %schema.id, chunk = job.chunk.index, rows = result.rows, "chunk done");
    }
}

/// The key of row `line` (1-based) of `chunk`, read again: a value of
/// that row the target refused. A consistent snapshot reads the same rows
/// in the same (primary key) order; `None` when the chunk cannot be read
/// again or has fewer rows now.
async fn refused_key<R: SnapshotReader>(
    reader: &mut R,
    chunk: &Chunk,
    schema: &TableSchema,
    line: usize,
) -> Option<String> {
    let ChunkData::Rows(mut rows) = reader.read(chunk, schema).await.ok()? else {
        return None;
    };
    let mut n = 0;
    while let Some(row) = rows.next().await {
        n += 1;
        let row = row.ok()?;
        if n == line {
            return Some(schema.key_text(&row.values));
        }
    }
    None
}

/// What to do about a value the target column's type refused in the load.
fn refused_fix(config: &Config, schema: &TableSchema, column: Option<&str>) -> String {
    let overridden = column.and_then(|c| {
        config
            .tables
            .column_override(&schema.id, c)
            .and_then(|o| o.pg_type.as_deref())
    });
    match (column, overridden) {
        (Some(c), Some(ty)) => format!(
            "the column's type comes from the override `tables.columns.\"{}.{c}\".type = \"{ty}\"`: fix the value on the source (the chunk is read again when ferry run starts), or choose a type that takes every value of the column and start a new full load (`ferry cleanup --state`, drop the target tables, `ferry run`)",
            schema.id
        ),
        _ => "fix the value on the source (the chunk is read again when ferry run starts), or map the column to a type that takes it and start a new full load (`ferry cleanup --state`, drop the target tables, `ferry run`)".to_owned(),
    }
}

/// `maintenance_work_mem` of an index-building session, in kB, when the
/// server's is lower: the sort of a 2M-row integer key (about 80 MB)
/// stays in memory instead of spilling to temporary files. The target
/// uses up to this much per index worker, only while post-data builds.
const INDEX_SORT_KB: i64 = 256 * 1024;

/// Raise the session's `maintenance_work_mem` to [`INDEX_SORT_KB`] when lower.
async fn index_session(target: &tokio_postgres::Client) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT set_config('maintenance_work_mem', '{INDEX_SORT_KB}kB', false)
           FROM pg_settings
          WHERE name = 'maintenance_work_mem' AND setting::int8 < {INDEX_SORT_KB}"
    );
    target
        .batch_execute(&sql)
        .await
        .context("setting maintenance_work_mem for the index builds")?;
    Ok(())
}

/// Build the post-data objects (indexes, constraints, triggers) after the
/// load: index and key builds several at a time (each session with
/// [`INDEX_SORT_KB`] of sort memory), then the rest in order.
/// Each index commits with its `done` mark; the rest (foreign keys `NOT
/// VALID`, triggers, attachments: each quick) commit together with theirs
/// in one transaction. Either way a resumed run builds only what is
/// missing, and never an object without its mark or a mark without its
/// object. Statements that wait for catch-up
/// ([`ferry_core::source::AFTER_CATCH_UP`]) are left to
/// [`build_after_catch_up`]. `target` is one of the sessions (a new one
/// costs a login): it comes back with a raised `maintenance_work_mem`;
/// `spare` (the load's sessions) serve as the others before new ones.
/// Returns the other workers' sessions, idle, and the spare ones left.
pub async fn build_post_data(
    config: &Config,
    state: &StateStore,
    target: &mut tokio_postgres::Client,
    spare: Vec<tokio_postgres::Client>,
) -> anyhow::Result<Vec<tokio_postgres::Client>> {
    build(config, state, false, target, spare).await
}

/// Build the post-data statements that wait until catch-up has passed the
/// stream's start (a watermark load's unique indexes and the foreign keys
/// that need them); the same way and with the same `done` marks as
/// [`build_post_data`], so a crash before or during it builds what is
/// missing on the next run's catch-up. Returns how many were built.
pub async fn build_after_catch_up(
    config: &Config,
    state: &StateStore,
    target: &mut tokio_postgres::Client,
) -> anyhow::Result<usize> {
    let pending = pending_after_catch_up(target, state).await?;
    if pending > 0 {
        build(config, state, true, target, Vec::new()).await?;
    }
    Ok(pending)
}

/// How many post-data statements still wait for catch-up.
pub async fn pending_after_catch_up(
    target: &tokio_postgres::Client,
    state: &StateStore,
) -> anyhow::Result<usize> {
    let (_, stmts) = plan_store::pending_post_data(target, state).await?;
    Ok(stmts
        .iter()
        .filter(|s| ferry_core::source::after_catch_up(&s.kind))
        .count())
}

/// The index and key builds the workers share. A group of index builds
/// in one transaction ([`plan_store::run_post_group`]) holds SHARE locks
/// on several tables until its commit; a key added meanwhile takes ACCESS
/// EXCLUSIVE locks, on every partition of a partitioned table one after
/// the other, and could wait for the group while holding a lock the group
/// waits for (a deadlock). So a group takes a second build only when no
/// key is left to add, queued or being added: after that every lock taken
/// is a SHARE lock, and none waits for another.
struct BuildQueue {
    items: VecDeque<plan_store::PostStatement>,
    /// Keys and other builds that are not plain indexes, queued or running.
    keys_left: usize,
}

impl BuildQueue {
    fn new(items: Vec<plan_store::PostStatement>) -> Self {
        let keys_left = items.iter().filter(|s| !plan_store::groupable(s)).count();
        BuildQueue {
            items: items.into(),
            keys_left,
        }
    }

    /// The next build to join an open group, if one may.
    fn next_for_group(&mut self) -> Option<plan_store::PostStatement> {
        if self.keys_left > 0 {
            return None;
        }
        self.items.pop_front()
    }
}

/// Build the pending post-data statements that wait for catch-up
/// (`after_catch_up`) or the others; `target` is the first worker's
/// session and then runs the statements in order; the other workers take
/// a `spare` session each while there is an open one, else log in.
async fn build(
    config: &Config,
    state: &StateStore,
    after_catch_up: bool,
    target: &mut tokio_postgres::Client,
    mut spare: Vec<tokio_postgres::Client>,
) -> anyhow::Result<Vec<tokio_postgres::Client>> {
    let (preamble, stmts) = plan_store::pending_post_data(target, state).await?;
    let stmts: Vec<_> = stmts
        .into_iter()
        .filter(|s| ferry_core::source::after_catch_up(&s.kind) == after_catch_up)
        .collect();
    let (parallel, sequential): (Vec<_>, Vec<_>) = stmts.into_iter().partition(|s| s.parallel);
    let workers = config
        .load
        .index_parallelism
        .unwrap_or_else(|| config.load.effective_parallelism())
        .min(parallel.len().max(1));
    info!(
        indexes = parallel.len(),
        other = sequential.len(),
        workers,
        after_catch_up,
        "building post-data objects"
    );
    let queue = Arc::new(Mutex::new(BuildQueue::new(parallel)));
    let mut set = tokio::task::JoinSet::new();
    spare.retain(|c| !c.is_closed());
    for _ in 1..workers {
        let (config, state, queue, preamble) = (
            config.clone(),
            state.clone(),
            queue.clone(),
            preamble.clone(),
        );
        let session = spare.pop();
        set.spawn(async move {
            let mut target = match session {
                Some(s) => s,
                None => ferry_postgres::connect::connect(&config.target, "target").await?,
            };
            build_worker(&mut target, &state, &queue, &preamble, after_catch_up).await?;
            anyhow::Ok(target)
        });
    }
    // The caller's session is the first worker, beside the others. The
    // first failure is reported at once: the builds still running end
    // with their sessions (rolled back, unmarked, as after a crash).
    let own = build_worker(target, state, &queue, &preamble, after_catch_up);
    let others = async {
        while let Some(res) = set.join_next().await {
            spare.push(res.context("index build task panicked")??);
        }
        anyhow::Ok(())
    };
    tokio::try_join!(own, others)?;
    if after_catch_up {
        // The applier writes these tables meanwhile: one short lock at a time.
        for stmt in &sequential {
            plan_store::run_post_statement(target, state, &preamble, stmt).await?;
        }
    } else if !sequential.is_empty() {
        // Nothing else uses the tables yet: one transaction, one commit.
        let started = std::time::Instant::now();
        plan_store::run_post_statements(target, state, &preamble, &sequential).await?;
        info!(
            statements = sequential.len(),
            secs = started.elapsed().as_secs_f64(),
            "built the other post-data objects"
        );
    }
    Ok(spare)
}

/// One post-data worker: take builds from `queue` until it is empty.
async fn build_worker(
    target: &mut tokio_postgres::Client,
    state: &StateStore,
    queue: &Mutex<BuildQueue>,
    preamble: &str,
    after_catch_up: bool,
) -> anyhow::Result<()> {
    index_session(target).await?;
    let pop = || queue.lock().ok().and_then(|mut q| q.items.pop_front());
    while let Some(stmt) = pop() {
        let key = !plan_store::groupable(&stmt);
        if after_catch_up {
            // The applier writes these tables: one build per commit.
            let started = std::time::Instant::now();
            plan_store::run_post_statement(target, state, preamble, &stmt).await?;
            info!(kind = %stmt.kind, name = %stmt.name, secs = started.elapsed().as_secs_f64(), "built");
            continue;
        }
        // Quick index builds in a row share a transaction, once no key is
        // left to add (see `BuildQueue`).
        let next = || queue.lock().ok()?.next_for_group();
        let built = plan_store::run_post_group(target, state, preamble, stmt, next).await?;
        if key && let Ok(mut q) = queue.lock() {
            q.keys_left -= 1;
        }
        for (stmt, took) in built {
            info!(kind = %stmt.kind, name = %stmt.name, secs = took.as_secs_f64(), "built");
        }
    }
    Ok(())
}
