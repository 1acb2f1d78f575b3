//! What the decoder knows about each column of a mapped table.
//!
//! A TABLE_MAP event carries the column types and their binlog metadata
//! (precision, fsp, length bytes) but not always names, signedness or enum
//! labels: MySQL and MariaDB send those only as optional metadata
//! (`binlog_row_metadata = FULL`; `MINIMAL` gives signedness and charsets).
//! The catalog ([`crate::catalog`]) knows names and `COLUMN_TYPE`s. A
//! [`ColumnSpec`] combines both: the catalog wins where given, the optional
//! metadata fills in otherwise, and a table with neither names nor a catalog
//! schema is refused with the fix.

use std::sync::Arc;

use ferry_core::{Column, ReplicaIdentity, TableId, TableSchema};
use mysql_async::binlog::events::{OptionalMetadataField, TableMapEvent};
use mysql_async::consts::ColumnType;

use crate::typemap;

/// One column as the decoder converts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    /// The real type from the TABLE_MAP (ENUM/SET resolved from STRING).
    pub binlog_type: ColumnType,
    /// The TABLE_MAP metadata bytes of this column.
    pub meta: Vec<u8>,
    /// The PostgreSQL type the target column has; conversion follows it.
    pub pg_type: String,
    pub unsigned: bool,
    /// The TABLE_MAP's signedness of a numeric column (optional metadata;
    /// `false` without it): how the row parser reads the bytes, exactly as
    /// `mysql_common` does. Conversion follows [`Self::unsigned`].
    pub binlog_unsigned: bool,
    /// ENUM or SET labels in definition order.
    pub labels: Option<Vec<String>>,
    /// Collation id of a character column, when the binlog says.
    pub collation: Option<u16>,
    /// Character set name from the catalog, used when the binlog does not say.
    pub charset: Option<String>,
    /// A `tables.columns` type override: `pg_type` is then the mapping's
    /// natural type and values are handed over as text of this type.
    pub target: Option<String>,
}

/// A table as one TABLE_MAP describes it.
#[derive(Debug, Clone)]
pub struct MappedTable {
    pub schema: Arc<TableSchema>,
    pub columns: Vec<ColumnSpec>,
    /// Index of each JSON column among the table's JSON columns (partial updates).
    pub key: Vec<usize>,
}

/// Why a TABLE_MAP could not be resolved to columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// No names in the binlog and no schema given.
    NoNames,
    /// The catalog schema and the binlog disagree (column count or type).
    Mismatch(String),
    /// The TABLE_MAP itself is malformed.
    Malformed(String),
}

/// Parses the quoted labels of `enum('a','b''c')` / `set(...)`.
pub fn labels_from_column_type(column_type: &str) -> Option<Vec<String>> {
    let lower = column_type.trim_start().to_ascii_lowercase();
    if !(lower.starts_with("enum(") || lower.starts_with("set(")) {
        return None;
    }
    let start = column_type.find('(')? + 1;
    let body = &column_type[start..];
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        match chars.next()? {
            '\'' => {
                let mut label = String::new();
                loop {
                    match chars.next()? {
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                            label.push('\'');
                        }
                        '\'' => break,
                        '\\' => label.push(chars.next()?),
                        c => label.push(c),
                    }
                }
                out.push(label);
            }
            ',' | ' ' => {}
            ')' => return Some(out),
            _ => return None,
        }
    }
}

/// Whether a MySQL `COLUMN_TYPE` is unsigned (`unsigned` or `zerofill`).
fn is_unsigned(column_type: &str) -> bool {
    let lower = column_type.to_ascii_lowercase();
    let flags = lower.rsplit(')').next().unwrap_or(&lower);
    flags
        .split_whitespace()
        .any(|f| f == "unsigned" || f == "zerofill")
}

/// The base name of a `COLUMN_TYPE` (`int(10) unsigned` → `int`).
fn base_name(column_type: &str) -> String {
    let lower = column_type.trim().to_ascii_lowercase();
    let end = lower
        .find(|c: char| c == '(' || c.is_whitespace())
        .unwrap_or(lower.len());
    lower[..end].to_owned()
}

