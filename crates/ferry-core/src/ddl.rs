//! Schema changes carried in the change stream (PostgreSQL sources with
//! `postgres.capture_ddl`).
//!
//! A source event trigger describes each DDL command by the catalog state
//! it left behind, not by its text: core PostgreSQL has no deparser for a
//! command's parse tree, and a query string may hold several statements or
//! come from a function. So each [`DdlMessage`] carries, for every table a
//! command touched, its whole resulting shape ([`TableState`]: columns by
//! attribute number with their names before the command, constraints,
//! indexes, partitions, comments), the enums and sequences it touched, and
//! the objects it dropped. The applier compares that state with the target
//! and runs what makes the target equal, at the message's place in the
//! stream (`ferry-apply`'s `schema_sync`).
//!
//! What the catalog cannot say is carried next to it: a column type change
//! rewrites the rows with the statement's `USING` expression, which only
//! its text holds ([`TableState::type_changes`], parsed from the statement
//! by the source crate), and `ADD COLUMN … DEFAULT` fills existing rows
//! with the value the source stored (`attmissingval`, [`ColumnState::missing`]).
//!
//! Expressions (defaults, constraint and index definitions, partition
//! bounds, types) are the server's own deparsed text, written with
//! `search_path = pg_catalog` so every name is schema-qualified.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::TableId;

/// Logical message prefix of a DDL message.
pub const DDL_PREFIX: &str = "ferry.ddl";

/// One DDL command (or one drop) as the source event trigger recorded it.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct DdlMessage {
    /// What ran: one entry per command the server collected.
    pub commands: Vec<CommandInfo>,
    /// The resulting state of every table a command touched (an index,
    /// a constraint or a comment counts for its table).
    pub tables: Vec<TableState>,
    pub enums: Vec<EnumState>,
    pub sequences: Vec<SequenceState>,
    /// Objects dropped (from `sql_drop`).
    pub dropped: Vec<DroppedObject>,
    /// The event trigger failed to describe the command (it never fails
    /// the application's statement): the server's error, and `tag`.
    pub error: Option<String>,
    pub tag: Option<String>,
}

/// One collected command: its tag and the object it acted on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct CommandInfo {
    /// `CREATE TABLE`, `ALTER TABLE`, `CREATE INDEX`, …
    pub tag: String,
    /// `table`, `index`, `view`, `function`, … (`object_type`).
    #[serde(rename = "type")]
    pub object_type: String,
    pub schema: Option<String>,
    /// `object_identity`, e.g. `public.orders`.
    pub identity: String,
}

/// A table's shape after the command.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct TableState {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `r` (table) or `p` (partitioned).
    pub kind: String,
    /// `p` permanent, `u` unlogged.
    pub persistence: String,
    /// `d`, `f`, `n` or `i` (`relreplident`).
    pub replident: String,
    /// In ferry's publication(s): its row changes are carried.
    pub published: bool,
    pub comment: Option<String>,
    /// `pg_get_partkeydef` of a partitioned table.
    pub partkey: Option<String>,
    /// The partitioned table this one is a partition of, with its bound.
    pub parent: Option<PartitionRef>,
    /// Partitions of this table.
    pub partitions: Vec<PartitionRef>,
    pub columns: Vec<ColumnState>,
    /// Constraints defined on this table itself (not inherited), NOT NULL
    /// ones excepted (they are [`ColumnState::not_null`] and
    /// [`ColumnState::not_null_name`]).
    pub constraints: Vec<ConstraintState>,
    /// Indexes that back no constraint, and are not partitions of a parent
    /// table's index.
    pub indexes: Vec<IndexState>,
    /// Names before the command (`ALTER TABLE` / `ALTER INDEX`), when the
    /// source recorded them: how renames are told from drop-and-add.
    pub before: Option<Before>,
    /// The command's text mentioned a column type change: per column (its
    /// name after the command), the `USING` expression or `None` for the
    /// default cast. Filled by the source crate from the statement text.
    #[serde(skip)]
    pub type_changes: BTreeMap<String, Option<String>>,
    /// The statement text could not be read for type changes (several
    /// statements the parser does not know, a function's body, …).
    #[serde(skip)]
    pub type_changes_unknown: bool,
}

