//! The change stream of a MariaDB source: the binlog read as a registered
//! replica ([`crate::binlog::stream`]), decoded ([`crate::binlog`]) into a
//! bounded channel of ferry events: events are sent one by one as the
//! binlog is read (a large transaction is never held whole), and the row
//! data waiting in the channel stays within `channel_bytes`
//! ([`ByteBudget`], one event always goes).
//!
//! Consumes the binlog from the checkpoint (a commit's end, or the load
//! snapshot's position); emits `Relation` (the catalog schema, type names
//! spelled as the target's catalog prints them), `Begin` (with the
//! position of the transaction's first event, see [`crate::binlog`]),
//! `Change`, `Commit` (the end of its XID event) and `Heartbeat` (the
//! server's binlog heartbeats on an idle source, every second). Positions
//! never decrease. A statement (DDL) on a carried table stops the stream
//! with an operator error naming it and the binlog position; statements on
//! other tables are logged and skipped. Acknowledgements tell the server
//! nothing: it keeps binlogs by time (`binlog_expire_logs_seconds`). On
//! restart the pipeline opens a new stream at its checkpoint.

use std::collections::{BTreeSet, VecDeque};

use ferry_core::size::ApproxBytes;
use ferry_core::source::{self, EventMap};
use ferry_core::{Error, Event, MySqlPosition, TableId};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::info;

use crate::binlog::{BinlogDecoder, Decoded};
use crate::catalog::query_error;

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
            Event::Relation(std::sync::Arc::new(s))
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
}

impl source::ChangeHandle<MySqlPosition> for MySqlChanges {
    /// The server keeps binlogs by time, not by replica acknowledgement:
    /// nothing to tell it.
    fn ack(&self, _position: MySqlPosition) {}

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

/// Reads the binlog from `binlog`, decodes and sends; ends on `stop`, when
/// the receiver is gone, or with the error the stream met.
pub(crate) async fn pump(
    mut binlog: mysql_async::BinlogStream,
    mut decoder: BinlogDecoder,
    selected: BTreeSet<TableId>,
    tx: mpsc::Sender<Event<MySqlPosition>>,
    mut map: Option<EventMap<MySqlPosition>>,
    mut stop: oneshot::Receiver<()>,
    mut budget: ByteBudget,
) -> Result<(), Error> {
    loop {
        let event = tokio::select! {
            biased;
            _ = &mut stop => return Ok(()),
            e = binlog.next() => e,
        };
        let event = match event {
            None => return Err(Error::transient("the source ended the binlog stream")),
            Some(Err(e)) => return Err(query_error("reading the binlog stream", e)),
            Some(Ok(e)) => e,
        };
        for d in decoder.decode(&event)? {
            let event = match d {
                Decoded::Event(e) => canonical_relation(e),
                Decoded::Ddl {
                    database,
                    statement,
                    position,
                } => {
                    if let Some(table) = ddl_touches(&statement, &database, &selected) {
                        return Err(Error::operator(
                            format!(
                                "schema change on carried table {table} at binlog {position}: {statement}"
                            ),
                            "ferry does not carry MySQL schema changes yet: undo the change on the source (the run resumes from its checkpoint), or start a new migration (ferry cleanup, then ferry run)",
                        ));
                    }
                    info!(database = %database, position = %position, "statement on tables not carried ignored");
                    continue;
                }
            };
            let event = match map.as_mut() {
                Some(f) => match f(event) {
                    Some(e) => e,
                    None => continue,
                },
                None => event,
            };
            let bytes = event.approx_bytes();
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
    }
}

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
