//! Reading the source schema from the PostgreSQL catalog.
//!
//! Consumes a plain connection to the source and the table filter; emits
//! [`SourceCatalog`]: the selected tables as [`ferry_core::TableSchema`]s
//! with sizes ([`SourceTable`]), the sequences ferry syncs at cutover and
//! the enum and domain types in use.
//!
//! Rules:
//! - System schemas (`pg_*`, `information_schema`), the ferry state schema,
//!   temporary tables and tables that belong to an extension are skipped.
//! - Partitions never appear on their own: a partitioned table arrives as its
//!   root, with every descendant in [`SourceTable::partitions`] and the leaves
//!   (which hold the rows) in [`SourceTable::relations`]. The filter applies
//!   to root names. Old-style inheritance children are ordinary tables.
//! - Columns come in `attnum` order with `format_type(atttypid, atttypmod)`
//!   as both source and target type; dropped and generated columns are left
//!   out (generated columns are recomputed by the target).
//! - [`TableSchema::key`] is the primary key in key order; a table without
//!   one but with `REPLICA IDENTITY USING INDEX` is keyed on that index.
//! - `reltuples = -1` (never analysed, PostgreSQL ≥ 14) means "unknown".

use std::collections::{BTreeMap, HashMap};

use ferry_core::config::TableFilter;
use ferry_core::{Column, Error, ReplicaIdentity, TableId, TableSchema};
use tokio_postgres::Client;

use crate::connect::{query_error, server_version_num};

/// `pg_class.relkind` of a selected table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    /// `r`: an ordinary table.
    Table,
    /// `p`: a partitioned table (rows live in its partitions).
    Partitioned,
}

/// One relation that physically holds rows of a table (the table itself,
/// or a leaf partition of a partitioned table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: TableId,
    /// `reltuples`, `None` when never analysed.
    pub row_estimate: Option<u64>,
    /// Size of the main fork in blocks (`pg_relation_size / block_size`).
    pub blocks: u64,
}

/// A selected source table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    /// `pg_class.oid` of the table (the root of a partitioned one).
    pub oid: u32,
    pub schema: TableSchema,
    /// Sum over [`Self::relations`]; `None` when any of them is unknown.
    pub row_estimate: Option<u64>,
    /// `pg_table_size` (heap + TOAST) summed over the relations.
    pub bytes: u64,
    /// Every partition below a partitioned root (leaves and sub-roots).
    pub partitions: Vec<TableId>,
    /// The relations to read rows from (itself, or the leaf partitions).
    pub relations: Vec<Relation>,
    pub relkind: RelKind,
    /// Columns of the replica identity index (`REPLICA IDENTITY USING INDEX`).
    pub replica_identity_columns: Vec<String>,
    /// `UNLOGGED`: its changes never reach logical decoding.
    pub unlogged: bool,
}

/// A sequence with its current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSequence {
    pub id: TableId,
    /// `pg_sequences.last_value`; `None` before the first `nextval` — and
    /// also when the role may not read it (see `readable`).
    pub last_value: Option<i64>,
    /// The connected role holds SELECT on the sequence, so its value can be
    /// read (`pg_sequences` shows NULL otherwise, like an unused sequence).
    pub readable: bool,
    /// The column owning it (`OWNED BY`), if any.
    pub owned_by: Option<(TableId, String)>,
}

/// A user-defined type that selected tables may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceType {
    /// `schema.typename`.
    pub id: TableId,
    pub kind: TypeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// Labels in sort order.
    Enum(Vec<String>),
    Domain {
        /// `format_type` of the base type.
        base: String,
        not_null: bool,
    },
}

/// Everything [`read_catalog`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCatalog {
    pub tables: Vec<SourceTable>,
    pub sequences: Vec<SourceSequence>,
    pub types: Vec<SourceType>,
}

/// Sequences the source user may not read, for messages: their names as
/// printed and as quoted SQL (`GRANT SELECT ON SEQUENCE <quoted> …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableSequences {
    pub names: String,
    pub quoted: String,
}