impl TableState {
    pub fn id(&self) -> TableId {
        TableId::new(&self.schema, &self.name)
    }

    /// The table's id before the command (a rename), if it had another.
    pub fn id_before(&self) -> Option<TableId> {
        let b = self.before.as_ref()?;
        let id = TableId::new(&b.schema, &b.name);
        (id != self.id()).then_some(id)
    }
}

/// A partition (or the parent of one) and its bound.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct PartitionRef {
    pub schema: String,
    pub name: String,
    /// `FOR VALUES …` or `DEFAULT`.
    pub bound: String,
}

/// A column after the command.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct ColumnState {
    pub attnum: i16,
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub not_null: bool,
    /// The name of the column's NOT NULL constraint (PostgreSQL 18+
    /// records NOT NULL as a named constraint; `None` before). A partition
    /// carries its parent's names, a table made with `LIKE` those of the
    /// table it copied: the target is given the same names.
    pub not_null_name: Option<String>,
    /// That constraint was added `NOT VALID` and not validated yet (18+).
    pub not_null_not_valid: bool,
    /// The column default (not for generated columns).
    pub default: Option<String>,
    /// Expression of a stored generated column.
    pub generated: Option<String>,
    /// `a` (ALWAYS) or `d` (BY DEFAULT) identity.
    pub identity: Option<String>,
    /// The value rows that existed before the column was added read
    /// (`attmissingval`), as text.
    pub missing: Option<String>,
    pub collation: Option<String>,
    pub comment: Option<String>,
}

/// A table constraint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct ConstraintState {
    pub oid: u32,
    pub name: String,
    /// `p`, `u`, `f`, `c` or `x`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pg_get_constraintdef`.
    pub def: String,
    /// The table a foreign key refers to.
    pub references: Option<TableRef>,
}

/// A table named by schema and name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

/// An index that backs no constraint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct IndexState {
    pub oid: u32,
    pub name: String,
    /// `pg_get_indexdef`: `CREATE [UNIQUE] INDEX name ON [ONLY] schema.table USING …`.
    pub def: String,
    pub comment: Option<String>,
}

/// Names before an `ALTER TABLE`/`ALTER INDEX` (from `ddl_command_start`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct Before {
    pub schema: String,
    pub name: String,
    /// The partitioned table it was a partition of (oid).
    pub parent: Option<i64>,
    /// Column names by attribute number.
    pub columns: BTreeMap<String, String>,
    /// Index and constraint names by oid.
    pub objects: BTreeMap<String, String>,
}

impl Before {
    pub fn column(&self, attnum: i16) -> Option<&str> {
        self.columns.get(&attnum.to_string()).map(String::as_str)
    }

    pub fn object(&self, oid: u32) -> Option<&str> {
        self.objects.get(&oid.to_string()).map(String::as_str)
    }
}

/// An enum type and its labels in sort order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct EnumState {
    pub schema: String,
    pub name: String,
    pub labels: Vec<String>,
}

/// A sequence's definition (not its value: values are synced at cutover).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct SequenceState {
    pub schema: String,
    pub name: String,
    /// `bigint`, `integer` or `smallint`.
    #[serde(rename = "type")]
    pub type_name: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// `schema.table.column` (quoted) the sequence is owned by.
    pub owned_by: Option<OwnedBy>,
    /// An identity column's sequence: the target's own identity makes it.
    pub identity: bool,
}

/// The column that owns a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct OwnedBy {
    pub schema: String,
    pub table: String,
    pub column: String,
}

/// One object `sql_drop` reported.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct DroppedObject {
    /// `table`, `index`, `sequence`, `table constraint`, `type`, `view`, …
    #[serde(rename = "type")]
    pub object_type: String,
    pub schema: Option<String>,
    pub name: Option<String>,
    pub identity: String,
    /// `address_names` (e.g. schema, table, constraint for a constraint).
    pub names: Vec<String>,
    /// Dropped by the statement itself, not as a dependency.
    pub original: bool,
}
