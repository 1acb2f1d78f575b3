//! Row-based binlog → ferry change events.
//!
//! Consumes binlog events as `mysql_common` parses them (from a live
//! replication stream, [`stream`], or a file, [`file`]) and emits
//! [`Decoded`] items: ferry [`Event`]s in source commit order plus the DDL
//! statements the caller must act on. Pure: no I/O, no clock.
//!
//! What each event becomes:
//!
//! | event | result |
//! |---|---|
//! | MySQL GTID / GTID_TAGGED / ANONYMOUS_GTID | remembered: commit time, the GTID added to the set at commit |
//! | MariaDB GTID (162) | `Begin` (unless standalone: DDL follows) |
//! | QUERY `BEGIN` | `Begin` |
//! | TABLE_MAP | table resolved: catalog schema (given with [`BinlogDecoder::set_table`]) and/or optional metadata |
//! | WRITE/UPDATE/DELETE_ROWS v1/v2, PARTIAL_UPDATE_ROWS | `Relation` when the table's schema was not yet announced, then one `Change` per row, full before and after images |
//! | XID, QUERY `COMMIT` / `ROLLBACK` | `Commit` at the event's end, with the GTID set |
//! | QUERY `TRUNCATE [TABLE] t` | `Begin`, `Change::Truncate`, `Commit` |
//! | other QUERY outside a transaction (DDL) | [`Decoded::Ddl`] and a `Heartbeat` at its end |
//! | QUERY with DML inside a transaction | error: statement-based logging (`binlog_format` must be `ROW`) |
//! | TRANSACTION_PAYLOAD (MySQL 8 compression) | its inner events follow (the reader expands them); their commit carries the payload's end position |
//! | ROTATE | the file name; a `Heartbeat` at `new-file:4` for a real rotation |
//! | HEARTBEAT | a `Heartbeat` at the server's position (outside transactions) |
//! | PREVIOUS_GTIDS, MariaDB GTID_LIST | starting GTID set when none was given |
//! | FORMAT_DESCRIPTION, ANNOTATE_ROWS, ROWS_QUERY, BINLOG_CHECKPOINT, INTVAR, RAND, USER_VAR, STOP, ignorable events | nothing |
//! | INCIDENT, XA_PREPARE, MariaDB compressed events, START_ENCRYPTION, unknown events | error with the fix |
//!
//! Positions: a commit's position is the end of its XID/COMMIT event (where
//! a resumed dump starts), in the current file, with the executed GTID set
//! after this transaction when GTIDs are in use. A `Begin`'s
//! `final_position` is where the transaction's first event starts (its
//! GTID or BEGIN): the binlog does not announce the commit's offset up
//! front, but a consistent snapshot's binlog position always falls between
//! transactions, so "starts before the snapshot position" is exactly "the
//! snapshot holds it", which is what the per-table snapshot skip asks.
//!
//! Values follow [`value`]; zero dates by [`ZeroDatePolicy`], counted per
//! column ([`BinlogDecoder::zero_dates`]) and sent after each rows event's
//! changes as [`Event::Replaced`], so the applier commits the counts with
//! the rows. Partial JSON updates are applied
//! exactly to the before image (`binlog_row_image = FULL` required). Errors
//! name the binlog file:position, the table, the key and the column, never
//! other row values. A malformed event is an error, never a panic.

pub mod charset;
pub mod columns;
pub mod file;
pub mod gtid;
mod guard;
pub mod json;
mod rows;
pub mod stream;
pub mod value;

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use ferry_core::value::Timestamp;
use ferry_core::{
    Change, Error, Event, GtidSet, MySqlPosition, OldRow, Row, TableId, TableSchema, Value,
};
use mysql_common::binlog::consts::EventType;
use mysql_common::binlog::events::{
    Event as BinlogEvent, EventData, GtidEvent, PreviousGtidsEvent, QueryEvent, RotateEvent,
    RowsEventData, TableMapEvent,
};
use mysql_common::binlog::row::BinlogRow;
use mysql_common::binlog::value::BinlogValue;
use mysql_common::io::ParseBuf;

use self::columns::{MapError, MappedTable};
use self::gtid::GtidState;
use self::value::ConvError;

/// What to do with zero and partial dates (`0000-00-00`, `2024-00-10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroDatePolicy {
    /// Write NULL and count it per column (the default, as the loader does).
    #[default]
    Null,
    /// Stop with an error naming table, key and column.
    Error,
}

/// Which tables the decoder turns into changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Only tables given with [`BinlogDecoder::set_table`]; others are skipped.
    #[default]
    Listed,
    /// Every table; those without a catalog schema are described by the
    /// binlog's optional metadata (`binlog_row_metadata = FULL`).
    All,
}

/// Decoder settings.
#[derive(Debug, Clone, Default)]
pub struct DecoderOptions {
    pub zero_dates: ZeroDatePolicy,
    pub scope: Scope,
    /// `tables.columns` type overrides ([`crate::overrides`]).
    pub overrides: crate::overrides::Overrides,
}

/// One decoder output.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Event(Event<MySqlPosition>),
    /// A statement outside row events (DDL) committed at `position`. The
    /// caller re-reads the catalog for affected tables and calls
    /// [`BinlogDecoder::set_table`]; a TABLE_MAP that no longer matches the
    /// schema given is an error until it does.
    Ddl {
        database: String,
        statement: String,
        position: MySqlPosition,
        /// When the server wrote the statement.
        time: Timestamp,
    },
}

