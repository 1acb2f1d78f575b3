//! The change stream of a MariaDB source: the binlog read as a registered
//! replica ([`crate::binlog::stream`]), decoded ([`crate::binlog`]) into a
//! bounded channel of ferry events: events are sent as the binlog is read,
//! in bursts of what the stream already holds (at most [`BURST_EVENTS`]
//! events or [`BURST_BYTES`] of row data, so the receiver wakes once per
//! burst; a large transaction is never held whole), and the row data
//! waiting in the channel stays within `channel_bytes` ([`ByteBudget`], one
//! event always goes).
//!
//! Consumes the binlog from the checkpoint (a commit's end, or the load
//! snapshot's position); emits `Relation` (the catalog schema, type names
//! spelled as the target's catalog prints them), `Begin` (with the
//! position of the transaction's first event, see [`crate::binlog`]),
//! `Change`, `Commit` (the end of its XID event) and `Heartbeat` (the
//! server's binlog heartbeats on an idle source, every second). Positions
//! never decrease. A statement (DDL) is judged by [`crate::schema_change`]
//! ([`SchemaTracker`]): a column added to a carried table or a new table
//! the filter selects becomes a transaction of its own at the statement's
//! position holding the table's new `Relation` (the applier adds the column
//! or creates the table, and commits the checkpoint with it); the decoder
//! decodes the table's rows with the new shape from there. The new shape
//! is the old one plus the added columns, typed from the catalog as it is
//! now (or from the statement when the column is gone again). After a
//! restart the catalog may already hold columns added later in the binlog:
//! the rows before the statement are decoded with its first columns
//! ([`crate::binlog::columns::resolve`]). Any other change on a carried
//! table stops the stream with an operator error naming the statement, the
//! table, the binlog position and the fix; statements on other tables are
//! logged and skipped. Acknowledgements tell the server
//! nothing: it keeps binlogs by time (`binlog_expire_logs_seconds`); the
//! last acknowledged position is kept for the probe's retention figure. On
//! restart the pipeline opens a new stream at its checkpoint.

use std::collections::{BTreeSet, VecDeque};

use std::sync::Arc;

use ferry_core::config::{Endpoint, MySqlSourceConfig, TableFilter};
use ferry_core::size::ApproxBytes;
use ferry_core::source::{self, EventMap};
use ferry_core::value::Timestamp;
use ferry_core::{Column, Error, Event, MySqlPosition, TableId, TableSchema};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::binlog::{BinlogDecoder, Decoded, read_charsets};
use crate::catalog::{SourceTable, query_error, read_tables};
use crate::connect::{self, Flavor};
use crate::schema_change::{SchemaChange, classify};
use crate::typemap;

/// A PostgreSQL type as the target's catalog prints it (`format_type`),
/// so the applier's comparison of a `Relation` with the target table sees
/// no difference where there is none (`varchar(5)` is `character
/// varying(5)`).
pub fn canonical_pg_type(pg_type: &str) -> String {
    let t = pg_type.trim();
    let (base, args) = match t.split_once('(') {
        Some((b, rest)) => (b.trim(), Some(format!("({}", rest))),
        None => (t, None),
    };
    let args = args.unwrap_or_default();
    match base {
        "varchar" => format!("character varying{args}"),
        "numeric" | "decimal" if !args.is_empty() && !args.contains(',') => {
            format!("numeric{},0)", args.trim_end_matches(')'))
        }
        "timestamp" => format!("timestamp{args} without time zone"),
        "timestamptz" => format!("timestamp{args} with time zone"),
        "bool" => "boolean".into(),
        "int2" => "smallint".into(),
        "int4" | "int" => "integer".into(),
        "int8" => "bigint".into(),
        _ => t.to_owned(),
    }
}

fn canonical_relation(event: Event<MySqlPosition>) -> Event<MySqlPosition> {
    match event {
        Event::Relation(schema) => {
            let mut s = ferry_core::TableSchema::clone(&schema);
            for c in &mut s.columns {
                c.pg_type = canonical_pg_type(&c.pg_type);
            }
            Event::Relation(Arc::new(s))
        }
        other => other,
    }
}

