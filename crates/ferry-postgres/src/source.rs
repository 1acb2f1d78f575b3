//! PostgreSQL behind the source seam ([`ferry_core::source`]).
//!
//! - capture: a publication (or the DBA's) and a logical slot created with
//!   an exported snapshot ([`crate::slot`]); with `postgres.existing_slot`
//!   the user's slot is never created or dropped: the snapshot comes from a
//!   temporary slot and the user's slot is advanced to its position (again
//!   after a crash in the schema stage); a resumed load reads a new snapshot
//!   of a temporary slot;
//! - load: sessions importing that snapshot, each chunk a binary
//!   `COPY … TO STDOUT` passed through untouched ([`crate::snapshot`]);
//! - target schema: `pg_dump` pre- and post-data ([`crate::dump`]) in the
//!   load snapshot (`--snapshot`), the tables' catalog re-read in it
//!   ([`Source::catalog_at`](source::Source::catalog_at)); a schema change
//!   committed before the dump is done makes ferry take a new snapshot
//!   ([`crate::schema_hold`]);
//! - changes: pgoutput from the slot ([`crate::stream`]), with the table's
//!   real key put back on REPLICA IDENTITY FULL relations;
//! - probe: `pg_current_wal_lsn()`, heartbeats as logical messages, the
//!   slot's retained WAL; supervision: the partition watch
//!   ([`crate::partitions`]);
//! - cutover: fence with `default_transaction_read_only` and ended
//!   sessions, final position from a logical message, sequences and row
//!   counts; release drops the slot and publication.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::config::Config;
use ferry_core::schema::quote_ident;
use ferry_core::source::{
    self, ChangeOptions, Chunk, ChunkData, PostStatement, Released, Retention, SequenceValue,
    SuperviseContext, TargetSchema,
};
use ferry_core::{Error, Event, Lsn, ReplicaIdentity, TableId, TableSchema};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::{debug, info};

use crate::catalog::{SharedCatalog, SourceCatalog, read_catalog};
use crate::connect::{connect, query_error};
use crate::replication::ReplicationConnection;
use crate::schema_hold::Fingerprint;
use crate::slot::{CreatedSlot, Publish};
use crate::snapshot::SnapshotSession;
use crate::stream::{CatalogTypeResolver, PgChangeStream, StreamConfig, StreamHandle, StreamHooks};

/// Snapshots whose schema changed while ferry copied it before ferry
/// gives up for this run ([`crate::schema_hold`]).
const HOLD_ATTEMPTS: u32 = 10;

/// How long ended source sessions may take to go away when fencing.
const SESSIONS_GONE_WITHIN: Duration = Duration::from_secs(30);

/// How long a spare source session ([`Spare`]) is kept for the next step.
const SPARE_FOR: Duration = Duration::from_secs(5);

/// A source session kept for the next step of a first run's start (a login
/// each costs the load's start a few milliseconds): the catalog read's,
/// taken by the capture's preparation and then by its start. Dropped after
/// [`SPARE_FOR`] when nothing took it (a run resuming past the schema
/// stage, `ferry plan`), so no idle session stays open on the source.
#[derive(Clone, Default)]
struct Spare(Arc<std::sync::Mutex<Option<(u64, Client)>>>);

impl Spare {
    fn take(&self) -> Option<Client> {
        let mut slot = self.0.lock().ok()?;
        slot.take().map(|(_, c)| c).filter(|c| !c.is_closed())
    }

    /// Keep `client` (in place of one kept before) for [`SPARE_FOR`].
    fn keep(&self, client: Client) {
        static KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Ok(mut slot) = self.0.lock() else {
            return;
        };
        *slot = Some((id, client));
        let kept = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_FOR).await;
            if let Some(kept) = kept.upgrade()
                && let Ok(mut slot) = kept.lock()
                && slot.as_ref().is_some_and(|(i, _)| *i == id)
            {
                *slot = None;
            }
        });
    }
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spare")
    }
}

/// A PostgreSQL source, configured by `config.source` and `config.postgres`.
#[derive(Debug, Clone)]
pub struct PgSource {
    config: Config,
    /// Changes of transactions with a replication origin starting with
    /// this are dropped (the reverse stream of a fallback, see
    /// [`crate::fallback`]).
    skip_origin_prefix: Option<String>,
    spare: Spare,
    /// The read [`Self::share_catalog`] shares with the checks, taken by
    /// the next [`source::Source::catalog`].
    shared: Arc<std::sync::Mutex<Option<SharedCatalog>>>,
}

