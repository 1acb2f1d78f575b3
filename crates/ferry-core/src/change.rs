//! Row changes, transactions and the event stream between reader and applier.
//!
//! Readers emit [`Event`]s in source commit order. The changes between a
//! `Begin` and its `Commit` form one source transaction; the applier never
//! splits one across target transactions' checkpoints. `Relation` announces a
//! table's (new) schema before any change that needs it; `Ddl` is a schema
//! change carried at its place inside a transaction ([`crate::ddl`]). `Heartbeat` carries a
//! position with no data (keepalive, idle source) so progress and lag stay
//! true when nothing is written. `Replaced` counts values of the
//! transaction a source policy replaced.

use std::sync::Arc;

use crate::schema::{TableId, TableSchema};
use crate::value::{Timestamp, Value};

/// Column values in the table's column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    pub values: Vec<Value>,
}

impl Row {
    pub fn new(values: Vec<Value>) -> Self {
        Row { values }
    }

    /// Whether any column is the "unchanged" marker (unchanged TOAST).
    pub fn has_unchanged(&self) -> bool {
        self.values.iter().any(|v| matches!(v, Value::Unchanged))
    }
}

/// The "before" image a source sent for an update or delete.
///
/// Both variants hold a row of the table's full width; in `Key`, only the key
/// (replica identity) columns are meaningful and the others are `Null`.
#[derive(Debug, Clone, PartialEq)]
pub enum OldRow {
    Key(Row),
    Full(Row),
}

impl OldRow {
    pub fn row(&self) -> &Row {
        match self {
            OldRow::Key(r) | OldRow::Full(r) => r,
        }
    }
}

/// One row-level change (or a truncate).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Insert {
        table: TableId,
        new: Row,
    },
    /// `old` is present when the key changed or the table has a full replica
    /// identity; otherwise the key is taken from `new`.
    Update {
        table: TableId,
        old: Option<OldRow>,
        new: Row,
    },
    Delete {
        table: TableId,
        old: OldRow,
    },
    Truncate {
        tables: Vec<TableId>,
        cascade: bool,
        restart_identity: bool,
    },
}

impl Change {
    /// The table a row change touches (`None` for truncate).
    pub fn table(&self) -> Option<&TableId> {
        match self {
            Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. } => Some(table),
            Change::Truncate { .. } => None,
        }
    }
}

/// What a reader hands to the applier, in source order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<P> {
    /// A table's schema, sent before its first change and whenever it changes.
    Relation(Arc<TableSchema>),
    /// A source transaction starts.
    Begin {
        /// Source transaction id where the source has one.
        xid: Option<u64>,
        commit_time: Timestamp,
        /// Where the transaction's commit record starts, when the source
        /// says so up front (PostgreSQL `final_lsn`); lets a consumer decide
        /// per table whether a snapshot already holds the transaction.
        final_position: Option<P>,
    },
    Change(Change),
    /// A schema change at its place between the changes of a source
    /// transaction (PostgreSQL sources with `postgres.capture_ddl`).
    Ddl(Arc<crate::ddl::DdlMessage>),
    /// The transaction begun last is complete; `position` is its end.
    Commit {
        position: P,
        commit_time: Timestamp,
    },
    /// No data, but the source has reached `position` (at `time`): safe to
    /// acknowledge once everything before it is applied.
    Heartbeat {
        position: P,
        time: Timestamp,
    },
    /// Inside a transaction: `values` values the transaction writes to
    /// `column` of `table` (the source table) were replaced by the source's
    /// policy (MySQL/MariaDB: zero and partial dates written as NULL under
    /// `mysql.zero_dates = "null"`). The applier counts them in the state
    /// schema in the target transaction that holds the transaction's rows,
    /// so the counts are exact across crashes and replays.
    Replaced {
        table: TableId,
        column: String,
        values: u64,
    },
}

/// A whole source transaction (used where buffering is bounded by design,
/// e.g. tests and small batches).
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction<P> {
    pub xid: Option<u64>,
    pub commit_position: P,
    pub commit_time: Timestamp,
    pub changes: Vec<Change>,
}