/// A GTID that becomes part of the executed set when its transaction commits.
#[derive(Debug, Clone)]
enum PendingGtid {
    MySql(String, u64),
    MariaDb(u32, u32, u64),
}

/// A TABLE_MAP kept for the row events that follow it.
#[derive(Debug)]
struct Mapped {
    tme: TableMapEvent<'static>,
    /// The TABLE_MAP's bytes: the same bytes again (the table in the next
    /// transaction) map the same way, so nothing is resolved twice.
    raw: Vec<u8>,
    /// `None`: out of scope, rows are skipped.
    table: Option<Arc<MappedTable>>,
}

/// Turns binlog events into ferry events; see the module documentation.
#[derive(Debug)]
pub struct BinlogDecoder {
    opts: DecoderOptions,
    file: String,
    gtid: GtidState,
    catalog: HashMap<TableId, TableSchema>,
    /// Column character sets from `information_schema` (see [`read_charsets`]).
    charsets: HashMap<TableId, Vec<Option<String>>>,
    maps: HashMap<u64, Mapped>,
    announced: HashMap<TableId, Arc<TableSchema>>,
    in_tx: bool,
    tx_changes: u64,
    tx_time: Timestamp,
    /// Commit time announced by a GTID event for the transaction that follows.
    next_tx_time: Option<Timestamp>,
    pending: Option<PendingGtid>,
    payload_end: Option<u64>,
    last_time: Timestamp,
    /// Offset where the event being decoded starts (the payload event's
    /// start for events inside a TRANSACTION_PAYLOAD).
    event_start: u64,
    zero_dates: BTreeMap<(TableId, String), u64>,
    /// Zero dates the rows event being decoded writes as NULL, per
    /// column: sent as [`Event::Replaced`] after its changes.
    event_zero_dates: BTreeMap<(TableId, String), u64>,
    server_version: Option<String>,
}

const LOG_EVENT_IGNORABLE_F: u16 = 0x80;
/// MySQL 8.0.26+ heartbeat (not in `mysql_common`'s event types).
const HEARTBEAT_LOG_EVENT_V2: u8 = 41;

/// MariaDB event types (not in `mysql_common`).
mod maria {
    pub const ANNOTATE_ROWS: u8 = 160;
    pub const BINLOG_CHECKPOINT: u8 = 161;
    pub const GTID: u8 = 162;
    pub const GTID_LIST: u8 = 163;
    pub const START_ENCRYPTION: u8 = 164;
    pub const QUERY_COMPRESSED: u8 = 165;
    pub const COMPRESSED_LAST: u8 = 171;
    /// GTID flag: a standalone event group (DDL), no BEGIN/COMMIT.
    pub const FL_STANDALONE: u8 = 1;
}

impl BinlogDecoder {
    /// A decoder reading from `start` (file name and, when GTIDs are used,
    /// the executed set there; the offset is not needed).
    pub fn new(opts: DecoderOptions, start: &MySqlPosition) -> Result<Self, Error> {
        let gtid = match &start.gtid {
            Some(g) => GtidState::parse(g.as_str()).map_err(|e| {
                Error::operator(
                    format!("start position {start}: {e}"),
                    "use the GTID set the server prints (@@gtid_binlog_pos or @@gtid_executed)",
                )
            })?,
            None => GtidState::Empty,
        };
        Ok(BinlogDecoder {
            opts,
            file: start.file.clone(),
            gtid,
            catalog: HashMap::new(),
            charsets: HashMap::new(),
            maps: HashMap::new(),
            announced: HashMap::new(),
            in_tx: false,
            tx_changes: 0,
            tx_time: Timestamp(0),
            next_tx_time: None,
            pending: None,
            payload_end: None,
            last_time: Timestamp(0),
            event_start: 0,
            zero_dates: BTreeMap::new(),
            event_zero_dates: BTreeMap::new(),
            server_version: None,
        })
    }

    /// Gives (or refreshes) a table's catalog schema; the table is in scope.
    pub fn set_table(&mut self, schema: TableSchema) {
        // TABLE_MAPs resolved against the old schema (or skipped while the
        // table was out of scope) are stale.
        self.forget_maps(&schema.id);
        self.catalog.insert(schema.id.clone(), schema);
    }

    /// The shape rows of `table` are decoded with now: the schema last
    /// announced in a `Relation`, else the one given with [`Self::set_table`].
    pub fn schema_of(&self, table: &TableId) -> Option<TableSchema> {
        self.announced
            .get(table)
            .map(|s| TableSchema::clone(s))
            .or_else(|| self.catalog.get(table).cloned())
    }

    /// Gives a table's column character sets (`CHARACTER_SET_NAME` in column
    /// order, `None` for non-character columns), used when the binlog does
    /// not carry them (`binlog_row_metadata` below FULL/MINIMAL).
    pub fn set_charsets(&mut self, table: TableId, charsets: Vec<Option<String>>) {
        self.forget_maps(&table);
        self.charsets.insert(table, charsets);
    }

