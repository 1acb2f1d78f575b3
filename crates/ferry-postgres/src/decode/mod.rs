//! pgoutput → `ferry_core::Event<Lsn>`.
//!
//! Consumes the payload of each XLogData message of a pgoutput slot
//! (protocol v1, or v2 with streamed in-progress transactions) and emits
//! events in commit order: `Begin`, `Relation` (first time a table is seen
//! in this session, or when its columns change), `Change`s, `Commit` whose
//! position is the commit's *end* LSN (the position to checkpoint and
//! acknowledge: after a restart the server skips every transaction whose
//! commit end is at or before the start position), and `Heartbeat` for
//! `pg_logical_emit_message(false, 'ferry.heartbeat', …)`, and `Ddl` for
//! the transactional `ferry.ddl` messages of the DDL capture
//! ([`crate::ddl_capture`]), at their place inside their transaction.
//!
//! Streamed transactions (v2) are buffered per xid in [`streamed`] and come
//! out as a [`Step::Replay`] on Stream Commit; the caller feeds each replayed
//! message back through [`Decoder::decode_replayed`] between the `Begin` and
//! `Commit` it emits. Aborted streamed (sub)transactions never come out.
//!
//! Tuple values are text (we never request binary): [`text`] and [`array`]
//! parse them by column type; 'u' (unchanged TOAST) is `Value::Unchanged`,
//! never NULL. Types outside the built-in table are looked up through
//! [`types::TypeResolver`]: the decoder returns
//! [`DecodeError::UnknownType`] without changing any state, the caller fills
//! the [`TypeCache`] and decodes the same message again.
//!
//! Echo filter ([`Decoder::skip_origins`]): pgoutput sends an Origin
//! message right after Begin (or in the first block of a streamed
//! transaction) when the transaction was committed by a session with a
//! replication origin set up. A transaction whose origin name starts with
//! the configured prefix keeps its Begin and Commit (its position is still
//! acknowledged) but loses its changes; its Relation messages still update
//! the relation cache. ferry's reverse stream (fallback after cutover) uses
//! it so that what ferry itself applied never comes back.
//!
//! All input is untrusted bytes: reads are checked and errors typed.
//! Spec: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.

pub mod array;
pub mod message;
mod reader;
pub mod streamed;
pub mod text;
pub mod types;

use std::path::PathBuf;
use std::sync::Arc;

use ferry_core::value::Timestamp;
use ferry_core::{
    Change, Column, Event, Lsn, OldRow, ReplicaIdentity, Row, TableId, TableSchema, Value,
};

use ferry_core::ddl::{DDL_PREFIX, DdlMessage};
use foldhash::{HashMap, HashMapExt};
use message::{Message, RelationColumn, TupleValue};
pub use streamed::Replay;
pub use types::{CustomKind, CustomType, Missing, TypeCache, TypeResolver, ValueKind};

/// A checked reader for other protocol parsers of this crate.
pub(crate) fn reader_for<'a>(buf: &'a [u8], what: &'static str) -> reader::Reader<'a> {
    reader::Reader::new(buf, what)
}

/// Logical message prefix that marks a ferry heartbeat. A non-transactional
/// one decodes as [`Event::Heartbeat`]; the probe writes transactional ones
/// (their commit flushes), which decode as an empty transaction.
pub const HEARTBEAT_PREFIX: &str = "ferry.heartbeat";