impl SourceCatalog {
    /// `None` when every carried sequence is readable.
    pub fn unreadable_sequences(&self) -> Option<UnreadableSequences> {
        let unreadable: Vec<&SourceSequence> =
            self.sequences.iter().filter(|s| !s.readable).collect();
        if unreadable.is_empty() {
            return None;
        }
        let join = |f: fn(&TableId) -> String| {
            unreadable
                .iter()
                .map(|s| f(&s.id))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Some(UnreadableSequences {
            names: join(TableId::to_string),
            quoted: join(TableId::quoted),
        })
    }

    pub fn table(&self, id: &TableId) -> Option<&SourceTable> {
        self.tables.iter().find(|t| &t.schema.id == id)
    }

    /// The schemas holding selected tables, sorted.
    pub fn schemas(&self) -> Vec<String> {
        let mut s: Vec<String> = self
            .tables
            .iter()
            .map(|t| t.schema.id.schema.clone())
            .collect();
        s.sort();
        s.dedup();
        s
    }
}

/// A row of the relation query, before partitions are folded into roots.
#[derive(Debug)]
struct RawRelation {
    oid: u32,
    id: TableId,
    relkind: u8,
    replident: u8,
    is_partition: bool,
    parent: Option<u32>,
    reltuples: f64,
    bytes: i64,
    blocks: i64,
    unlogged: bool,
}

const USER_SCHEMAS: &str =
    "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND n.nspname <> $1";

/// Read the selected tables, sequences and types. `state_schema` is ferry's
/// own schema name, never carried.
pub async fn read_catalog(
    client: &Client,
    filter: &TableFilter,
    state_schema: &str,
) -> Result<SourceCatalog, Error> {
    let tables = read_tables(client, filter, state_schema).await?;
    let selected: Vec<TableId> = tables.iter().map(|t| t.schema.id.clone()).collect();
    Ok(SourceCatalog {
        sequences: read_sequences(client, state_schema, &selected, filter).await?,
        types: read_types(client, state_schema).await?,
        tables,
    })
}

/// One catalog read shared by the checks of `ferry plan` and the pipeline
/// when `ferry run` starts: both need the same catalog with the same
/// filter at the same moment, each on its own session, so whichever asks
/// first reads it and the other waits for that answer (on Pagila the
/// second read cost the source about 15 ms of a backend's time). A read
/// that fails is not kept: the other asker reads again. Made per attempt
/// ([`crate::source::PgSource::share_catalog`]): a later attempt reads
/// afresh.
#[derive(Debug, Clone, Default)]
pub struct SharedCatalog(std::sync::Arc<tokio::sync::OnceCell<SourceCatalog>>);

impl SharedCatalog {
    /// The shared catalog, read on `client` if no one has read it yet.
    pub async fn get_or_read(
        &self,
        client: &Client,
        filter: &TableFilter,
        state_schema: &str,
    ) -> Result<SourceCatalog, Error> {
        self.0
            .get_or_try_init(|| read_catalog(client, filter, state_schema))
            .await
            .cloned()
    }

    /// The catalog through `shared` when there is one, else read on
    /// `client`.
    pub async fn read(
        shared: Option<&Self>,
        client: &Client,
        filter: &TableFilter,
        state_schema: &str,
    ) -> Result<SourceCatalog, Error> {
        match shared {
            Some(shared) => shared.get_or_read(client, filter, state_schema).await,
            None => read_catalog(client, filter, state_schema).await,
        }
    }
}

/// The selected tables with their columns and keys, sorted by name. Reads
/// only catalog tables (no name resolution), so inside a snapshot
/// transaction it answers as of that snapshot.
pub async fn read_tables(
    client: &Client,
    filter: &TableFilter,
    state_schema: &str,
) -> Result<Vec<SourceTable>, Error> {
    let version = server_version_num(client).await?;
    let raw = read_relations(client, state_schema).await?;
    let mut tables = fold_partitions(&raw, filter);
    let oids: Vec<u32> = tables.iter().map(|(oid, _)| *oid).collect();
    let mut columns = read_columns(client, &oids, version).await?;
    let mut keys = read_keys(client, &oids, version).await?;
    let mut out = Vec::with_capacity(tables.len());
    for (oid, mut t) in tables.drain(..) {
        t.schema.columns = columns.remove(&oid).unwrap_or_default();
        let (pk, ident) = keys.remove(&oid).unwrap_or_default();
        let key_names = if pk.is_empty() && t.schema.replica_identity == ReplicaIdentity::Index {
            &ident
        } else {
            &pk
        };
        t.schema.key = key_names
            .iter()
            .filter_map(|n| t.schema.column_index(n))
            .collect();
        t.replica_identity_columns = ident;
        out.push(t);
    }
    out.sort_by(|a, b| a.schema.id.cmp(&b.schema.id));
    Ok(out)
}

async fn read_relations(client: &Client, state_schema: &str) -> Result<Vec<RawRelation>, Error> {
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relreplident::text,
                c.relispartition, i.inhparent, c.reltuples::float8,
                coalesce(pg_table_size(c.oid), 0),
                coalesce(pg_relation_size(c.oid), 0) / current_setting('block_size')::int8,
                c.relpersistence = 'u'
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND c.relispartition
          WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {USER_SCHEMAS}
            AND NOT EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                               AND d.deptype = 'e')"
    );
    let rows = client
        .query(&sql, &[&state_schema])
        .await
        .map_err(|e| query_error("reading source tables from pg_class", e))?;
    Ok(rows
        .iter()
        .map(|r| RawRelation {
            oid: r.get(0),
            id: TableId::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            relkind: first_byte(r.get(3)),
            replident: first_byte(r.get(4)),
            is_partition: r.get(5),
            parent: r.get(6),
            reltuples: r.get(7),
            bytes: r.get(8),
            blocks: r.get(9),
            unlogged: r.get(10),
        })
        .collect())
}