impl PgSource {
    pub fn new(config: Config) -> Self {
        PgSource {
            config,
            skip_origin_prefix: None,
            spare: Spare::default(),
            shared: Arc::default(),
        }
    }

    /// A source whose stream drops what sessions with a replication origin
    /// named `prefix…` committed: what ferry itself applied there.
    pub fn skipping_origins(config: Config, prefix: &str) -> Self {
        PgSource {
            config,
            skip_origin_prefix: Some(prefix.to_owned()),
            spare: Spare::default(),
            shared: Arc::default(),
        }
    }

    async fn client(&self) -> Result<Client, Error> {
        connect(&self.config.source, "source").await
    }

    /// A catalog read for the checks of `ferry plan`
    /// ([`crate::preflight::check_source_sharing`]) to share with the next
    /// [`source::Source::catalog`] of this source (one read where there
    /// were two); each call starts a new one, so a later attempt reads
    /// afresh.
    pub fn share_catalog(&self) -> SharedCatalog {
        let shared = SharedCatalog::default();
        if let Ok(mut slot) = self.shared.lock() {
            *slot = Some(shared.clone());
        }
        shared
    }

    /// The spare session ([`Spare`]) if one is kept, else a new one.
    async fn session(&self) -> Result<Client, Error> {
        match self.spare.take() {
            Some(client) => Ok(client),
            None => self.client().await,
        }
    }
}

impl source::Catalog for SourceCatalog {
    fn tables(&self) -> Vec<source::SourceTable> {
        self.tables
            .iter()
            .map(|t| source::SourceTable {
                schema: t.schema.clone(),
                row_estimate: t.row_estimate,
                bytes: Some(t.bytes),
            })
            .collect()
    }
}

/// An exported snapshot and the replication connection that keeps it
/// valid (ferry's slot, or a temporary one).
#[derive(Debug)]
pub struct PgSnapshot {
    conn: ReplicationConnection,
    name: String,
    position: Lsn,
    endpoint: ferry_core::config::Endpoint,
    /// The schema dumped at the snapshot and found unchanged since
    /// ([`crate::schema_hold`]), for [`source::Source::target_schema`].
    dump: tokio::sync::Mutex<Option<crate::dump::SchemaDump>>,
    /// The tables as the snapshot sees them, read while `pg_dump` ran,
    /// for [`source::Source::catalog_at`] with the same catalog.
    tables_at: std::sync::Mutex<Option<TablesAt>>,
}

/// The tables a snapshot sees: those published (or in the catalog read
/// before it), and those left out of the publication.
type TablesRead = (
    Vec<crate::catalog::SourceTable>,
    Vec<crate::catalog::SourceTable>,
);

/// What [`PgSource::tables_at`] read, with the OIDs of the catalog it was
/// read against.
#[derive(Debug)]
struct TablesAt {
    catalog: Vec<u32>,
    published: Vec<crate::catalog::SourceTable>,
    left: Vec<crate::catalog::SourceTable>,
}

impl PgSnapshot {
    /// The tables read at this snapshot against `catalog`, once.
    fn take_tables_at(&self, catalog: &SourceCatalog) -> Option<TablesRead> {
        let oids: Vec<u32> = catalog.tables.iter().map(|t| t.oid).collect();
        let taken = self.tables_at.lock().ok()?.take()?;
        (taken.catalog == oids).then_some((taken.published, taken.left))
    }

    fn keep_tables_at(&self, catalog: &SourceCatalog, (published, left): TablesRead) {
        if let Ok(mut kept) = self.tables_at.lock() {
            *kept = Some(TablesAt {
                catalog: catalog.tables.iter().map(|t| t.oid).collect(),
                published,
                left,
            });
        }
    }
}

impl source::Snapshot for PgSnapshot {
    type Position = Lsn;
    type Reader = PgSnapshotReader;

    fn position(&self) -> Lsn {
        self.position
    }

    async fn reader(&self) -> Result<PgSnapshotReader, Error> {
        Ok(PgSnapshotReader(
            SnapshotSession::open(&self.endpoint, &self.name).await?,
        ))
    }

    async fn release(self) {
        self.conn.close().await;
    }
}

/// A session inside the exported snapshot.
#[derive(Debug)]
pub struct PgSnapshotReader(SnapshotSession);