/// Bytes that are not valid pgoutput, or that do not fit the known schema.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{message} is truncated")]
    Truncated { message: &'static str },
    #[error("{message} has a string that is not UTF-8")]
    InvalidUtf8 { message: &'static str },
    #[error("invalid length field")]
    Length,
    #[error("unexpected byte 0x{byte:02x} in {at}")]
    UnexpectedByte { at: &'static str, byte: u8 },
    #[error("unknown pgoutput message tag 0x{tag:02x}")]
    UnknownMessage { tag: u8 },
    #[error("change for relation oid {oid} before its Relation message")]
    UnknownRelation { oid: u32 },
    #[error("type needs a catalog lookup: {0:?}")]
    UnknownType(Missing),
    #[error("table {table}: {got} tuple columns, relation has {want}")]
    ColumnCount {
        table: TableId,
        got: usize,
        want: usize,
    },
    #[error("table {table} column {column}: {source}")]
    Value {
        table: TableId,
        column: String,
        #[source]
        source: text::TextError,
    },
    #[error("table {table} column {column}: binary tuple data is not supported")]
    Binary { table: TableId, column: String },
    #[error("DDL message from the source event trigger is not valid: {0}")]
    Ddl(String),
    #[error("spilling a streamed transaction to disk: {0}")]
    Spill(#[source] std::io::Error),
}

impl DecodeError {
    /// As a pipeline error: every decode failure needs an operator (the same
    /// bytes would fail again), except a failed spill file (disk full, …).
    pub fn into_error(self, at: Lsn) -> ferry_core::Error {
        let context = format!("decoding pgoutput at LSN {at}");
        match self {
            DecodeError::Spill(_) => ferry_core::Error::transient(context).with_source(self),
            other => ferry_core::Error::operator(
                format!("{context}: {other}"),
                "report this as a ferry bug with the server version and table definition",
            ),
        }
    }
}

/// A `ferry.ddl` message ([`crate::ddl_capture`]): the catalog state as
/// JSON, plus the statement text for `ALTER TABLE` (read for type changes,
/// [`crate::ddl_text`], then dropped: it is never logged).
fn ddl_message(content: &[u8]) -> Result<DdlMessage, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Text {
        query: Option<String>,
    }
    let mut msg: DdlMessage =
        serde_json::from_slice(content).map_err(|e| DecodeError::Ddl(e.to_string()))?;
    let text: Text =
        serde_json::from_slice(content).map_err(|e| DecodeError::Ddl(e.to_string()))?;
    crate::ddl_text::annotate(&mut msg, text.query.as_deref());
    Ok(msg)
}

/// What one message produced.
#[derive(Debug)]
pub enum Step {
    /// The event to hand on, if any (one message is at most one event: an
    /// `Option`, not a `Vec`, so no allocation per message).
    Event(Option<Event<Lsn>>),
    /// A streamed transaction committed: emit `begin`, then the events of
    /// each replayed message ([`Decoder::decode_replayed`]), then `commit`.
    Replay {
        begin: Event<Lsn>,
        messages: Replay,
        commit: Event<Lsn>,
    },
}

#[derive(Debug)]
struct Relation {
    schema: Arc<TableSchema>,
    kinds: Vec<ValueKind>,
}

/// pgoutput decoder state of one replication session.
#[derive(Debug)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    types: TypeCache,
    streams: streamed::StreamBuffers,
    /// Top-level xid of the streamed block we are inside.
    in_stream: Option<u32>,
    /// Inside Begin … Commit of a non-streamed transaction.
    in_txn: bool,
    /// Transactions whose replication origin starts with this lose their
    /// changes (see the module docs).
    skip_origin_prefix: Option<String>,
    /// The open non-streamed transaction has a skipped origin.
    skipping: bool,
    /// Streamed transactions (top-level xid) with a skipped origin.
    skipped_streams: std::collections::HashSet<u32>,
    /// The streamed transaction being replayed now has a skipped origin.
    replay_skipping: bool,
    skipped_transactions: u64,
}

impl Decoder {
    /// `spill_threshold`: bytes all open streamed transactions together
    /// keep in memory.
    pub fn new(spill_threshold: usize, spill_dir: Option<PathBuf>) -> Self {
        Decoder {
            relations: HashMap::new(),
            types: TypeCache::default(),
            streams: streamed::StreamBuffers::new(spill_threshold, spill_dir),
            in_stream: None,
            in_txn: false,
            skip_origin_prefix: None,
            skipping: false,
            skipped_streams: std::collections::HashSet::new(),
            replay_skipping: false,
            skipped_transactions: 0,
        }
    }

    /// Drop the changes of transactions whose replication origin name
    /// starts with `prefix` (their Begin and Commit still come out).
    pub fn skip_origins(&mut self, prefix: impl Into<String>) {
        self.skip_origin_prefix = Some(prefix.into());
    }

    /// Transactions whose changes were dropped for their origin so far.
    pub fn skipped_transactions(&self) -> u64 {
        self.skipped_transactions
    }

    fn skips_origin(&self, name: &str) -> bool {
        self.skip_origin_prefix
            .as_deref()
            .is_some_and(|p| name.starts_with(p))
    }

    pub fn types_mut(&mut self) -> &mut TypeCache {
        &mut self.types
    }

    /// Inside Begin … Commit (a heartbeat now would split a transaction).
    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Decode one XLogData payload; `send_time` is the server's send time
    /// of the message (used as the time of heartbeats).
    pub fn decode(&mut self, data: &[u8], send_time: Timestamp) -> Result<Step, DecodeError> {
        let parsed = message::parse(data, self.in_stream.is_some())?;
        // A replay (decode_replayed calls) ends before the next message.
        self.replay_skipping = false;
        if let (Some(top), Some(xid)) = (self.in_stream, parsed.xid) {
            self.streams.push(top, xid, data)?;
            return Ok(Step::Event(None));
        }
        match parsed.message {
            Message::Origin { name, .. } => {
                if self.skips_origin(name) {
                    match self.in_stream {
                        Some(top) => {
                            self.skipped_streams.insert(top);
                        }
                        None if self.in_txn => self.skipping = true,
                        None => {}
                    }
                }
                Ok(Step::Event(None))
            }
            Message::StreamStart { xid, .. } => {
                self.in_stream = Some(xid);
                Ok(Step::Event(None))
            }
            Message::StreamStop => {
                self.in_stream = None;
                Ok(Step::Event(None))
            }
            Message::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    self.skipped_streams.remove(&xid);
                }
                self.streams.abort(xid, subxid);
                Ok(Step::Event(None))
            }
            Message::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                let commit_time = Timestamp(commit_time);
                if self.skipped_streams.remove(&xid) {
                    // Replayed for its Relation messages; changes dropped.
                    self.replay_skipping = true;
                    self.skipped_transactions += 1;
                }
                Ok(Step::Replay {
                    begin: Event::Begin {
                        xid: Some(u64::from(xid)),
                        commit_time,
                        final_position: Some(Lsn(commit_lsn)),
                    },
                    messages: self.streams.take(xid)?,
                    commit: Event::Commit {
                        position: Lsn(end_lsn),
                        commit_time,
                    },
                })
            }
            other => self.apply(other, send_time).map(Step::Event),
        }
    }

    /// Decode one message of a committed streamed transaction.
    pub fn decode_replayed(&mut self, data: &[u8]) -> Result<Option<Event<Lsn>>, DecodeError> {
        let parsed = message::parse(data, true)?;
        self.apply(parsed.message, Timestamp::now())
    }

    fn apply(
        &mut self,
        msg: Message<'_>,
        send_time: Timestamp,
    ) -> Result<Option<Event<Lsn>>, DecodeError> {
        let ev = match msg {
            Message::Begin {
                final_lsn,
                xid,
                commit_time,
            } => {
                self.in_txn = true;
                self.skipping = false;
                Event::Begin {
                    xid: Some(u64::from(xid)),
                    commit_time: Timestamp(commit_time),
                    final_position: Some(Lsn(final_lsn)),
                }
            }
            Message::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                self.in_txn = false;
                if std::mem::take(&mut self.skipping) {
                    self.skipped_transactions += 1;
                }
                Event::Commit {
                    position: Lsn(end_lsn),
                    commit_time: Timestamp(commit_time),
                }
            }
            Message::Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                return self.relation(oid, namespace, name, replica_identity, &columns);
            }
            Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. }
                if self.skipping || self.replay_skipping =>
            {
                return Ok(None);
            }
            Message::Insert { oid, new } => {
                let rel = self.relation_of(oid)?;
                Event::Change(Change::Insert {
                    table: rel.schema.id.clone(),
                    new: row(rel, &new)?,
                })
            }
            Message::Update { oid, old, new } => {
                let rel = self.relation_of(oid)?;
                let old = old.map(|(kind, t)| old_row(rel, kind, &t)).transpose()?;
                Event::Change(Change::Update {
                    table: rel.schema.id.clone(),
                    old,
                    new: row(rel, &new)?,
                })
            }
            Message::Delete { oid, kind, old } => {
                let rel = self.relation_of(oid)?;
                Event::Change(Change::Delete {
                    table: rel.schema.id.clone(),
                    old: old_row(rel, kind, &old)?,
                })
            }
            Message::Truncate {
                cascade,
                restart_identity,
                oids,
            } => {
                let tables = oids
                    .iter()
                    .map(|&oid| self.relation_of(oid).map(|r| r.schema.id.clone()))
                    .collect::<Result<_, _>>()?;
                Event::Change(Change::Truncate {
                    tables,
                    cascade,
                    restart_identity,
                })
            }
            Message::LogicalMessage {
                transactional: false,
                lsn,
                prefix,
                ..
            } if prefix == HEARTBEAT_PREFIX => Event::Heartbeat {
                position: Lsn(lsn),
                time: send_time,
            },
            Message::LogicalMessage {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == DDL_PREFIX => Event::Ddl(Arc::new(ddl_message(content)?)),
            // Origin, Type (names come from the catalog), other logical
            // messages, and stream control outside a stream: nothing to emit.
            _ => return Ok(None),
        };
        Ok(Some(ev))
    }

    fn relation_of(&self, oid: u32) -> Result<&Relation, DecodeError> {
        match self.relations.get(&oid) {
            Some(rel) => Ok(rel),
            None => Err(DecodeError::UnknownRelation { oid }),
        }
    }

    fn relation(
        &mut self,
        oid: u32,
        namespace: &str,
        name: &str,
        replica_identity: u8,
        columns: &[RelationColumn<'_>],
    ) -> Result<Option<Event<Lsn>>, DecodeError> {
        let schema_name = if namespace.is_empty() {
            "pg_catalog"
        } else {
            namespace
        };
        let mut cols = Vec::with_capacity(columns.len());
        let mut kinds = Vec::with_capacity(columns.len());
        for c in columns {
            let pg_type = self
                .types
                .sql_name(c.type_oid, c.typmod)
                .map_err(DecodeError::UnknownType)?;
            kinds.push(
                self.types
                    .value_kind(c.type_oid)
                    .map_err(DecodeError::UnknownType)?,
            );
            cols.push(Column {
                name: c.name.to_owned(),
                source_type: pg_type.clone(),
                pg_type,
                type_oid: Some(c.type_oid),
                nullable: true,
            });
        }
        let schema = TableSchema {
            id: TableId::new(schema_name, name),
            columns: cols,
            key: columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key)
                .map(|(i, _)| i)
                .collect(),
            replica_identity: ReplicaIdentity::from_pg_char(replica_identity)
                .unwrap_or(ReplicaIdentity::Default),
        };
        if self
            .relations
            .get(&oid)
            .is_some_and(|r| *r.schema == schema)
        {
            return Ok(None);
        }
        let schema = Arc::new(schema);
        self.relations.insert(
            oid,
            Relation {
                schema: schema.clone(),
                kinds,
            },
        );
        Ok(Some(Event::Relation(schema)))
    }
}