fn first_byte(s: String) -> u8 {
    s.as_bytes().first().copied().unwrap_or(b'?')
}

fn row_estimate(reltuples: f64) -> Option<u64> {
    // reltuples is an estimate stored as float4; -1 means never analysed.
    if reltuples < 0.0 || !reltuples.is_finite() {
        None
    } else {
        Some(reltuples.round() as u64)
    }
}

/// Fold partitions into their roots and apply the filter to root names.
/// Pure, so the partition rules are unit-tested.
fn fold_partitions(raw: &[RawRelation], filter: &TableFilter) -> Vec<(u32, SourceTable)> {
    let by_oid: HashMap<u32, &RawRelation> = raw.iter().map(|r| (r.oid, r)).collect();
    let root_of = |start: &RawRelation| {
        let mut oid = start.oid;
        let mut parent = start.parent.filter(|_| start.is_partition);
        // Bounded walk: partition trees are shallow; a cycle cannot hang us.
        for _ in 0..64 {
            match parent.and_then(|p| by_oid.get(&p)) {
                Some(up) => {
                    oid = up.oid;
                    parent = up.parent.filter(|_| up.is_partition);
                }
                None => break,
            }
        }
        oid
    };
    let mut children: BTreeMap<u32, Vec<&RawRelation>> = BTreeMap::new();
    for r in raw.iter().filter(|r| r.is_partition) {
        children.entry(root_of(r)).or_default().push(r);
    }
    let mut out = Vec::new();
    for r in raw
        .iter()
        .filter(|r| !r.is_partition && filter.matches(&r.id))
    {
        let mut parts = children.remove(&r.oid).unwrap_or_default();
        parts.sort_by(|a, b| a.id.cmp(&b.id));
        let relkind = if r.relkind == b'p' {
            RelKind::Partitioned
        } else {
            RelKind::Table
        };
        let leaves: Vec<&RawRelation> = match relkind {
            RelKind::Table => vec![r],
            RelKind::Partitioned => parts
                .iter()
                .copied()
                .filter(|p| p.relkind == b'r')
                .collect(),
        };
        let relations: Vec<Relation> = leaves
            .iter()
            .map(|l| Relation {
                id: l.id.clone(),
                row_estimate: row_estimate(l.reltuples),
                blocks: u64::try_from(l.blocks).unwrap_or(0),
            })
            .collect();
        let row_estimate = relations
            .iter()
            .try_fold(0u64, |acc, l| l.row_estimate.map(|n| acc + n));
        let table = SourceTable {
            oid: r.oid,
            schema: TableSchema {
                id: r.id.clone(),
                columns: Vec::new(),
                key: Vec::new(),
                replica_identity: ReplicaIdentity::from_pg_char(r.replident)
                    .unwrap_or(ReplicaIdentity::Default),
            },
            row_estimate,
            bytes: leaves
                .iter()
                .map(|l| u64::try_from(l.bytes).unwrap_or(0))
                .sum(),
            partitions: parts.iter().map(|p| p.id.clone()).collect(),
            relations,
            relkind,
            replica_identity_columns: Vec::new(),
            unlogged: r.unlogged,
        };
        out.push((r.oid, table));
    }
    out
}

async fn read_columns(
    client: &Client,
    oids: &[u32],
    version: u32,
) -> Result<HashMap<u32, Vec<Column>>, Error> {
    let generated = if version >= 120_000 {
        "AND a.attgenerated = ''"
    } else {
        ""
    };
    let sql = format!(
        "SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid,
                a.attnotnull
           FROM pg_attribute a
          WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped {generated}
          ORDER BY a.attrelid, a.attnum"
    );
    let rows = client
        .query(&sql, &[&oids])
        .await
        .map_err(|e| query_error("reading source columns from pg_attribute", e))?;
    let mut out: HashMap<u32, Vec<Column>> = HashMap::new();
    for r in rows {
        let ty: String = r.get(2);
        out.entry(r.get(0)).or_default().push(Column {
            name: r.get(1),
            source_type: ty.clone(),
            pg_type: ty,
            type_oid: Some(r.get(3)),
            nullable: !r.get::<_, bool>(4),
        });
    }
    Ok(out)
}