impl source::SnapshotReader for PgSnapshotReader {
    async fn read(&mut self, chunk: &Chunk, schema: &TableSchema) -> Result<ChunkData, Error> {
        let bytes = self.0.copy_out(chunk, schema).await?;
        Ok(ChunkData::BinaryCopy(Box::pin(bytes)))
    }
}

/// The running pgoutput stream.
#[derive(Debug)]
pub struct PgChanges(StreamHandle);

impl source::ChangeHandle<Lsn> for PgChanges {
    fn ack(&self, position: Lsn) {
        self.0.ack_handle().ack(position);
    }

    async fn shutdown(self) -> Result<(), Error> {
        self.0.shutdown().await
    }
}

/// A monitoring session on the source.
#[derive(Debug)]
pub struct PgProbe {
    client: Client,
    slot: String,
}

impl source::Probe<Lsn> for PgProbe {
    async fn head(&mut self) -> Result<Lsn, Error> {
        lsn(&self.client, "SELECT pg_current_wal_lsn()::text").await
    }

    /// A transactional message: its commit flushes the WAL before it, so a
    /// walsender can send past a head that sat in a record written but not
    /// yet flushed (a non-transactional message is not flushed before
    /// PostgreSQL 17). Decoded, it is an empty transaction.
    async fn heartbeat(&mut self) -> Result<Option<Lsn>, Error> {
        lsn(
            &self.client,
            "SELECT pg_logical_emit_message(true, 'ferry.heartbeat', now()::text)::text",
        )
        .await
        .map(Some)
    }

    async fn retention(&mut self) -> Result<Option<Retention>, Error> {
        // wal_status exists from PostgreSQL 13; to_jsonb reads it where it does.
        let row = self
            .client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, to_jsonb(s) ->> 'wal_status' FROM pg_replication_slots s WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .map_err(|e| query_error("reading the slot's retained WAL", e))?;
        Ok(row.map(|r| Retention {
            name: self.slot.clone(),
            retained_bytes: r.get::<_, Option<i64>>(0).map(|b| b.max(0) as u64),
            status: r.get(1),
        }))
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The source side of a cutover.
#[derive(Debug)]
pub struct PgCutover {
    client: Client,
    database: String,
    config: Config,
}

impl source::Cutover<Lsn> for PgCutover {
    fn fence_description(&self) -> String {
        format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on; end other sessions",
            quote_ident(&self.database)
        )
    }

    async fn fence(&mut self) -> Result<(), Error> {
        fence(&self.client, &self.database).await
    }

    async fn unfence(&mut self) -> Result<(), Error> {
        self.client
            .batch_execute(&format!(
                "ALTER DATABASE {} RESET default_transaction_read_only",
                quote_ident(&self.database)
            ))
            .await
            .map_err(|e| {
                query_error("unfencing the source", e).with_fix(format!(
                    "run: ALTER DATABASE {} RESET default_transaction_read_only",
                    quote_ident(&self.database)
                ))
            })
    }

    async fn final_position(&mut self) -> Result<Lsn, Error> {
        // The message's end is past every record inserted before it (also
        // unflushed async commits). Transactional, its commit flushes it and
        // everything before it (a walsender sends only flushed WAL), and an
        // idle stream carries it as an empty transaction.
        lsn(
            &self.client,
            "SELECT pg_logical_emit_message(true, 'ferry.heartbeat', 'cutover')::text",
        )
        .await
    }

    async fn sequences(&mut self) -> Result<Vec<SequenceValue>, Error> {
        let filter = self
            .config
            .tables
            .filter()
            .map_err(|e| Error::operator(format!("tables: {e}"), "fix the tables section"))?;
        let catalog = read_catalog(&self.client, &filter, &self.config.state.schema).await?;
        if let Some(unreadable) = catalog.unreadable_sequences() {
            return Err(Error::operator(
                format!(
                    "the source user may not read sequence {}, so its value cannot be carried",
                    unreadable.names
                ),
                format!(
                    "GRANT SELECT ON SEQUENCE {} TO <source user> and run the cutover again",
                    unreadable.quoted
                ),
            ));
        }
        let mut out = Vec::with_capacity(catalog.sequences.len());
        for seq in catalog.sequences {
            let name = seq.id.quoted();
            let row = self
                .client
                .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
                .await
                .map_err(|e| query_error(&format!("reading sequence {name} on the source"), e))?;
            out.push(SequenceValue {
                id: seq.id,
                owned_by: seq.owned_by,
                last_value: row.get(0),
                is_called: row.get(1),
            });
        }
        Ok(out)
    }

    /// The table's own rows: `ONLY` (an inheritance child is counted as
    /// the table it is, or not at all when it is not carried), a
    /// partitioned table through its root.
    async fn count_rows(&mut self, table: &TableId) -> Result<u64, Error> {
        let name = table.quoted();
        let own = crate::catalog::own_rows(&self.client, std::slice::from_ref(&name)).await?;
        let n: i64 = self
            .client
            .query_one(&format!("SELECT count(*) FROM {}", own[0]), &[])
            .await
            .map_err(|e| query_error(&format!("counting {name}"), e))?
            .get(0);
        Ok(n as u64)
    }
}

impl source::Source for PgSource {
    type Position = Lsn;
    type Catalog = SourceCatalog;
    type Snapshot = PgSnapshot;
    type Changes = PgChanges;
    type Probe = PgProbe;
    type Cutover = PgCutover;