/// Whether `statement` (DDL, run with default database `database`) names a
/// selected table. Conservative: any identifier equal to a selected
/// table's name in its database counts.
pub fn ddl_touches(
    statement: &str,
    database: &str,
    selected: &BTreeSet<TableId>,
) -> Option<TableId> {
    let tokens: Vec<String> = statement
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$' || c == '.' || c == '`'))
        .filter(|t| !t.is_empty())
        .map(|t| t.to_string())
        .collect();
    for tok in tokens {
        let parts: Vec<String> = tok
            .split('.')
            .map(|p| p.trim_matches('`').to_lowercase())
            .collect();
        let (db, name) = match parts.as_slice() {
            [name] => (database.to_lowercase(), name.clone()),
            [db, name] => (db.clone(), name.clone()),
            _ => continue,
        };
        if let Some(t) = selected
            .iter()
            .find(|t| t.schema.to_lowercase() == db && t.name.to_lowercase() == name)
        {
            return Some(t.clone());
        }
    }
    None
}

/// The running binlog stream.
#[derive(Debug)]
pub struct MySqlChanges {
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: tokio::task::JoinHandle<Result<(), Error>>,
    /// The probe's retention figure counts from here.
    pub(crate) acked: crate::source::Acked,
}

impl source::ChangeHandle<MySqlPosition> for MySqlChanges {
    /// The server keeps binlogs by time, not by replica acknowledgement:
    /// nothing to tell it; the position is kept for the retention figure.
    fn ack(&self, position: MySqlPosition) {
        if let Ok(mut a) = self.acked.lock() {
            *a = Some(position);
        }
    }

    async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(_) => Err(Error::operator(
                "the binlog reader panicked",
                "report this as a ferry bug with the log",
            )),
        }
    }
}

/// Acts on schema changes in the binlog ([`crate::schema_change`]): keeps
/// the decoder's table shapes at the statement's position and says what
/// the target must get there.
#[derive(Debug)]
pub(crate) struct SchemaTracker {
    pub(crate) endpoint: Endpoint,
    /// The `[mysql]` type policies, applied to what the catalog says.
    pub(crate) policies: MySqlSourceConfig,
    /// The `tables.columns` type overrides, applied after the policies.
    pub(crate) overrides: crate::overrides::Overrides,
    pub(crate) flavor: Flavor,
    pub(crate) filter: TableFilter,
    /// The carried tables (grows with tables created mid-stream).
    pub(crate) carried: BTreeSet<TableId>,
}

/// The fix for a schema change ferry cannot carry.
const UNSUPPORTED_FIX: &str = "ferry carries only ALTER TABLE … ADD COLUMN (nullable, no default, at the end) and CREATE TABLE; for any other change a new full load is needed: `ferry cleanup --state`, drop the target tables, then `ferry run` (the binlog keeps the statement, so undoing it on the source does not let this run continue)";

impl SchemaTracker {
    /// The new shape of the table `statement` changes, to be announced
    /// (and applied on the target) at `position`; `None` when nothing
    /// carried changes; an operator error naming the statement, the table,
    /// the position and the fix when ferry cannot carry it.
    pub(crate) async fn apply(
        &mut self,
        decoder: &mut BinlogDecoder,
        database: &str,
        statement: &str,
        position: &MySqlPosition,
    ) -> Result<Option<TableSchema>, Error> {
        match classify(statement, database, &self.carried) {
            SchemaChange::None => {
                info!(database = %database, position = %position, "statement on tables not carried ignored");
                Ok(None)
            }
            SchemaChange::Index { table } => {
                warn!(table = %table, position = %position, "index change on a carried table not carried (rows are unaffected): make the same change on the target if it is wanted");
                Ok(None)
            }
            SchemaChange::Unsupported { table, reason } => Err(Error::operator(
                format!(
                    "schema change on carried table {table} at binlog {position} that ferry cannot apply exactly: {reason}; statement: {statement}"
                ),
                UNSUPPORTED_FIX,
            )),
            SchemaChange::AddColumns { table, columns } => {
                let Some(mut schema) = decoder.schema_of(&table) else {
                    return Ok(None);
                };
                let now = self.read_table(&table).await?;
                // Columns already in the shape (read after the statement)
                // and everything after them are re-added from here.
                if let Some(k) = schema
                    .columns
                    .iter()
                    .position(|c| columns.iter().any(|a| a.name == c.name))
                {
                    schema.columns.truncate(k);
                }
                let columns_added = columns.len();
                for added in columns {
                    let known = now
                        .as_ref()
                        .and_then(|t| t.schema.columns.iter().find(|c| c.name == added.name));
                    schema.columns.push(match known {
                        Some(c) => Column {
                            nullable: true,
                            ..c.clone()
                        },
                        None => Column {
                            pg_type: typemap::map_column_type(&added.column_type).pg_type,
                            source_type: added.column_type,
                            name: added.name,
                            type_oid: None,
                            nullable: true,
                        },
                    });
                }
                let added = &schema.columns[schema.columns.len() - columns_added..];
                refuse_enum_types(added, &table, position, statement)?;
                info!(table = %table, position = %position, columns = schema.columns.len(), "column added on the source; carried to the target");
                self.announce(decoder, schema).await.map(Some)
            }
            SchemaChange::CreateTable { table, columns } => {
                if !self.filter.matches(&table) {
                    info!(table = %table, position = %position, "new table not selected by the tables filter");
                    return Ok(None);
                }
                let Some(now) = self.read_table(&table).await? else {
                    return Err(Error::operator(
                        format!(
                            "table {table} created at binlog {position} is no longer on the source, so ferry cannot read its columns; statement: {statement}"
                        ),
                        UNSUPPORTED_FIX,
                    ));
                };
                let mut schema = now.schema;
                if !columns.is_empty() && columns.len() < schema.columns.len() {
                    // Columns added later are announced by their own statements.
                    let key: Vec<String> = schema.key_names().map(str::to_owned).collect();
                    schema.columns.retain(|c| columns.contains(&c.name));
                    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
                    schema.key = key
                        .iter()
                        .filter_map(|k| names.iter().position(|n| n == k))
                        .collect();
                }
                refuse_enum_types(&schema.columns, &table, position, statement)?;
                self.carried.insert(table.clone());
                info!(table = %table, position = %position, "new table on the source; carried to the target");
                self.announce(decoder, schema).await.map(Some)
            }
        }
    }