    /// Drops the kept TABLE_MAPs of `table`, in scope or not, so its next
    /// TABLE_MAP is resolved afresh (the identical-bytes shortcut of
    /// [`Self::same_table_map`] never reuses a stale one).
    fn forget_maps(&mut self, table: &TableId) {
        self.maps.retain(|_, m| {
            m.tme.database_name() != table.schema.as_str()
                || m.tme.table_name() != table.name.as_str()
        });
    }

    /// Zero or partial dates written as NULL, per (table, column): in
    /// the after images (the values written), not in before images (which
    /// only find the row).
    pub fn zero_dates(&self) -> &BTreeMap<(TableId, String), u64> {
        &self.zero_dates
    }

    /// The executed GTID set so far (empty when GTIDs are not in use).
    pub fn gtid_set(&self) -> String {
        self.gtid.to_string()
    }

    /// The server version from the last FORMAT_DESCRIPTION event.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    /// Whether a transaction is open (its `Commit` not yet emitted).
    pub fn in_transaction(&self) -> bool {
        self.in_tx
    }

    fn position(&self, offset: u64) -> MySqlPosition {
        MySqlPosition {
            file: self.file.clone(),
            offset,
            gtid: (!self.gtid.is_empty()).then(|| GtidSet::new(&self.gtid.to_string())),
        }
    }

    /// Decodes one event. Never panics: a malformed event is an error
    /// naming its file and position.
    pub fn decode(&mut self, event: &BinlogEvent) -> Result<Vec<Decoded>, Error> {
        let header = event.header();
        let end = u64::from(header.log_pos());
        let at = match (end, self.payload_end) {
            // Inside a TRANSACTION_PAYLOAD: name the payload event.
            (0, Some(p)) => format!(
                "binlog {}:{p} (in the transaction payload ending there)",
                self.file
            ),
            _ => format!(
                "binlog {}:{}",
                self.file,
                end.saturating_sub(u64::from(header.event_size()))
            ),
        };
        if end != 0 {
            self.event_start = end.saturating_sub(u64::from(header.event_size()));
        }
        let mut out = Vec::new();
        match catch_unwind(AssertUnwindSafe(|| {
            self.decode_inner(event, end, &at, &mut out)
        })) {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(malformed(&at, "the event could not be parsed")),
        }
    }