fn row(rel: &Relation, tuple: &[TupleValue<'_>]) -> Result<Row, DecodeError> {
    let want = rel.kinds.len();
    if tuple.len() != want {
        return Err(DecodeError::ColumnCount {
            table: rel.schema.id.clone(),
            got: tuple.len(),
            want,
        });
    }
    let mut values = Vec::with_capacity(want);
    for (i, (tv, kind)) in tuple.iter().zip(&rel.kinds).enumerate() {
        let column = || rel.schema.columns[i].name.clone();
        let v = match tv {
            TupleValue::Null => Value::Null,
            TupleValue::Unchanged => Value::Unchanged,
            TupleValue::Binary(_) => {
                return Err(DecodeError::Binary {
                    table: rel.schema.id.clone(),
                    column: column(),
                });
            }
            TupleValue::Text(bytes) => {
                let bad = |source| DecodeError::Value {
                    table: rel.schema.id.clone(),
                    column: column(),
                    source,
                };
                let s = std::str::from_utf8(bytes)
                    .map_err(|_| bad(text::TextError { type_name: "utf-8" }))?;
                text::parse_value(kind, s).map_err(bad)?
            }
        };
        values.push(v);
    }
    Ok(Row::new(values))
}

fn old_row(rel: &Relation, kind: u8, tuple: &[TupleValue<'_>]) -> Result<OldRow, DecodeError> {
    let r = row(rel, tuple)?;
    Ok(if kind == b'O' {
        OldRow::Full(r)
    } else {
        OldRow::Key(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn relation_msg() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.extend_from_slice(b"public\0t\0");
        m.push(b'd');
        m.extend_from_slice(&2i16.to_be_bytes());
        for (key, name, oid) in [(1u8, &b"id\0"[..], 23u32), (0, &b"big\0"[..], 25)] {
            m.push(key);
            m.extend_from_slice(name);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    fn update_msg() -> Vec<u8> {
        let mut m = vec![b'U'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&2i16.to_be_bytes());
        m.push(b't');
        m.extend_from_slice(&1i32.to_be_bytes());
        m.push(b'7');
        m.push(b'u');
        m
    }

    #[test]
    fn unchanged_toast_is_never_null() {
        let mut d = Decoder::new(1 << 20, None);
        let Step::Event(ev) = d.decode(&relation_msg(), Timestamp(0)).unwrap() else {
            panic!()
        };
        assert!(
            matches!(&ev, Some(Event::Relation(s)) if s.key == vec![0] && s.columns[1].pg_type == "text")
        );
        let Step::Event(ev) = d.decode(&update_msg(), Timestamp(0)).unwrap() else {
            panic!()
        };
        match &ev {
            Some(Event::Change(Change::Update { new, old: None, .. })) => {
                assert_eq!(new.values, vec![Value::Int4(7), Value::Unchanged]);
            }
            other => panic!("{other:?}"),
        }
        // The same relation again is not announced again.
        let Step::Event(ev) = d.decode(&relation_msg(), Timestamp(0)).unwrap() else {
            panic!()
        };
        assert!(ev.is_none());
    }

    fn begin_msg(xid: u32) -> Vec<u8> {
        let mut m = vec![b'B'];
        m.extend_from_slice(&100u64.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m.extend_from_slice(&xid.to_be_bytes());
        m
    }

    fn commit_msg(end: u64) -> Vec<u8> {
        let mut m = vec![b'C', 0];
        m.extend_from_slice(&(end - 8).to_be_bytes());
        m.extend_from_slice(&end.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m
    }

    fn origin_msg(name: &str) -> Vec<u8> {
        let mut m = vec![b'O'];
        m.extend_from_slice(&42u64.to_be_bytes());
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        m
    }

    fn events(d: &mut Decoder, msgs: &[Vec<u8>]) -> Vec<Event<Lsn>> {
        let mut out = Vec::new();
        for m in msgs {
            match d.decode(m, Timestamp(0)).unwrap() {
                Step::Event(ev) => out.extend(ev),
                Step::Replay { .. } => panic!("no streamed transaction here"),
            }
        }
        out
    }

    #[test]
    fn transactions_of_a_skipped_origin_lose_their_changes() {
        // (origin of the transaction, filter prefix, changes expected)
        let cases = [
            (None, Some("ferry_apply_"), 1),
            (Some("ferry_apply_ferry"), Some("ferry_apply_"), 0),
            (Some("pg_16384"), Some("ferry_apply_"), 1),
            (Some("ferry_apply_ferry"), None, 1),
        ];
        for (origin, prefix, want) in cases {
            let mut d = Decoder::new(1 << 20, None);
            if let Some(p) = prefix {
                d.skip_origins(p);
            }
            let mut msgs = vec![relation_msg(), begin_msg(7)];
            if let Some(o) = origin {
                msgs.push(origin_msg(o));
            }
            msgs.extend([update_msg(), commit_msg(200)]);
            // The next transaction, without origin, is never skipped.
            msgs.extend([begin_msg(8), update_msg(), commit_msg(300)]);
            let ev = events(&mut d, &msgs);
            let changes = ev.iter().filter(|e| matches!(e, Event::Change(_))).count();
            let commits: Vec<_> = ev
                .iter()
                .filter_map(|e| match e {
                    Event::Commit { position, .. } => Some(position.0),
                    _ => None,
                })
                .collect();
            assert_eq!(changes, want + 1, "{origin:?} {prefix:?}: {ev:?}");
            assert_eq!(commits, vec![200, 300], "positions still advance");
            assert_eq!(d.skipped_transactions(), u64::from(want == 0));
        }
    }

    #[test]
    fn a_streamed_transaction_of_a_skipped_origin_loses_its_changes() {
        let mut d = Decoder::new(1 << 20, None);
        d.skip_origins("ferry_apply_");
        let mut start = vec![b'S'];
        start.extend_from_slice(&9u32.to_be_bytes());
        start.push(1);
        let with_xid = |m: Vec<u8>| {
            let mut out = vec![m[0]];
            out.extend_from_slice(&9u32.to_be_bytes());
            out.extend_from_slice(&m[1..]);
            out
        };
        for m in [
            start,
            origin_msg("ferry_apply_ferry"),
            with_xid(relation_msg()),
            with_xid(update_msg()),
            vec![b'E'],
        ] {
            d.decode(&m, Timestamp(0)).unwrap();
        }
        let mut commit = vec![b'c'];
        commit.extend_from_slice(&9u32.to_be_bytes());
        commit.push(0);
        commit.extend_from_slice(&392u64.to_be_bytes());
        commit.extend_from_slice(&400u64.to_be_bytes());
        commit.extend_from_slice(&0i64.to_be_bytes());
        let Step::Replay {
            mut messages,
            commit,
            ..
        } = d.decode(&commit, Timestamp(0)).unwrap()
        else {
            panic!("a stream commit replays")
        };
        let mut changes = 0;
        while let Some(raw) = messages.next_message().unwrap() {
            changes += d
                .decode_replayed(&raw)
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Event::Change(_)))
                .count();
        }
        assert_eq!(changes, 0);
        assert!(matches!(
            commit,
            Event::Commit {
                position: Lsn(400),
                ..
            }
        ));
        // The relation was still learned: a later plain change decodes.
        let ev = events(&mut d, &[begin_msg(10), update_msg(), commit_msg(500)]);
        assert_eq!(
            ev.iter().filter(|e| matches!(e, Event::Change(_))).count(),
            1
        );
    }

    #[test]
    fn truncated_messages_are_errors() {
        for msg in [relation_msg(), update_msg()] {
            let mut d = Decoder::new(1 << 20, None);
            d.decode(&relation_msg(), Timestamp(0)).unwrap();
            for n in 0..msg.len() {
                assert!(d.decode(&msg[..n], Timestamp(0)).is_err(), "prefix {n}");
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), tag in proptest::sample::select(b"BCORYIUDTMSEcA".to_vec())) {
            let mut d = Decoder::new(64, None);
            let _ = d.decode(&relation_msg(), Timestamp(0));
            let mut msg = vec![tag];
            msg.extend_from_slice(&data);
            let _ = d.decode(&msg, Timestamp(0));
            let _ = d.decode(&data, Timestamp(0));
            let _ = d.decode_replayed(&msg);
        }

        #[test]
        fn mutated_messages_never_panic(pos in 0usize..40, byte: u8) {
            let mut d = Decoder::new(64, None);
            let mut rel = relation_msg();
            let mut upd = update_msg();
            if pos < rel.len() { rel[pos] = byte; }
            if pos < upd.len() { upd[pos] = byte; }
            let _ = d.decode(&rel, Timestamp(0));
            let _ = d.decode(&upd, Timestamp(0));
        }
    }
}