    async fn catalog(&self) -> Result<SourceCatalog, Error> {
        let filter = self
            .config
            .tables
            .filter()
            .map_err(|e| Error::operator(format!("tables: {e}"), "fix the tables section"))?;
        let client = self.session().await?;
        let shared = self.shared.lock().ok().and_then(|mut s| s.take());
        let catalog =
            SharedCatalog::read(shared.as_ref(), &client, &filter, &self.config.state.schema)
                .await?;
        self.spare.keep(client);
        Ok(catalog)
    }

    async fn prepare_capture(&self, after_interrupted: bool) -> Result<(), Error> {
        let source = self.session().await?;
        let slot = &self.config.postgres.slot;
        // A slot created beforehand (postgres.existing_slot) is never
        // dropped: start_capture advances it instead.
        if !self.config.postgres.existing_slot
            && crate::slot::slot_info(&source, slot).await?.is_some()
        {
            if !after_interrupted {
                return Err(Error::operator(
                    format!(
                        "replication slot '{slot}' already exists on the source but this target has no record of creating it"
                    ),
                    format!(
                        "if it is left over from an earlier ferry attempt, drop it: SELECT pg_drop_replication_slot('{slot}'); otherwise set postgres.slot to another name"
                    ),
                ));
            }
            info!(slot = %slot, "dropping the slot left over by an interrupted first run");
            source
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .map_err(|e| query_error("dropping the leftover replication slot", e))?;
        }
        self.spare.keep(source);
        Ok(())
    }