/// Per table: (primary key columns, replica identity index columns), in key order.
async fn read_keys(
    client: &Client,
    oids: &[u32],
    version: u32,
) -> Result<HashMap<u32, (Vec<String>, Vec<String>)>, Error> {
    let key_atts = if version >= 110_000 {
        "k.ord <= i.indnkeyatts"
    } else {
        "true"
    };
    let sql = format!(
        "SELECT i.indrelid, i.indisprimary, i.indisreplident,
                ARRAY(SELECT a.attname::text
                        FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       WHERE {key_atts}
                       ORDER BY k.ord)
           FROM pg_index i
          WHERE i.indrelid = ANY($1) AND (i.indisprimary OR i.indisreplident)"
    );
    let rows = client
        .query(&sql, &[&oids])
        .await
        .map_err(|e| query_error("reading source keys from pg_index", e))?;
    let mut out: HashMap<u32, (Vec<String>, Vec<String>)> = HashMap::new();
    for r in rows {
        let cols: Vec<String> = r.get(3);
        let entry = out.entry(r.get(0)).or_default();
        if r.get::<_, bool>(1) {
            entry.0 = cols.clone();
        }
        if r.get::<_, bool>(2) {
            entry.1 = cols;
        }
    }
    Ok(out)
}

/// Sequences owned by a selected table, plus unowned ones that a selected
/// table's column default uses or whose `schema.name` the table filter
/// matches.
async fn read_sequences(
    client: &Client,
    state_schema: &str,
    selected: &[TableId],
    filter: &TableFilter,
) -> Result<Vec<SourceSequence>, Error> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, s.last_value,
                tn.nspname::text, t.relname::text, a.attname::text,
                has_sequence_privilege(c.oid, 'SELECT'),
                ARRAY(SELECT un.nspname::text FROM pg_depend ud
                        JOIN pg_attrdef ad ON ud.classid = 'pg_attrdef'::regclass AND ud.objid = ad.oid
                        JOIN pg_class ut ON ut.oid = ad.adrelid
                        JOIN pg_namespace un ON un.oid = ut.relnamespace
                       WHERE ud.refclassid = 'pg_class'::regclass AND ud.refobjid = c.oid
                       ORDER BY ut.oid),
                ARRAY(SELECT ut.relname::text FROM pg_depend ud
                        JOIN pg_attrdef ad ON ud.classid = 'pg_attrdef'::regclass AND ud.objid = ad.oid
                        JOIN pg_class ut ON ut.oid = ad.adrelid
                       WHERE ud.refclassid = 'pg_class'::regclass AND ud.refobjid = c.oid
                       ORDER BY ut.oid)
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname
           LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
           LEFT JOIN pg_class t ON t.oid = d.refobjid
           LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
           LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          WHERE c.relkind = 'S' AND {USER_SCHEMAS}
          ORDER BY 1, 2"
    );
    let rows = client
        .query(&sql, &[&state_schema])
        .await
        .map_err(|e| query_error("reading source sequences", e))?;
    let mut out = Vec::new();
    for r in rows {
        let id = TableId::new(r.get::<_, String>(0), r.get::<_, String>(1));
        let owned_by = match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(4)) {
            (Some(s), Some(t)) => Some((
                TableId::new(s, t),
                r.get::<_, Option<String>>(5).unwrap_or_default(),
            )),
            _ => None,
        };
        // Tables whose column defaults call it (`DEFAULT nextval(…)`).
        let used_by: Vec<TableId> = r
            .get::<_, Vec<String>>(7)
            .into_iter()
            .zip(r.get::<_, Vec<String>>(8))
            .map(|(s, t)| TableId::new(s, t))
            .collect();
        let keep = match &owned_by {
            Some((table, _)) => selected.contains(table),
            None => filter.matches(&id) || used_by.iter().any(|t| selected.contains(t)),
        };
        if keep {
            out.push(SourceSequence {
                id,
                last_value: r.get(2),
                readable: r.get(6),
                owned_by,
            });
        }
    }
    Ok(out)
}