/// Whether a catalog type can arrive as this binlog type.
fn compatible(base: &str, t: ColumnType) -> bool {
    use ColumnType::*;
    match t {
        MYSQL_TYPE_TINY => base == "tinyint" || base == "bool" || base == "boolean",
        MYSQL_TYPE_SHORT => base == "smallint",
        MYSQL_TYPE_INT24 => base == "mediumint",
        MYSQL_TYPE_LONG => base == "int" || base == "integer",
        MYSQL_TYPE_LONGLONG => base == "bigint",
        MYSQL_TYPE_FLOAT => base == "float",
        MYSQL_TYPE_DOUBLE => matches!(base, "double" | "real" | "float"),
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => {
            matches!(base, "decimal" | "numeric" | "dec" | "fixed")
        }
        MYSQL_TYPE_BIT => base == "bit",
        MYSQL_TYPE_YEAR => base == "year",
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => base == "date",
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => base == "datetime",
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => base == "timestamp",
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => base == "time",
        MYSQL_TYPE_ENUM => base == "enum",
        MYSQL_TYPE_SET => base == "set",
        MYSQL_TYPE_JSON => base == "json",
        MYSQL_TYPE_GEOMETRY => matches!(
            base,
            "geometry"
                | "point"
                | "linestring"
                | "polygon"
                | "multipoint"
                | "multilinestring"
                | "multipolygon"
                | "geometrycollection"
                | "geomcollection"
        ),
        MYSQL_TYPE_STRING | MYSQL_TYPE_VAR_STRING | MYSQL_TYPE_VARCHAR => matches!(
            base,
            "char" | "varchar" | "binary" | "varbinary" | "uuid" | "inet4" | "inet6"
        ),
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            matches!(
                base,
                "tinytext"
                    | "text"
                    | "mediumtext"
                    | "longtext"
                    | "tinyblob"
                    | "blob"
                    | "mediumblob"
                    | "longblob"
                    | "json"
            )
        }
        // Types ferry does not model are carried as text either way.
        _ => true,
    }
}