    async fn start_capture(&self, catalog: &SourceCatalog) -> Result<PgSnapshot, Error> {
        // The replication connection of the first snapshot is opened beside
        // the source session (each is a handshake and a login); its error,
        // if any, is reported where it was before: after the publications.
        let (source, first) = tokio::join!(
            self.session(),
            ReplicationConnection::connect(&self.config.source)
        );
        let source = source?;
        let mut first = Some(first);
        let slot = &self.config.postgres.slot;
        // Insert-only tables go into their own publication, published for
        // inserts alone: a keyless table there keeps accepting UPDATE/DELETE.
        let filter = self
            .config
            .tables
            .filter()
            .map_err(|e| Error::operator(format!("tables: {e}"), "fix the tables section"))?;
        let (insert_only, tables): (Vec<_>, Vec<_>) = catalog
            .tables
            .iter()
            .map(|t| t.schema.id.clone())
            .partition(|id| filter.insert_only(id));
        let publication = &self.config.postgres.publication;
        crate::slot::ensure_publication(&source, publication, Some(&tables), Publish::All).await?;
        if !insert_only.is_empty() {
            crate::slot::ensure_publication(
                &source,
                &crate::slot::insert_only_publication(publication),
                Some(&insert_only),
                Publish::InsertOnly,
            )
            .await?;
        }
        // Before the slot: every DDL after its consistent point is in the
        // stream, everything before it is in the snapshot.
        if self.config.postgres.capture_ddl {
            crate::ddl_capture::install(&source, &self.config).await?;
            // Tables created since the catalog was read, before the capture
            // could publish them: published now, before the slot.
            crate::ddl_capture::publish_new(&source, &self.config).await?;
            info!("DDL capture installed on the source (event triggers ferry_ddl_*)");
        }
        let schemas = catalog.schemas();
        for attempt in 1..=HOLD_ATTEMPTS {
            let conn = match first.take() {
                Some(conn) => conn?,
                None => ReplicationConnection::connect(&self.config.source).await?,
            };
            let created = if self.config.postgres.existing_slot {
                crate::slot::snapshot_existing_slot(conn, &source, slot).await?
            } else {
                crate::slot::create_slot(conn, slot).await?
            };
            let snapshot = snapshot_of(created, &self.config)?;
            // A table whose CREATE ran before the capture was installed and
            // committed after `publish_new` is in the snapshot but in no
            // publication: its rows since would never be streamed. The slot
            // waited for that transaction, so it is visible now: publish it
            // and take a new snapshot that has it in the publication (a slot
            // created beforehand is advanced again, to the new snapshot).
            let mut read_at = None;
            if self.config.postgres.capture_ddl {
                read_at = Some(self.tables_at(&snapshot, catalog).await?);
            }
            if read_at.as_ref().is_some_and(|(_, left)| !left.is_empty()) {
                info!(
                    attempt,
                    "tables created while ferry started are not in its publication yet; publishing them and taking a new snapshot"
                );
                crate::ddl_capture::publish_new(&source, &self.config).await?;
                snapshot.conn.close().await;
                if !self.config.postgres.existing_slot {
                    drop_slot_once_released(&source, slot).await?;
                }
                continue;
            }
            // Without DDL capture the tables are read beside pg_dump.
            let read_beside = read_at.is_none().then_some(catalog);
            match self
                .dump_at(&source, &snapshot, &schemas, read_beside)
                .await?
            {
                Some((dump, read_beside)) => {
                    *snapshot.dump.lock().await = dump;
                    if let Some(read) = read_at.or(read_beside) {
                        snapshot.keep_tables_at(catalog, read);
                    }
                    info!(slot = %slot, consistent_point = %snapshot.position, snapshot = %snapshot.name, "load snapshot exported");
                    return Ok(snapshot);
                }
                None => {
                    info!(
                        attempt,
                        "the source schema changed while ferry copied it; taking a new snapshot"
                    );
                    snapshot.conn.close().await;
                    if !self.config.postgres.existing_slot {
                        drop_slot_once_released(&source, slot).await?;
                    }
                }
            }
        }
        Err(Error::transient(format!(
            "the source schema changed right after each of {HOLD_ATTEMPTS} load snapshots; ferry run starts again"
        )))
    }

    async fn catalog_at(
        &self,
        snapshot: &PgSnapshot,
        catalog: &SourceCatalog,
    ) -> Result<Option<SourceCatalog>, Error> {
        let (tables, left) = match snapshot.take_tables_at(catalog) {
            Some(read) => read,
            None => self.tables_at(snapshot, catalog).await?,
        };
        for t in &left {
            tracing::warn!(table = %t.schema.id, "table created while ferry started and not in its publication: created on the target, its rows are not carried");
        }
        Ok(Some(SourceCatalog {
            tables,
            sequences: catalog.sequences.clone(),
            types: catalog.types.clone(),
        }))
    }

    async fn new_snapshot(&self) -> Result<PgSnapshot, Error> {
        let mut conn = ReplicationConnection::connect(&self.config.source).await?;
        let temp_slot = format!(
            "{}_resync_{}",
            self.config.postgres.slot,
            std::process::id()
        );
        let created = conn.create_temporary_slot(&temp_slot).await?;
        let name = created.snapshot_name.clone().ok_or_else(|| {
            Error::operator(
                "the temporary slot exported no snapshot",
                "report this as a ferry bug",
            )
        })?;
        Ok(PgSnapshot {
            conn,
            name,
            position: created.consistent_point,
            endpoint: self.config.source.clone(),
            dump: tokio::sync::Mutex::new(None),
            tables_at: std::sync::Mutex::new(None),
        })
    }

    async fn target_schema(
        &self,
        catalog: &SourceCatalog,
        snapshot: &PgSnapshot,
    ) -> Result<TargetSchema, Error> {
        let dumped = snapshot.dump.lock().await.take();
        let dump = match dumped {
            Some(d) => d,
            None => {
                crate::dump::dump_schema(
                    &self.config.source,
                    &self.client().await?,
                    &catalog.schemas(),
                    &self.config.state.schema,
                    Some(&snapshot.name),
                )
                .await?
            }
        };
        let post = crate::dump::split_post_data(&dump.post_data);
        let statement = |e: crate::dump::DumpEntry| PostStatement {
            kind: e.kind,
            name: e.name,
            sql: e.sql,
        };
        Ok(TargetSchema {
            pre_data: dump.pre_data,
            post_preamble: post.preamble,
            post_parallel: post.parallel.into_iter().map(statement).collect(),
            post_sequential: post.sequential.into_iter().map(statement).collect(),
        })
    }