    /// The decoder decodes `schema`'s table with it from now on.
    async fn announce(
        &self,
        decoder: &mut BinlogDecoder,
        schema: TableSchema,
    ) -> Result<TableSchema, Error> {
        let mut conn = connect::connect(&self.endpoint).await?;
        let charsets = read_charsets(&mut conn, std::slice::from_ref(&schema.id)).await?;
        for (id, mut cs) in charsets {
            cs.truncate(schema.columns.len());
            decoder.set_charsets(id, cs);
        }
        decoder.set_table(schema.clone());
        Ok(schema)
    }

    /// The table as the catalog describes it now (possibly after later
    /// statements); `None` when it is gone.
    async fn read_table(&self, table: &TableId) -> Result<Option<SourceTable>, Error> {
        let mut conn = connect::connect(&self.endpoint).await?;
        let tables = read_tables(
            &mut conn,
            self.flavor,
            std::slice::from_ref(&table.schema),
            &self.filter,
        )
        .await?;
        Ok(tables
            .into_iter()
            .find(|t| &t.schema.id == table)
            .map(|mut t| {
                typemap::apply_policies(&self.policies, &mut t.schema);
                self.overrides.apply(&mut t.schema);
                t
            }))
    }
}

/// Under `mysql.enum = "type"` a column added mid-stream would need its
/// enum type created on the target first, which the applier does not do.
fn refuse_enum_types(
    columns: &[Column],
    table: &TableId,
    position: &MySqlPosition,
    statement: &str,
) -> Result<(), Error> {
    match columns
        .iter()
        .find(|c| typemap::is_enum_type(&c.source_type, &c.pg_type))
    {
        Some(c) => Err(Error::operator(
            format!(
                "schema change on carried table {table} at binlog {position} that ferry cannot apply exactly: the new column `{}` is an enum and mysql.enum = \"type\" (ferry creates enum types only before the load); statement: {statement}",
                c.name
            ),
            UNSUPPORTED_FIX,
        )),
        None => Ok(()),
    }
}

/// The events that carry a schema change at its place in the stream: a
/// transaction of its own holding the table's new `Relation`, committed
/// with the checkpoint at the statement's end (so a restart finds the
/// target and the checkpoint agreeing).
fn schema_change_events(
    schema: TableSchema,
    position: &MySqlPosition,
    time: Timestamp,
) -> [Event<MySqlPosition>; 3] {
    [
        Event::Begin {
            xid: None,
            commit_time: time,
            final_position: Some(position.clone()),
        },
        canonical_relation(Event::Relation(Arc::new(schema))),
        Event::Commit {
            position: position.clone(),
            commit_time: time,
        },
    ]
}