async fn read_types(client: &Client, state_schema: &str) -> Result<Vec<SourceType>, Error> {
    let sql = format!(
        "SELECT n.nspname::text, t.typname::text, t.typtype::text,
                ARRAY(SELECT e.enumlabel::text FROM pg_enum e
                       WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
                format_type(t.typbasetype, t.typtypmod), t.typnotnull
           FROM pg_type t
           JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE t.typtype IN ('e', 'd') AND {USER_SCHEMAS}
            AND NOT EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                               AND d.deptype = 'e')
          ORDER BY 1, 2"
    );
    let rows = client
        .query(&sql, &[&state_schema])
        .await
        .map_err(|e| query_error("reading source enum and domain types", e))?;
    Ok(rows
        .iter()
        .map(|r| SourceType {
            id: TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            kind: if r.get::<_, String>(2) == "e" {
                TypeKind::Enum(r.get(3))
            } else {
                TypeKind::Domain {
                    base: r.get(4),
                    not_null: r.get(5),
                }
            },
        })
        .collect())
}

/// `names` (quoted) as statements on a table's own rows name them: `ONLY
/// name`, so an inheritance parent leaves out its children (tables of
/// their own, carried or not); a partitioned table plainly (its rows are
/// its partitions').
pub async fn own_rows(client: &Client, names: &[String]) -> Result<Vec<String>, Error> {
    let partitioned: Vec<String> = client
        .query(
            "SELECT n FROM unnest($1::text[]) n WHERE (SELECT relkind FROM pg_class WHERE oid = n::regclass) = 'p'",
            &[&names],
        )
        .await
        .map_err(|e| query_error(&format!("reading the kind of {}", names.join(", ")), e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(names
        .iter()
        .map(|n| {
            if partitioned.contains(n) {
                n.clone()
            } else {
                format!("ONLY {n}")
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::config::TablesConfig;

    fn raw(oid: u32, name: &str, kind: u8, parent: Option<u32>, tuples: f64) -> RawRelation {
        RawRelation {
            oid,
            id: TableId::new("public", name),
            relkind: kind,
            replident: b'd',
            is_partition: parent.is_some(),
            parent,
            reltuples: tuples,
            bytes: 8192,
            blocks: 1,
            unlogged: false,
        }
    }

    fn filter(include: &[&str], exclude: &[&str]) -> TableFilter {
        TablesConfig {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            ..TablesConfig::default()
        }
        .filter()
        .unwrap()
    }

    #[test]
    fn partitions_fold_into_roots() {
        let rels = vec![
            raw(1, "payment", b'p', None, -1.0),
            raw(2, "payment_2022", b'p', Some(1), -1.0),
            raw(3, "payment_2022_01", b'r', Some(2), 10.0),
            raw(4, "payment_2023", b'r', Some(1), 5.0),
            raw(5, "film", b'r', None, 1000.0),
        ];
        let out = fold_partitions(&rels, &filter(&["*.*"], &[]));
        let names: Vec<_> = out.iter().map(|(_, t)| t.schema.id.name.as_str()).collect();
        assert_eq!(names, ["payment", "film"]);
        let payment = &out[0].1;
        assert_eq!(payment.relkind, RelKind::Partitioned);
        assert_eq!(payment.partitions.len(), 3);
        let leaves: Vec<_> = payment
            .relations
            .iter()
            .map(|r| r.id.name.as_str())
            .collect();
        assert_eq!(leaves, ["payment_2022_01", "payment_2023"]);
        assert_eq!(payment.row_estimate, Some(15));
        assert_eq!(out[1].1.row_estimate, Some(1000));
        assert_eq!(out[1].1.relations.len(), 1);
    }

    #[test]
    fn unknown_estimates_stay_unknown() {
        let rels = vec![
            raw(1, "p", b'p', None, -1.0),
            raw(2, "p1", b'r', Some(1), -1.0),
            raw(3, "p2", b'r', Some(1), 7.0),
        ];
        let out = fold_partitions(&rels, &filter(&["*.*"], &[]));
        assert_eq!(out[0].1.row_estimate, None);
    }

    #[test]
    fn filter_applies_to_roots_only() {
        let rels = vec![
            raw(1, "payment", b'p', None, 0.0),
            raw(2, "payment_p1", b'r', Some(1), 0.0),
            raw(3, "film", b'r', None, 0.0),
        ];
        let out = fold_partitions(&rels, &filter(&["public.pay*"], &[]));
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].1.partitions,
            vec![TableId::new("public", "payment_p1")]
        );
        let out = fold_partitions(&rels, &filter(&["*.*"], &["public.payment"]));
        let names: Vec<_> = out.iter().map(|(_, t)| t.schema.id.name.clone()).collect();
        assert_eq!(names, ["film"]);
    }
}