    fn plan_chunks(
        &self,
        catalog: &SourceCatalog,
        chunk_rows: u64,
        split_for: Option<usize>,
    ) -> Vec<Chunk> {
        match split_for {
            Some(workers) => crate::snapshot::plan_load(&catalog.tables, chunk_rows, workers),
            None => catalog
                .tables
                .iter()
                .flat_map(|t| crate::snapshot::plan_chunks(t, chunk_rows))
                .collect(),
        }
    }

    async fn changes(
        &self,
        catalog: &SourceCatalog,
        from: Lsn,
        options: ChangeOptions<Lsn>,
    ) -> Result<(mpsc::Receiver<Event<Lsn>>, PgChanges), Error> {
        // The replication session logs in beside the one that checks the
        // slot (each login costs the stream's start a few milliseconds);
        // it starts nothing, and its error is reported, only after the
        // checks, as before.
        let (source, conn) = tokio::join!(
            self.client(),
            ReplicationConnection::connect(&self.config.source)
        );
        let source = Arc::new(source?);
        let pg = &self.config.postgres;
        crate::slot::verify_slot(&source, &pg.slot, from).await?;
        // Refreshed on every start (the functions carry the tables filter);
        // withdrawn consent removes it.
        if pg.capture_ddl {
            crate::ddl_capture::install(&source, &self.config).await?;
        } else if crate::ddl_capture::remove(&source, &self.config).await? {
            info!("DDL capture removed from the source (postgres.capture_ddl is off)");
        }
        let conn = conn?;
        let mut config = StreamConfig::new(&pg.slot, &pg.publication, from);
        config.proto_version = pg.proto_version;
        config.channel_bytes = options.channel_bytes;
        config.spill_threshold = options.spill_threshold;
        config.skip_origin_prefix = self.skip_origin_prefix.clone();
        config.extra_publications = crate::slot::stream_publications(&source, &pg.publication)
            .await?
            .split_off(1);
        let resolver = Arc::new(CatalogTypeResolver::new(source.clone()));
        let mut fix = full_identity_keys(catalog);
        let mut then = options.map;
        let hooks = StreamHooks {
            map: Some(Box::new(move |event| {
                let event = fix(event)?;
                match then.as_mut() {
                    Some(f) => f(event),
                    None => Some(event),
                }
            })),
        };
        let (rx, handle) = PgChangeStream::start_with(conn, resolver, config, hooks).await?;
        Ok((rx, PgChanges(handle)))
    }

    async fn probe(&self) -> Result<PgProbe, Error> {
        Ok(PgProbe {
            client: self.client().await?,
            slot: self.config.postgres.slot.clone(),
        })
    }

    fn supervise(
        &self,
        context: SuperviseContext<Lsn>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::partitions::watch(self.config.source.clone(), context)
    }

    async fn cutover(&self) -> Result<PgCutover, Error> {
        let url = self
            .config
            .source
            .url
            .parsed()
            .map_err(|e| Error::operator(format!("source.url: {e}"), "fix source.url"))?;
        Ok(PgCutover {
            client: self.client().await?,
            database: url.path().trim_start_matches('/').to_owned(),
            config: self.config.clone(),
        })
    }

    fn release_plan(&self, keep: bool) -> String {
        let pg = &self.config.postgres;
        if pg.existing_slot {
            format!(
                "keep slot '{}' (created beforehand: yours to drop){}",
                pg.slot,
                if keep {
                    " and the publication"
                } else {
                    "; drop the publication if ferry created it"
                }
            )
        } else if keep {
            "keep the slot and publication".into()
        } else {
            "drop the slot and publication".into()
        }
    }