/// Reads the binlog from `binlog`, decodes and sends; ends on `stop`, when
/// the receiver is gone, or with the error the stream met.
pub(crate) async fn pump(
    mut binlog: mysql_async::BinlogStream,
    mut decoder: BinlogDecoder,
    mut tracker: SchemaTracker,
    tx: mpsc::Sender<Event<MySqlPosition>>,
    mut map: Option<EventMap<MySqlPosition>>,
    mut stop: oneshot::Receiver<()>,
    mut budget: ByteBudget,
) -> Result<(), Error> {
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            e = binlog.next() => e,
        };
        // Decode what the stream already holds (up to a burst) before
        // sending: the receiver wakes once per burst, not once per change.
        let mut events: Vec<(Event<MySqlPosition>, usize)> = Vec::new();
        let mut gathered = 0;
        let mut ended = None;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let event = match item {
                None => {
                    ended = Some(Error::transient("the source ended the binlog stream"));
                    break;
                }
                Some(Err(e)) => {
                    ended = Some(query_error("reading the binlog stream", e));
                    break;
                }
                Some(Ok(e)) => e,
            };
            let mut decoded = Vec::new();
            for d in decoder.decode(&event)? {
                match d {
                    Decoded::Event(e) => decoded.push(canonical_relation(e)),
                    Decoded::Ddl {
                        database,
                        statement,
                        position,
                        time,
                    } => {
                        if let Some(schema) = tracker
                            .apply(&mut decoder, &database, &statement, &position)
                            .await?
                        {
                            decoded.extend(schema_change_events(schema, &position, time));
                        }
                    }
                }
            }
            for event in decoded {
                let event = match map.as_mut() {
                    Some(f) => match f(event) {
                        Some(e) => e,
                        None => continue,
                    },
                    None => event,
                };
                let bytes = event.approx_bytes();
                gathered += bytes;
                events.push((event, bytes));
            }
            if events.len() < BURST_EVENTS && gathered < BURST_BYTES {
                next = binlog.next().now_or_never();
            }
        }
        for (event, bytes) in events {
            // Row data held by the channel stays within `channel_bytes`
            // (one event always goes, however large).
            loop {
                let queued = tx.max_capacity() - tx.capacity();
                budget.received_all_but(queued);
                if budget.room_for(bytes) {
                    break;
                }
                if tx.is_closed() {
                    return Ok(());
                }
                tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(()),
                    () = tokio::time::sleep(std::time::Duration::from_millis(2)) => {}
                }
            }
            budget.sent(bytes);
            tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                sent = tx.send(event) => if sent.is_err() { return Ok(()) },
            }
        }
        if let Some(e) = ended {
            return Err(e);
        }
    }
}

/// Events, and bytes of row data, decoded from what the stream already
/// holds before they are sent together (the events of one binlog event
/// always go together: one rows event is bounded by the server's
/// `max_allowed_packet`).
const BURST_EVENTS: usize = 256;
const BURST_BYTES: usize = 1 << 20;

/// Bytes of the events that may still be in the channel. The channel is
/// FIFO with one sender, so the events still in it are the last ones sent.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    limit: usize,
    in_flight: VecDeque<usize>,
    bytes: usize,
}

impl ByteBudget {
    pub(crate) fn new(limit: usize) -> Self {
        ByteBudget {
            limit: limit.max(1),
            in_flight: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Only the newest `queued` events sent are still in the channel.
    fn received_all_but(&mut self, queued: usize) {
        while self.in_flight.len() > queued {
            if let Some(b) = self.in_flight.pop_front() {
                self.bytes -= b;
            }
        }
    }

    fn room_for(&self, bytes: usize) -> bool {
        self.in_flight.is_empty() || self.bytes + bytes <= self.limit
    }

    fn sent(&mut self, bytes: usize) {
        self.in_flight.push_back(bytes);
        self.bytes += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_lets_one_event_through_and_counts_what_is_queued() {
        let mut b = ByteBudget::new(100);
        assert!(b.room_for(1_000), "an empty channel takes any event");
        b.sent(1_000);
        assert!(!b.room_for(1));
        b.received_all_but(0);
        assert!(b.room_for(60));
        b.sent(60);
        b.sent(40);
        assert!(!b.room_for(1));
        b.received_all_but(1);
        assert!(b.room_for(60) && !b.room_for(61));
    }
}