    fn decode_inner(
        &mut self,
        event: &BinlogEvent,
        end: u64,
        at: &str,
        out: &mut Vec<Decoded>,
    ) -> Result<(), Error> {
        let header = event.header();
        let raw_type = header.event_type_raw();
        let header_time = Timestamp::from_unix_micros(i64::from(header.timestamp()) * 1_000_000);
        if header.timestamp() != 0 {
            self.last_time = header_time;
        }
        let io = |e: std::io::Error| malformed(at, &e.to_string());
        match raw_type {
            maria::ANNOTATE_ROWS | maria::BINLOG_CHECKPOINT => return Ok(()),
            HEARTBEAT_LOG_EVENT_V2 => {
                if !self.in_tx && end != 0 {
                    out.push(Decoded::Event(Event::Heartbeat {
                        position: self.position(end),
                        time: self.last_time,
                    }));
                }
                return Ok(());
            }
            maria::GTID => return self.maria_gtid(event, header.server_id(), header_time, at, out),
            maria::GTID_LIST => {
                if self.gtid.is_empty() {
                    self.gtid = maria_gtid_list(event.data())
                        .ok_or_else(|| malformed(at, "bad GTID_LIST"))?;
                }
                return Ok(());
            }
            maria::START_ENCRYPTION => {
                return Err(Error::operator(
                    format!("{at}: the binlog file is encrypted"),
                    "read it through the server (replication stream), which decrypts it",
                ));
            }
            t if (maria::QUERY_COMPRESSED..=maria::COMPRESSED_LAST).contains(&t) => {
                return Err(Error::operator(
                    format!("{at}: MariaDB compressed binlog event (type {t})"),
                    "ferry cannot read compressed MariaDB events: SET GLOBAL log_bin_compress=OFF \
                     and start from a position after the change",
                ));
            }
            _ => {}
        }
        let Ok(event_type) = EventType::try_from(raw_type) else {
            if header.flags_raw() & LOG_EVENT_IGNORABLE_F != 0 {
                return Ok(());
            }
            return Err(Error::operator(
                format!("{at}: unknown binlog event type {raw_type}"),
                "upgrade ferry or report the server version",
            ));
        };
        match event_type {
            EventType::FORMAT_DESCRIPTION_EVENT => {
                if let Some(EventData::FormatDescriptionEvent(fde)) =
                    event.read_data().map_err(io)?
                {
                    self.server_version =
                        Some(fde.server_version().trim_end_matches('\0').to_owned());
                }
            }
            EventType::ROTATE_EVENT => {
                let re: RotateEvent<'_> = event.read_event().map_err(io)?;
                self.file = rotate_name(event, &re);
                if !re.is_fake() && !self.in_tx {
                    out.push(Decoded::Event(Event::Heartbeat {
                        position: self.position(re.position()),
                        time: self.last_time,
                    }));
                }
            }
            EventType::QUERY_EVENT => {
                let q: QueryEvent<'_> = event.read_event().map_err(io)?;
                self.query(&q, end, header_time, at, out)?;
            }
            EventType::XID_EVENT => self.commit(end, at, out)?,
            EventType::GTID_EVENT | EventType::GTID_TAGGED_LOG_EVENT => {
                let g: GtidEvent = event.read_event().map_err(io)?;
                let mut source = gtid::uuid_text(&g.sid());
                if let Some(tag) = g.tag() {
                    source = format!("{source}:{tag}");
                }
                self.pending = Some(PendingGtid::MySql(source, g.gno()));
                self.next_tx_time = Some(commit_time(g.immediate_commit_timestamp(), header_time));
            }
            EventType::ANONYMOUS_GTID_EVENT => {
                self.pending = None;
                let ts = match event.read_data().map_err(io)? {
                    Some(EventData::AnonymousGtidEvent(g)) => g.0.immediate_commit_timestamp(),
                    _ => 0,
                };
                self.next_tx_time = Some(commit_time(ts, header_time));
            }
            EventType::PREVIOUS_GTIDS_EVENT if self.gtid.is_empty() => {
                if !guard::previous_gtids_ok(event.data()) {
                    return Err(malformed(at, "PREVIOUS_GTIDS counts exceed the event"));
                }
                let p: PreviousGtidsEvent<'_> = event.read_event().map_err(io)?;
                for sid in p.sids() {
                    let mut source = gtid::uuid_text(&sid.uuid());
                    if let Some(tag) = sid.tag() {
                        source = format!("{source}:{tag}");
                    }
                    for iv in sid.intervals() {
                        // Stored half-open: [start, end).
                        if iv.end() > iv.start() {
                            self.gtid
                                .add_mysql_interval(&source, iv.start(), iv.end() - 1);
                        }
                    }
                }
            }
            EventType::TABLE_MAP_EVENT => {
                let post = usize::from(
                    event
                        .fde()
                        .get_event_type_header_length(EventType::TABLE_MAP_EVENT),
                );
                if self.same_table_map(event.data(), post) {
                    return Ok(());
                }
                if !guard::table_map_ok(event.data(), post) {
                    return Err(malformed(at, "TABLE_MAP lengths exceed the event"));
                }
                let tme: TableMapEvent<'_> = event.read_event().map_err(io)?;
                self.table_map(tme.into_owned(), event.data().to_vec(), at)?;
            }
            EventType::WRITE_ROWS_EVENT_V1
            | EventType::UPDATE_ROWS_EVENT_V1
            | EventType::DELETE_ROWS_EVENT_V1
            | EventType::WRITE_ROWS_EVENT
            | EventType::UPDATE_ROWS_EVENT
            | EventType::DELETE_ROWS_EVENT
            | EventType::PARTIAL_UPDATE_ROWS_EVENT => {
                let Some(EventData::RowsEvent(rows)) = event.read_data().map_err(io)? else {
                    return Err(malformed(at, "rows event without rows"));
                };
                self.rows(&rows, header_time, at, out)?;
            }
            EventType::TRANSACTION_PAYLOAD_EVENT => {
                self.payload_end = Some(end);
            }
            EventType::HEARTBEAT_EVENT if !self.in_tx && end != 0 => {
                out.push(Decoded::Event(Event::Heartbeat {
                    position: self.position(end),
                    time: self.last_time,
                }));
            }
            EventType::INCIDENT_EVENT => {
                return Err(Error::operator(
                    format!(
                        "{at}: the source logged an INCIDENT (changes may be missing from the binlog)"
                    ),
                    "the source binlog is not a complete record here: reload the affected tables (ferry reset)",
                ));
            }
            EventType::XA_PREPARE_LOG_EVENT => {
                return Err(Error::operator(
                    format!("{at}: XA transaction (XA PREPARE) in the binlog"),
                    "ferry does not carry XA transactions; commit them with plain transactions",
                ));
            }
            EventType::PRE_GA_WRITE_ROWS_EVENT
            | EventType::PRE_GA_UPDATE_ROWS_EVENT
            | EventType::PRE_GA_DELETE_ROWS_EVENT
            | EventType::LOAD_EVENT
            | EventType::NEW_LOAD_EVENT
            | EventType::CREATE_FILE_EVENT
            | EventType::APPEND_BLOCK_EVENT
            | EventType::EXEC_LOAD_EVENT
            | EventType::DELETE_FILE_EVENT
            | EventType::BEGIN_LOAD_QUERY_EVENT
            | EventType::EXECUTE_LOAD_QUERY_EVENT => {
                return Err(Error::operator(
                    format!("{at}: statement-based or pre-5.1 event {event_type:?}"),
                    "set binlog_format=ROW on the source",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn begin(&mut self, time: Timestamp, out: &mut Vec<Decoded>) {
        let time = self.next_tx_time.take().unwrap_or(time);
        self.tx_time = time;
        self.in_tx = true;
        self.tx_changes = 0;
        out.push(Decoded::Event(Event::Begin {
            xid: None,
            commit_time: time,
            final_position: Some(self.position(self.event_start)),
        }));
    }

    fn add_pending(&mut self) {
        match self.pending.take() {
            Some(PendingGtid::MySql(source, gno)) => self.gtid.add_mysql(&source, gno),
            Some(PendingGtid::MariaDb(d, s, n)) => self.gtid.add_mariadb(d, s, n),
            None => {}
        }
    }

    fn commit(&mut self, end: u64, at: &str, out: &mut Vec<Decoded>) -> Result<(), Error> {
        if !self.in_tx {
            return Err(malformed(at, "COMMIT without a transaction"));
        }
        self.add_pending();
        let offset = self.payload_end.take().unwrap_or(end);
        out.push(Decoded::Event(Event::Commit {
            position: self.position(offset),
            commit_time: self.tx_time,
        }));
        self.in_tx = false;
        Ok(())
    }

    fn maria_gtid(
        &mut self,
        event: &BinlogEvent,
        server_id: u32,
        time: Timestamp,
        at: &str,
        out: &mut Vec<Decoded>,
    ) -> Result<(), Error> {
        let d = event.data();
        if d.len() < 13 {
            return Err(malformed(at, "MariaDB GTID event too short"));
        }
        let seq = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let domain = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
        let flags = d[12];
        self.pending = Some(PendingGtid::MariaDb(domain, server_id, seq));
        self.next_tx_time = Some(time);
        if flags & maria::FL_STANDALONE == 0 {
            if self.in_tx {
                return Err(malformed(at, "GTID inside a transaction"));
            }
            self.begin(time, out);
        }
        Ok(())
    }

    fn query(
        &mut self,
        q: &QueryEvent<'_>,
        end: u64,
        time: Timestamp,
        at: &str,
        out: &mut Vec<Decoded>,
    ) -> Result<(), Error> {
        let sql = q.query();
        let trimmed = sql.trim().trim_end_matches(';').trim();
        let upper = trimmed.to_ascii_uppercase();
        match upper.as_str() {
            "BEGIN" | "START TRANSACTION" => {
                if self.in_tx {
                    // MariaDB may follow its GTID with BEGIN for old replicas.
                    if self.tx_changes == 0 {
                        return Ok(());
                    }
                    return Err(malformed(at, "BEGIN inside a transaction"));
                }
                self.begin(time, out);
                Ok(())
            }
            "COMMIT" | "ROLLBACK" => self.commit(end, at, out),
            _ if upper.starts_with("SAVEPOINT") || upper.starts_with("ROLLBACK TO") => Ok(()),
            _ if upper.starts_with("XA ") => Err(Error::operator(
                format!("{at}: XA transaction in the binlog"),
                "ferry does not carry XA transactions; commit them with plain transactions",
            )),
            _ if self.in_tx => Err(Error::operator(
                format!(
                    "{at}: a statement inside a transaction is logged as SQL text (statement-based binlog)"
                ),
                "set binlog_format=ROW on the source (SET GLOBAL binlog_format=ROW) and restart ferry from a fresh load",
            )),
            _ => {
                let database = q.schema().into_owned();
                if let Some(table) = truncate_target(trimmed, &database)
                    && self.in_scope(&table)
                {
                    self.begin(time, out);
                    out.push(Decoded::Event(Event::Change(Change::Truncate {
                        tables: vec![table],
                        cascade: false,
                        restart_identity: false,
                    })));
                    self.tx_changes += 1;
                    return self.commit(end, at, out);
                }
                self.add_pending();
                self.next_tx_time = None;
                let offset = self.payload_end.take().unwrap_or(end);
                let position = self.position(offset);
                out.push(Decoded::Ddl {
                    database,
                    statement: redact(trimmed),
                    position: position.clone(),
                    time: self.last_time,
                });
                out.push(Decoded::Event(Event::Heartbeat {
                    position,
                    time: self.last_time,
                }));
                Ok(())
            }
        }
    }

    fn in_scope(&self, table: &TableId) -> bool {
        self.opts.scope == Scope::All || self.catalog.contains_key(table)
    }

    /// Whether a TABLE_MAP (its bytes, `post` the post-header length) is the
    /// one already kept for its table id. [`Self::set_table`] and
    /// [`Self::set_charsets`] drop what a schema change makes stale.
    fn same_table_map(&self, data: &[u8], post: usize) -> bool {
        // The table id leads the post-header: 6 bytes (4 in MySQL 5.0's
        // 6-byte post-header).
        let width = if post == 6 { 4 } else { 6 };
        let Some(id) = data.get(..width) else {
            return false;
        };
        let id = id
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        self.maps.get(&id).is_some_and(|m| m.raw == data)
    }

    fn table_map(
        &mut self,
        tme: TableMapEvent<'static>,
        raw: Vec<u8>,
        at: &str,
    ) -> Result<(), Error> {
        let id = TableId::new(tme.database_name(), tme.table_name());
        let table = if self.in_scope(&id) {
            let mut resolved = columns::resolve(&tme, self.catalog.get(&id), self.charsets.get(&id)).map_err(|e| match e {
                MapError::NoNames => Error::operator(
                    format!("{at}: table {id}: the binlog carries no column names and no schema was given"),
                    "set binlog_row_metadata=FULL on the source, or give the decoder the catalog schema",
                ),
                MapError::Mismatch(m) => Error::operator(
                    format!("{at}: table {id} changed: {m}"),
                    "the table's schema changed after ferry read it; re-read the catalog (restart ferry) \
                     and apply the same change to the target",
                ),
                MapError::Malformed(m) => malformed(at, &format!("TABLE_MAP of {id}: {m}")),
            })?;
            if let Some(conv) = self.opts.overrides.conversion(&resolved.schema) {
                let natural = conv.schema.columns.iter().zip(conv.targets);
                for (spec, (c, target)) in resolved.columns.iter_mut().zip(natural) {
                    if target.is_some() {
                        spec.pg_type = c.pg_type.clone();
                        spec.target = target;
                    }
                }
            }
            Some(Arc::new(resolved))
        } else {
            None
        };
        self.maps.insert(tme.table_id(), Mapped { tme, raw, table });
        Ok(())
    }

    fn rows(
        &mut self,
        rows: &RowsEventData<'_>,
        time: Timestamp,
        at: &str,
        out: &mut Vec<Decoded>,
    ) -> Result<(), Error> {
        let table_id = rows.table_id();
        let table = match self.maps.get(&table_id) {
            None => {
                return Err(Error::operator(
                    format!("{at}: rows event for table id {table_id} without its TABLE_MAP"),
                    "start reading at a transaction boundary (a checkpointed position)",
                ));
            }
            Some(Mapped { table: None, .. }) => return Ok(()),
            Some(Mapped { table: Some(t), .. }) => t.clone(),
        };
        if !self.in_tx {
            // Non-transactional engines under some servers: an implicit transaction.
            self.begin(time, out);
        }
        let id = table.schema.id.clone();
        let announced = self
            .announced
            .get(&id)
            .is_some_and(|a| Arc::ptr_eq(a, &table.schema) || a == &table.schema);
        if !announced {
            self.announced.insert(id.clone(), table.schema.clone());
            out.push(Decoded::Event(Event::Relation(table.schema.clone())));
        }
        let before_cols = rows
            .columns_before_image()
            .map(|b| b.iter().map(|x| *x).collect::<Vec<bool>>());
        let after_cols = rows
            .columns_after_image()
            .map(|b| b.iter().map(|x| *x).collect::<Vec<bool>>());
        let partial = matches!(rows, RowsEventData::PartialUpdateRowsEvent(_));
        let Some(mapped) = self.maps.get(&table_id) else {
            return Err(malformed(at, "TABLE_MAP vanished"));
        };
        if rows.num_columns() != mapped.tme.columns_count() || table.columns.is_empty() {
            return Err(malformed(
                at,
                &format!(
                    "rows event for {id} has {} columns, its TABLE_MAP {}",
                    rows.num_columns(),
                    mapped.tme.columns_count()
                ),
            ));
        }
        // Every row takes at least its null bitmap: more rows than bytes is damage.
        let max_rows = rows.rows_data().len();
        let mut pending_rows = Vec::new();
        let overrun = || malformed(at, &format!("row images of {id} overrun the event"));
        if partial {
            // A shared image precedes the after image: mysql_common's iterator.
            let ncols = table.columns.len();
            for pair in rows.rows(&mapped.tme) {
                let (before, after) =
                    pair.map_err(|e| malformed(at, &format!("row image of {id}: {e}")))?;
                pending_rows.push((
                    spread(before, before_cols.as_deref(), ncols),
                    spread(after, after_cols.as_deref(), ncols),
                ));
                if pending_rows.len() > max_rows {
                    return Err(overrun());
                }
            }
        } else {
            let mut buf = ParseBuf(rows.rows_data());
            let image = |buf: &mut ParseBuf<'_>, cols: &Option<Vec<bool>>| {
                rows::image(buf, &table.columns, cols.as_deref())
                    .map_err(|e| malformed(at, &format!("row image of {id}: {e}")))
            };
            while !buf.is_empty() {
                let before = match rows.columns_before_image() {
                    Some(_) => Some(image(&mut buf, &before_cols)?),
                    None => None,
                };
                let after = match rows.columns_after_image() {
                    Some(_) => Some(image(&mut buf, &after_cols)?),
                    None => None,
                };
                pending_rows.push((before, after));
                if pending_rows.len() > max_rows {
                    return Err(overrun());
                }
            }
        }
        self.event_zero_dates.clear();
        for (before, after) in pending_rows {
            let change = self.row_change(&table, before, after, partial, at)?;
            self.tx_changes += 1;
            out.push(Decoded::Event(Event::Change(change)));
        }
        for ((table, column), values) in std::mem::take(&mut self.event_zero_dates) {
            out.push(Decoded::Event(Event::Replaced {
                table,
                column,
                values,
            }));
        }
        Ok(())
    }

    fn row_change(
        &mut self,
        table: &MappedTable,
        before: Option<rows::Image>,
        after: Option<rows::Image>,
        partial: bool,
        at: &str,
    ) -> Result<Change, Error> {
        let id = table.schema.id.clone();
        // A partial JSON update applies its diffs to the before image.
        let base = if partial { before.clone() } else { None };
        let old = match before {
            Some(raw) => Some(self.convert_row(table, raw, None, None, at, false)?),
            None => None,
        };
        let new = match after {
            Some(raw) => {
                let key_from = old.as_ref().map(|(r, _)| r);
                Some(self.convert_row(table, raw, base.as_ref(), key_from, at, true)?)
            }
            None => None,
        };
        let old_row = |r: (Row, bool)| {
            if r.1 {
                OldRow::Full(r.0)
            } else {
                OldRow::Key(r.0)
            }
        };
        Ok(match (old, new) {
            (None, Some((new, complete))) => {
                if !complete {
                    let missing: Vec<&str> = table
                        .columns
                        .iter()
                        .zip(&new.values)
                        .filter(|(_, v)| matches!(v, Value::Unchanged))
                        .map(|(c, _)| c.name.as_str())
                        .collect();
                    return Err(Error::operator(
                        format!(
                            "{at}: table {id}: the inserted row image lacks column(s) {} \
                             (binlog_row_image is not FULL), so their values are unknown",
                            missing.join(", ")
                        ),
                        "set binlog_row_image=FULL on the source (SET GLOBAL binlog_row_image=FULL) \
                         and reload the table",
                    ));
                }
                Change::Insert { table: id, new }
            }
            (Some(old), Some((new, _))) => Change::Update {
                table: id,
                old: Some(old_row(old)),
                new,
            },
            (Some(old), None) => Change::Delete {
                table: id,
                old: old_row(old),
            },
            (None, None) => return Err(malformed(at, "row event without images")),
        })
    }

    /// Converts one row image. Columns not in the image are `Null` (before
    /// image) or `Unchanged` (after image). Returns whether every column was present.
    fn convert_row(
        &mut self,
        table: &MappedTable,
        raw: rows::Image,
        partial_base: Option<&rows::Image>,
        key_from: Option<&Row>,
        at: &str,
        is_after: bool,
    ) -> Result<(Row, bool), Error> {
        let mut values = Vec::with_capacity(raw.len());
        let mut complete = true;
        let mut failure: Option<(usize, String)> = None;
        for (i, (spec, v)) in table.columns.iter().zip(raw).enumerate() {
            let Some(v) = v else {
                complete = false;
                values.push(if is_after {
                    Value::Unchanged
                } else {
                    Value::Null
                });
                continue;
            };
            let converted = match (v, partial_base) {
                (BinlogValue::JsonDiff(diffs), Some(base)) => {
                    match base.get(i).and_then(|b| b.as_ref()) {
                        Some(BinlogValue::Jsonb(j)) => json::dom(j.clone())
                            .and_then(|mut dom| json::apply(&mut dom, &diffs).map(|()| dom))
                            .map(|dom| Value::Jsonb(json::text(&dom)))
                            .map_err(ConvError::Invalid),
                        _ => Err(ConvError::Invalid(
                            "a partial JSON update needs the full before image (binlog_row_image=FULL)".into(),
                        )),
                    }
                }
                (v, _) => value::convert(spec, v),
            };
            match converted {
                Ok(v) => values.push(match &spec.target {
                    Some(t) => crate::overrides::retarget(v, t),
                    None => v,
                }),
                Err(ConvError::ZeroDate) if self.opts.zero_dates == ZeroDatePolicy::Null => {
                    if is_after {
                        let column = (table.schema.id.clone(), spec.name.clone());
                        let n = self.zero_dates.entry(column.clone()).or_insert(0);
                        if *n == 0 {
                            tracing::warn!(table = %table.schema.id, column = %spec.name, "zero or partial date written as NULL");
                        }
                        *n += 1;
                        *self.event_zero_dates.entry(column).or_insert(0) += 1;
                    }
                    values.push(Value::Null);
                }
                Err(ConvError::ZeroDate) => {
                    failure.get_or_insert((
                        i,
                        "zero or partial date (mysql.zero_dates = \"error\")".into(),
                    ));
                    values.push(Value::Null);
                }
                Err(ConvError::Invalid(m)) => {
                    failure.get_or_insert((i, m));
                    values.push(Value::Null);
                }
            }
        }
        if let Some((i, reason)) = failure {
            let key = if table.key.is_empty() {
                "(no primary key)".to_owned()
            } else {
                let names: Vec<&str> = table
                    .key
                    .iter()
                    .map(|&k| table.columns[k].name.as_str())
                    .collect();
                let source = key_from.map_or(&values, |r| &r.values);
                let vals: Vec<String> = table
                    .key
                    .iter()
                    .map(|&k| {
                        source
                            .get(k)
                            .and_then(Value::to_pg_text)
                            .unwrap_or_else(|| "?".into())
                    })
                    .collect();
                format!("({})=({})", names.join(","), vals.join(","))
            };
            return Err(Error::operator(
                format!(
                    "{at}: table {}, key {key}, column {}: {reason}",
                    table.schema.id, table.columns[i].name
                ),
                "fix the source row or the column type, then resume",
            ));
        }
        Ok((Row::new(values), complete))
    }
}

/// Column character sets of `tables` from `information_schema.COLUMNS`, for
/// [`BinlogDecoder::set_charsets`].
pub async fn read_charsets(
    conn: &mut mysql_async::Conn,
    tables: &[TableId],
) -> Result<HashMap<TableId, Vec<Option<String>>>, Error> {
    use mysql_async::prelude::Queryable;
    let mut out = HashMap::new();
    for t in tables {
        let rows: Vec<Option<String>> = conn
            .exec(
                "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (t.schema.as_str(), t.name.as_str()),
            )
            .await
            .map_err(|e| crate::catalog::query_error("reading column character sets", e))?;
        out.insert(t.clone(), rows);
    }
    Ok(out)
}

/// A `mysql_common` row spread by column index (`None`: not in the image).
fn spread(row: Option<BinlogRow>, present: Option<&[bool]>, ncols: usize) -> Option<rows::Image> {
    let mut vals = row?.unwrap().into_iter();
    Some(
        (0..ncols)
            .map(|i| {
                let here = present.and_then(|p| p.get(i).copied()).unwrap_or(true);
                if here { vals.next() } else { None }
            })
            .collect(),
    )
}

fn malformed(at: &str, what: &str) -> Error {
    Error::operator(
        format!("{at}: malformed binlog event: {what}"),
        "the binlog is damaged or from an unsupported server version; report it with the server version",
    )
}

/// The file a ROTATE names. The stream's first (fake) ROTATE arrives before
/// the FORMAT_DESCRIPTION says checksums are on, so the parser leaves the
/// event's CRC32 at the end of the name: strip it when it is one.
fn rotate_name(event: &BinlogEvent, re: &RotateEvent<'_>) -> String {
    use mysql_common::proto::MySerialize;
    let name = re.name_raw();
    if name.len() > 4 && event.data().ends_with(&name[name.len() - 4..]) {
        let data = event.data();
        let mut header = Vec::new();
        event.header().serialize(&mut header);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.update(&data[..data.len() - 4]);
        let crc = u32::from_le_bytes(name[name.len() - 4..].try_into().unwrap_or_default());
        if hasher.finalize() == crc {
            return String::from_utf8_lossy(&name[..name.len() - 4]).into_owned();
        }
    }
    re.name().into_owned()
}

/// Account statements carry password hashes: keep only their first words.
fn redact(statement: &str) -> String {
    let upper = statement.to_ascii_uppercase();
    let secret = [
        "ALTER USER",
        "CREATE USER",
        "GRANT",
        "SET PASSWORD",
        "CREATE SERVER",
        "ALTER SERVER",
        "CHANGE MASTER",
        "CHANGE REPLICATION",
    ]
    .iter()
    .any(|p| upper.starts_with(p));
    if secret {
        let head: Vec<&str> = statement.split_whitespace().take(2).collect();
        format!("{} … (redacted)", head.join(" "))
    } else {
        statement.to_owned()
    }
}

fn commit_time(micros: u64, header: Timestamp) -> Timestamp {
    if micros > 0 {
        Timestamp::from_unix_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    } else {
        header
    }
}

/// MariaDB GTID_LIST body: count (low 28 bits), then (domain, server, seq).
fn maria_gtid_list(d: &[u8]) -> Option<GtidState> {
    let count = u32::from_le_bytes(d.get(0..4)?.try_into().ok()?) & 0x0FFF_FFFF;
    let mut g = GtidState::Empty;
    for i in 0..count as usize {
        let e = d.get(4 + i * 16..4 + (i + 1) * 16)?;
        let domain = u32::from_le_bytes(e[0..4].try_into().ok()?);
        let server = u32::from_le_bytes(e[4..8].try_into().ok()?);
        let seq = u64::from_le_bytes(e[8..16].try_into().ok()?);
        g.add_mariadb(domain, server, seq);
    }
    Some(g)
}

/// `TRUNCATE [TABLE] [db.]name` → the table (unquoting backticks).
fn truncate_target(sql: &str, database: &str) -> Option<TableId> {
    let mut rest = sql.trim();
    let word = |s: &str, w: &str| {
        s.as_bytes()
            .get(..w.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(w.as_bytes()))
            && s.as_bytes()
                .get(w.len())
                .is_some_and(u8::is_ascii_whitespace)
    };
    if !word(rest, "TRUNCATE") {
        return None;
    }
    rest = rest["TRUNCATE".len()..].trim_start();
    if word(rest, "TABLE") {
        rest = rest["TABLE".len()..].trim_start();
    }
    let mut parts = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        let mut name = String::new();
        if chars.peek() == Some(&'`') {
            chars.next();
            loop {
                match chars.next()? {
                    '`' if chars.peek() == Some(&'`') => {
                        chars.next();
                        name.push('`');
                    }
                    '`' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '$' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
        }
        if name.is_empty() {
            return None;
        }
        parts.push(name);
        match chars.next() {
            Some('.') => continue,
            None => break,
            Some(c) if c.is_whitespace() && chars.all(char::is_whitespace) => break,
            _ => return None,
        }
    }
    match parts.as_slice() {
        [t] if !database.is_empty() => Some(TableId::new(database, t.clone())),
        [d, t] => Some(TableId::new(d.clone(), t.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_statements() {
        assert_eq!(
            truncate_target("TRUNCATE TABLE t", "db"),
            Some(TableId::new("db", "t"))
        );
        assert_eq!(
            truncate_target("truncate `a``b`.`c d`", "db"),
            Some(TableId::new("a`b", "c d"))
        );
        assert_eq!(truncate_target("TRUNCATE TABLE t, u", "db"), None);
        assert_eq!(truncate_target("TRUNCATED", "db"), None);
        assert_eq!(truncate_target("ALTER TABLE t", "db"), None);
        assert_eq!(truncate_target("trünc", "db"), None);
        assert_eq!(
            truncate_target("TRUNCATE TABLE `ä`", "db"),
            Some(TableId::new("db", "ä"))
        );
    }
}