/// A `COLUMN_TYPE`-like name for a binlog type, for tables known only from
/// the binlog (fed to [`typemap::map_column_type`]).
fn synthetic_type(
    t: ColumnType,
    meta: &[u8],
    unsigned: bool,
    labels: Option<&[String]>,
    collation: Option<u16>,
) -> String {
    // Character types: binary collation (or none known) means bytes.
    let text = collation.is_some_and(|c| c != BINARY_COLLATION);
    use ColumnType::*;
    let u = if unsigned { " unsigned" } else { "" };
    let m0 = meta.first().copied().unwrap_or(0);
    let m1 = meta.get(1).copied().unwrap_or(0);
    let quoted = |l: &[String]| {
        l.iter()
            .map(|s| format!("'{}'", s.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",")
    };
    match t {
        MYSQL_TYPE_TINY => format!("tinyint{u}"),
        MYSQL_TYPE_SHORT => format!("smallint{u}"),
        MYSQL_TYPE_INT24 => format!("mediumint{u}"),
        MYSQL_TYPE_LONG => format!("int{u}"),
        MYSQL_TYPE_LONGLONG => format!("bigint{u}"),
        MYSQL_TYPE_FLOAT => "float".into(),
        MYSQL_TYPE_DOUBLE => "double".into(),
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => format!("decimal({m0},{m1})"),
        MYSQL_TYPE_BIT => format!("bit({})", u32::from(m1) * 8 + u32::from(m0)),
        MYSQL_TYPE_YEAR => "year".into(),
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => "date".into(),
        MYSQL_TYPE_DATETIME => "datetime".into(),
        MYSQL_TYPE_DATETIME2 if m0 > 0 => format!("datetime({m0})"),
        MYSQL_TYPE_DATETIME2 => "datetime".into(),
        MYSQL_TYPE_TIMESTAMP => "timestamp".into(),
        MYSQL_TYPE_TIMESTAMP2 if m0 > 0 => format!("timestamp({m0})"),
        MYSQL_TYPE_TIMESTAMP2 => "timestamp".into(),
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => "time".into(),
        MYSQL_TYPE_ENUM => format!("enum({})", quoted(labels.unwrap_or(&[]))),
        MYSQL_TYPE_SET => format!("set({})", quoted(labels.unwrap_or(&[]))),
        MYSQL_TYPE_JSON => "json".into(),
        MYSQL_TYPE_GEOMETRY => "geometry".into(),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if text => "varchar".into(),
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "varbinary".into(),
        MYSQL_TYPE_STRING if text => "char".into(),
        MYSQL_TYPE_STRING => "binary".into(),
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB
            if text =>
        {
            "text".into()
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            "blob".into()
        }
        MYSQL_TYPE_VECTOR => "vector".into(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

/// Columns the charset metadata counts: character types and (MySQL 9) VECTOR,
/// which the server stores like a blob.
fn is_char(t: ColumnType) -> bool {
    t.is_character_type() || t == ColumnType::MYSQL_TYPE_VECTOR
}

/// Binary collation id (`binary` charset): character types holding bytes.
pub const BINARY_COLLATION: u16 = 63;

/// Optional metadata of one TABLE_MAP, per column.
#[derive(Default)]
struct Optional {
    names: Vec<String>,
    signedness: Vec<bool>,
    /// Per character column (in order of character columns).
    charsets: Vec<u16>,
    enum_set_charsets: Vec<u16>,
    enum_labels: Vec<Vec<String>>,
    set_labels: Vec<Vec<String>>,
    primary_key: Vec<usize>,
}

fn optional(tme: &TableMapEvent<'_>) -> Result<Optional, MapError> {
    let mut out = Optional::default();
    let malformed = |e: std::io::Error| MapError::Malformed(format!("optional metadata: {e}"));
    let ncols = tme.columns_count() as usize;
    let numeric_count = (0..ncols)
        .filter(|&i| matches!(tme.get_column_type(i), Ok(Some(t)) if t.is_numeric_type()))
        .count();
    let char_cols = (0..ncols)
        .filter(|&i| matches!(tme.get_column_type(i), Ok(Some(t)) if is_char(t)))
        .count();
    let enum_set_cols = (0..ncols)
        .filter(|&i| matches!(tme.get_column_type(i), Ok(Some(t)) if t.is_enum_or_set_type()))
        .count();
    for field in tme.iter_optional_meta() {
        match field.map_err(malformed)? {
            OptionalMetadataField::Signedness(bits) => {
                out.signedness = bits.iter().take(numeric_count).map(|b| *b).collect();
            }
            OptionalMetadataField::DefaultCharset(dc) => {
                let mut v = vec![dc.default_charset(); char_cols];
                for nd in dc.iter_non_default() {
                    let nd = nd.map_err(malformed)?;
                    // The index counts character columns only.
                    if let Some(slot) = v.get_mut(nd.column_index() as usize) {
                        *slot = nd.charset();
                    }
                }
                out.charsets = v;
            }
            OptionalMetadataField::ColumnCharset(cc) => {
                out.charsets = cc
                    .iter_charsets()
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
            }
            OptionalMetadataField::EnumAndSetDefaultCharset(dc) => {
                out.enum_set_charsets = vec![dc.default_charset(); enum_set_cols];
            }
            OptionalMetadataField::EnumAndSetColumnCharset(cc) => {
                out.enum_set_charsets = cc
                    .iter_charsets()
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
            }
            OptionalMetadataField::ColumnName(names) => {
                out.names = names
                    .iter_names()
                    .map(|n| n.map(|n| n.name().into_owned()))
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
            }
            OptionalMetadataField::EnumStrValue(v) => {
                out.enum_labels = v
                    .iter_values()
                    .map(|e| e.map(|e| e.values().iter().map(|s| s.value().into_owned()).collect()))
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
            }
            OptionalMetadataField::SetStrValue(v) => {
                out.set_labels = v
                    .iter_values()
                    .map(|e| e.map(|e| e.values().iter().map(|s| s.value().into_owned()).collect()))
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
            }
            OptionalMetadataField::SimplePrimaryKey(pk) => {
                out.primary_key = pk
                    .iter_indexes()
                    .map(|i| i.map(|i| i as usize))
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
            }
            OptionalMetadataField::PrimaryKeyWithPrefix(pk) => {
                out.primary_key = pk
                    .iter_keys()
                    .map(|k| k.map(|k| k.column_index() as usize))
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Expected metadata length per binlog type; guards the row parser, which
/// indexes metadata bytes without checking.
fn meta_len(t: ColumnType) -> usize {
    use ColumnType::*;
    match t {
        MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_DOUBLE
        | MYSQL_TYPE_FLOAT
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_JSON
        | MYSQL_TYPE_VECTOR => 1,
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_BIT => 2,
        _ => 0,
    }
}

/// Resolves a TABLE_MAP against an optional catalog schema and the
/// catalog's column character sets. A catalog schema with more columns than
/// the TABLE_MAP (columns appended after this event) is used for its first
/// columns; any other difference is a [`MapError::Mismatch`].
pub fn resolve(
    tme: &TableMapEvent<'_>,
    catalog: Option<&TableSchema>,
    charsets: Option<&Vec<Option<String>>>,
) -> Result<MappedTable, MapError> {
    let id = TableId::new(tme.database_name(), tme.table_name());
    let ncols = tme.columns_count() as usize;
    // A schema read after columns were appended (ALTER TABLE … ADD COLUMN
    // later in the binlog than this event): the binlog's columns are its
    // first ones. Every other difference is still a mismatch below.
    let prefix;
    let catalog = match catalog {
        Some(s) if s.columns.len() > ncols && s.key.iter().all(|&k| k < ncols) => {
            let mut p = s.clone();
            p.columns.truncate(ncols);
            prefix = p;
            Some(&prefix)
        }
        other => other,
    };
    let mut types = Vec::with_capacity(ncols);
    for i in 0..ncols {
        let t = match tme.get_column_type(i) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(MapError::Malformed(format!("no type for column {}", i + 1))),
            Err(e) => return Err(MapError::Malformed(format!("column {}: {e}", i + 1))),
        };
        if t == ColumnType::MYSQL_TYPE_TYPED_ARRAY {
            return Err(MapError::Malformed(format!(
                "column {} is a typed array (multi-valued index), which row events do not carry",
                i + 1
            )));
        }
        let meta = tme.get_column_metadata(i).unwrap_or(&[]).to_vec();
        let need = meta_len(t);
        if meta.len() < need {
            return Err(MapError::Malformed(format!(
                "column {} has {} metadata bytes, {t:?} needs {need}",
                i + 1,
                meta.len()
            )));
        }
        let bad_meta = match t {
            ColumnType::MYSQL_TYPE_ENUM => !matches!(meta[1], 1 | 2),
            ColumnType::MYSQL_TYPE_SET => !(1..=8).contains(&meta[1]),
            ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                meta[0] == 0 || meta[0] > 65 || meta[1] > 30 || meta[1] > meta[0]
            }
            ColumnType::MYSQL_TYPE_BIT => u32::from(meta[1]) * 8 + u32::from(meta[0]) > 64,
            ColumnType::MYSQL_TYPE_TINY_BLOB
            | ColumnType::MYSQL_TYPE_BLOB
            | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
            | ColumnType::MYSQL_TYPE_LONG_BLOB
            | ColumnType::MYSQL_TYPE_GEOMETRY
            | ColumnType::MYSQL_TYPE_JSON => !(1..=4).contains(&meta[0]),
            ColumnType::MYSQL_TYPE_TIME2
            | ColumnType::MYSQL_TYPE_DATETIME2
            | ColumnType::MYSQL_TYPE_TIMESTAMP2 => meta[0] > 6,
            _ => false,
        };
        if bad_meta {
            return Err(MapError::Malformed(format!(
                "column {} ({t:?}) has invalid metadata {meta:?}",
                i + 1
            )));
        }
        types.push((t, meta));
    }
    let opt = optional(tme)?;

    let mut numeric_i = 0;
    let mut char_i = 0;
    let mut enum_i = 0;
    let mut set_i = 0;
    let mut columns = Vec::with_capacity(ncols);
    for (i, (t, meta)) in types.into_iter().enumerate() {
        let signed_meta = if t.is_numeric_type() {
            numeric_i += 1;
            opt.signedness.get(numeric_i - 1).copied()
        } else {
            None
        };
        let collation = if is_char(t) {
            char_i += 1;
            opt.charsets.get(char_i - 1).copied()
        } else {
            None
        };
        let meta_labels = match t {
            ColumnType::MYSQL_TYPE_ENUM => {
                enum_i += 1;
                opt.enum_labels.get(enum_i - 1).cloned()
            }
            ColumnType::MYSQL_TYPE_SET => {
                set_i += 1;
                opt.set_labels.get(set_i - 1).cloned()
            }
            _ => None,
        };
        let spec = match catalog {
            Some(schema) => {
                let Some(c) = schema.columns.get(i) else {
                    return Err(MapError::Mismatch(format!(
                        "the binlog has {ncols} columns, the schema {}",
                        schema.columns.len()
                    )));
                };
                if let Some(n) = opt.names.get(i)
                    && n != &c.name
                {
                    return Err(MapError::Mismatch(format!(
                        "column {} is `{n}` in the binlog but `{}` in the schema",
                        i + 1,
                        c.name
                    )));
                }
                let base = base_name(&c.source_type);
                // MariaDB JSON is longtext; the catalog maps it to jsonb.
                if !compatible(&base, t) {
                    return Err(MapError::Mismatch(format!(
                        "column `{}` is {} in the schema but {t:?} in the binlog",
                        c.name, c.source_type
                    )));
                }
                ColumnSpec {
                    name: c.name.clone(),
                    binlog_type: t,
                    meta,
                    pg_type: c.pg_type.clone(),
                    unsigned: is_unsigned(&c.source_type),
                    binlog_unsigned: signed_meta.unwrap_or(false),
                    labels: labels_from_column_type(&c.source_type).or(meta_labels),
                    collation,
                    charset: charsets.and_then(|cs| cs.get(i).cloned().flatten()),
                    target: None,
                }
            }
            None => {
                let Some(name) = opt.names.get(i) else {
                    return Err(MapError::NoNames);
                };
                let unsigned = signed_meta.unwrap_or(false);
                let source_type =
                    synthetic_type(t, &meta, unsigned, meta_labels.as_deref(), collation);
                let mut pg_type = typemap::map_column_type(&source_type).pg_type;
                if t == ColumnType::MYSQL_TYPE_TINY {
                    // Without the catalog `tinyint(1)` is not recognisable.
                    pg_type = "smallint".into();
                }
                ColumnSpec {
                    name: name.clone(),
                    binlog_type: t,
                    meta,
                    pg_type,
                    unsigned,
                    binlog_unsigned: unsigned,
                    labels: meta_labels,
                    collation,
                    charset: charsets.and_then(|cs| cs.get(i).cloned().flatten()),
                    target: None,
                }
            }
        };
        columns.push(spec);
    }
    let schema = match catalog {
        Some(s) => {
            if s.columns.len() != ncols {
                return Err(MapError::Mismatch(format!(
                    "the binlog has {ncols} columns, the schema {}",
                    s.columns.len()
                )));
            }
            Arc::new(s.clone())
        }
        None => Arc::new(TableSchema {
            id,
            columns: columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    source_type: synthetic_type(
                        c.binlog_type,
                        &c.meta,
                        c.unsigned,
                        c.labels.as_deref(),
                        c.collation,
                    ),
                    pg_type: c.pg_type.clone(),
                    type_oid: None,
                    nullable: true,
                })
                .collect(),
            key: opt
                .primary_key
                .iter()
                .copied()
                .filter(|&k| k < ncols)
                .collect(),
            replica_identity: ReplicaIdentity::Full,
        }),
    };
    let key = schema.key.clone();
    Ok(MappedTable {
        schema,
        columns,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_labels_parse_with_quotes() {
        assert_eq!(
            labels_from_column_type("enum('a','b''c','d,e')").unwrap(),
            ["a", "b'c", "d,e"]
        );
        assert_eq!(
            labels_from_column_type("set('x', 'y')").unwrap(),
            ["x", "y"]
        );
        assert_eq!(labels_from_column_type("int(11)"), None);
        assert_eq!(labels_from_column_type("enum('a"), None);
    }

    #[test]
    fn unsigned_flags() {
        assert!(is_unsigned("int(10) unsigned"));
        assert!(is_unsigned("bigint unsigned zerofill"));
        assert!(!is_unsigned("enum('unsigned')"));
        assert!(!is_unsigned("int(11)"));
    }
}