    async fn release_capture(&self, keep: bool) -> Result<Released, Error> {
        let pg = &self.config.postgres;
        if pg.existing_slot {
            tracing::warn!(slot = %pg.slot, fix = %format!("SELECT pg_drop_replication_slot('{}')", pg.slot),
                "replication slot created beforehand kept (postgres.existing_slot): it is yours and retains WAL on the source until you drop it");
        }
        let note = if pg.existing_slot {
            crate::slot::existing_slot_kept(&pg.slot)
        } else if keep {
            "kept slot and publication".to_owned()
        } else {
            "dropped slot and publication".to_owned()
        };
        let source = self.client().await?;
        // A fenced source database defaults new sessions to read-only.
        source
            .batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| query_error("preparing to drop the slot and publication", e))?;
        // The DDL capture goes in every case: nothing reads its messages
        // after the cutover.
        if crate::ddl_capture::remove(&source, &self.config).await? {
            info!("DDL capture removed from the source (event triggers ferry_ddl_*)");
        }
        if keep {
            return Ok(Released {
                dropped: false,
                note,
            });
        }
        if !pg.existing_slot {
            drop_slot_once_released(&source, &pg.slot).await?;
        }
        crate::slot::drop_publication(&source, &pg.publication).await?;
        Ok(Released {
            dropped: !pg.existing_slot,
            note,
        })
    }
}

impl PgSource {
    /// `pg_dump --snapshot` of `schemas` (none with existing target
    /// tables), if no schema change of their tables committed between the
    /// snapshot and the end of the dump; `None` otherwise.
    async fn dump_at(
        &self,
        current: &Client,
        snapshot: &PgSnapshot,
        schemas: &[String],
        catalog: Option<&SourceCatalog>,
    ) -> Result<Option<(Option<crate::dump::SchemaDump>, Option<TablesRead>)>, Error> {
        // The fingerprint as the snapshot sees it, read while pg_dump runs
        // (both see the snapshot, so neither waits for the other); with
        // `catalog`, the tables at the snapshot too, on the same session
        // (a failure there is left for `catalog_at` to read again).
        let fingerprint = async {
            let session = SnapshotSession::open(&snapshot.endpoint, &snapshot.name).await?;
            let at = Fingerprint::at(session.client(), schemas).await;
            let mut tables = None;
            if let (Ok(_), Some(catalog)) = (&at, catalog) {
                tables = self.tables_in(session.client(), catalog).await.ok();
            }
            let _ = session.close().await;
            at.map(|at| (at, tables))
        };
        // The capture's session, outside the snapshot: pg_dump's version
        // check, then the current fingerprint (no login before pg_dump).
        let dump = async {
            match self.config.target_tables.existing() {
                true => Ok(None),
                false => crate::dump::dump_schema(
                    &self.config.source,
                    current,
                    schemas,
                    &self.config.state.schema,
                    Some(&snapshot.name),
                )
                .await
                .map(Some),
            }
        };
        let (at, dump) = tokio::join!(fingerprint, dump);
        let (at, tables) = at?;
        // A failed dump (a table dropped since) is retried like a mixed one.
        if !at.unchanged(current).await? {
            return Ok(None);
        }
        Ok(Some((dump?, tables)))
    }
}

/// Drop slot `name`; the walsender may take a moment to let go of it.
async fn drop_slot_once_released(source: &Client, name: &str) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        match crate::slot::drop_slot(source, name).await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                debug!(error = %e, "slot still active; retrying the drop");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn snapshot_of(created: CreatedSlot, config: &Config) -> Result<PgSnapshot, Error> {
    let name = created
        .snapshot_name()
        .ok_or_else(|| {
            Error::operator(
                "the server did not export a snapshot with the new slot",
                "report this as a ferry bug",
            )
        })?
        .to_owned();
    let position = created.consistent_point();
    Ok(PgSnapshot {
        conn: created.into_connection(),
        name,
        position,
        endpoint: config.source.clone(),
        dump: tokio::sync::Mutex::new(None),
        tables_at: std::sync::Mutex::new(None),
    })
}

/// pgoutput flags every column as part of the key under REPLICA IDENTITY
/// FULL; the applier matches on the table's real primary key (none: all
/// columns, one row at a time), so Relation events get the catalog's key.
fn full_identity_keys(
    catalog: &SourceCatalog,
) -> impl FnMut(Event<Lsn>) -> Option<Event<Lsn>> + Send + 'static {
    let keys: HashMap<TableId, Vec<String>> = catalog
        .tables
        .iter()
        .map(|t| {
            (
                t.schema.id.clone(),
                t.schema.key_names().map(str::to_owned).collect(),
            )
        })
        .collect();
    move |event| match event {
        Event::Relation(schema) if schema.replica_identity == ReplicaIdentity::Full => {
            let names = keys.get(&schema.id).cloned().unwrap_or_default();
            let key: Option<Vec<usize>> = names.iter().map(|n| schema.column_index(n)).collect();
            let mut fixed = TableSchema::clone(&schema);
            fixed.key = key.unwrap_or_default();
            Some(Event::Relation(Arc::new(fixed)))
        }
        other => Some(other),
    }
}

async fn lsn(client: &Client, sql: &str) -> Result<Lsn, Error> {
    let text: String = client
        .query_one(sql, &[])
        .await
        .map_err(|e| query_error(sql, e))?
        .get(0);
    text.parse().map_err(|e| {
        Error::operator(
            format!("reading a source position: {e}"),
            "report this as a ferry bug",
        )
    })
}

async fn fence(source: &Client, db: &str) -> Result<(), Error> {
    source
        .batch_execute(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            quote_ident(db)
        ))
        .await
        .map_err(|e| {
            query_error("fencing the source", e).with_fix(
                "connect as the database owner or a superuser, or cut over without --fence",
            )
        })?;
    // Sessions opened before the ALTER keep writing: end them, except ferry's
    // own (application_name 'ferry'; the walsender is not a client backend).
    // Without pg_read_all_stats a role sees no backend_type of another
    // role's session (the application's): such a session is ended unless it
    // is a WAL sender or a superuser's (which only a superuser may end).
    let ended: Vec<i32> = source
        .query(
            // OFFSET 0 keeps the filter ahead of pg_terminate_backend.
            "SELECT pid FROM (SELECT a.pid FROM pg_stat_activity a
                WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                  AND a.application_name <> 'ferry'
                  AND (a.backend_type = 'client backend'
                       OR (a.backend_type IS NULL
                           AND a.pid NOT IN (SELECT w.pid FROM pg_stat_get_wal_senders() w)
                           AND EXISTS (SELECT 1 FROM pg_roles r
                                        WHERE r.oid = a.usesysid AND NOT r.rolsuper)))
                OFFSET 0) s
             WHERE pg_terminate_backend(pid)",
            &[],
        )
        .await
        .map_err(|e| query_error("ending writer sessions on the source", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // A session told to end may still be writing its commit record: the
    // final position is read only once every one of them is gone.
    let started = Instant::now();
    loop {
        let left: Vec<i32> = source
            .query(
                "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&ended],
            )
            .await
            .map_err(|e| query_error("waiting for ended sessions on the source", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if started.elapsed() > SESSIONS_GONE_WITHIN {
            return Err(Error::operator(
                format!(
                    "source sessions {left:?} did not end within {}s of pg_terminate_backend; the final position cannot be read safely",
                    SESSIONS_GONE_WITHIN.as_secs()
                ),
                "find what keeps those sessions alive (pg_stat_activity) and end them, then cut over again",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl PgSource {
    /// The selected tables `snapshot` sees, split into those ferry carries
    /// (in `catalog`, read before the slot, or in its publication at the
    /// snapshot) and those created while it started that are in neither.
    async fn tables_at(
        &self,
        snapshot: &PgSnapshot,
        catalog: &SourceCatalog,
    ) -> Result<TablesRead, Error> {
        let session = SnapshotSession::open(&snapshot.endpoint, &snapshot.name).await?;
        self.tables_in(session.client(), catalog).await
    }

    /// [`Self::tables_at`] on `client`, a session in the snapshot.
    async fn tables_in(
        &self,
        client: &Client,
        catalog: &SourceCatalog,
    ) -> Result<TablesRead, Error> {
        let filter = self
            .config
            .tables
            .filter()
            .map_err(|e| Error::operator(format!("tables: {e}"), "fix the tables section"))?;
        let at = crate::catalog::read_tables(client, &filter, &self.config.state.schema).await?;
        let publication = &self.config.postgres.publication;
        let publications = [
            publication.clone(),
            crate::slot::insert_only_publication(publication),
        ];
        let published = crate::slot::published_at(client, &publications).await?;
        let before: Vec<u32> = catalog.tables.iter().map(|t| t.oid).collect();
        Ok(at.into_iter().partition(|t| {
            before.contains(&t.oid) || published.as_ref().is_none_or(|p| p.contains(&t.oid))
        }))
    }
}
