//! MySQL / MariaDB column types → PostgreSQL types.
//!
//! Consumes `information_schema.COLUMNS.COLUMN_TYPE` (e.g. `int(10) unsigned`,
//! `decimal(10,2)`, `enum('a','b')`) and emits the PostgreSQL type the target
//! column gets. Pure and table-driven: the same text always maps to the same
//! type, and every choice is listed here.
//!
//! | MySQL / MariaDB                          | PostgreSQL          | why |
//! |------------------------------------------|---------------------|-----|
//! | `tinyint(1)` (signed; `BOOL`)            | `boolean`           | MySQL's boolean; values other than 0/1 are reported by the loader, never coerced; `mysql.tinyint1 = "smallint"` keeps them all ([`tinyint1_as_smallint`]) |
//! | `tinyint`, `smallint`, `tinyint unsigned`| `smallint`          | fits |
//! | `smallint unsigned`, `mediumint [unsigned]`, `int` | `integer` | fits |
//! | `int unsigned`, `bigint`                 | `bigint`            | fits |
//! | `bigint unsigned`                        | `numeric(20)`       | 2^64−1 has 20 digits; no PG unsigned type |
//! | `decimal(p,s)`                           | `numeric(p,s)`      | exact |
//! | `float`                                  | `real`              | 4-byte IEEE |
//! | `double`, `real`                         | `double precision`  | 8-byte IEEE |
//! | `bit(1)`                                 | `boolean`           | the usual flag column |
//! | `bit(n)`                                 | `bit(n)`            | fixed width like MySQL; values are left-padded to n bits |
//! | `char(n)`, `varchar(n)`                  | `varchar(n)`        | PG counts characters like utf8mb4 does; MySQL strips CHAR padding so `char(n)` would add it back |
//! | `char(0)`, `varchar(0)`                  | `text`              | PG has no zero-length varchar |
//! | `tinytext` … `longtext`                  | `text`              | |
//! | `binary`, `varbinary`, `*blob`           | `bytea`             | |
//! | `date`                                   | `date`              | zero dates (`0000-00-00`) become NULL by policy |
//! | `datetime(p)`                            | `timestamp(p)`      | wall-clock time, no zone; zero dates → NULL |
//! | `timestamp(p)`                           | `timestamptz(p)`    | MySQL stores UTC; zero timestamps → NULL |
//! | `time(p)`                                | `interval`          | MySQL TIME spans −838:59:59 … 838:59:59, beyond PG `time` |
//! | `year`                                   | `smallint`          | |
//! | `json` (MySQL; MariaDB `longtext` + `json_valid` check) | `jsonb` | |
//! | `enum(...)`                              | `text` with `CHECK (c IN ('', labels…))` | `mysql.enum = "type"`: a PostgreSQL enum type per column, `<table>_<column>` ([`enum_type_name`]); `''` is MySQL's value for an invalid label, which an enum type cannot hold (the run stops on it) |
//! | `set(...)`                               | `text[]`            | one element per member |
//! | `geometry`, `point`, … (spatial)         | `bytea`             | WKB as MySQL stores it (without the SRID prefix) |
//! | MariaDB `uuid`                           | `uuid`              | |
//! | MariaDB `inet4`, `inet6`                 | `inet`              | |
//! | anything else                            | `text`              | marked unknown: `ferry plan` warns |
//!
//! Zero dates: MySQL accepts `0000-00-00` and dates with zero month/day when
//! `sql_mode` allows; PostgreSQL has no such value. ferry writes NULL for them
//! (policy `mysql.zero_dates = "null"`, counted per column and logged by
//! the loader and the change stream) or stop with an error naming table,
//! key and column (`mysql.zero_dates = "error"`). `ZEROFILL` implies
//! `UNSIGNED` and only affects display.

/// The PostgreSQL type chosen for one MySQL column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgMapping {
    pub pg_type: String,
    /// `false` when the MySQL type is not in the table above (carried as text).
    pub known: bool,
}

impl PgMapping {
    fn known(pg_type: impl Into<String>) -> Self {
        PgMapping {
            pg_type: pg_type.into(),
            known: true,
        }
    }
}

/// A parsed `COLUMN_TYPE`: base name, numeric arguments, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnType {
    base: String,
    args: Vec<u32>,
    unsigned: bool,
}

fn parse(column_type: &str) -> ColumnType {
    let lower = column_type.trim().to_ascii_lowercase();
    let base_end = lower
        .find(|c: char| c == '(' || c.is_whitespace())
        .unwrap_or(lower.len());
    let base = lower[..base_end].to_owned();
    let rest = &lower[base_end..];
    let (args, flags) = match rest.trim_start().strip_prefix('(') {
        Some(inner) => match inner.rfind(')') {
            Some(close) => (&inner[..close], &inner[close + 1..]),
            None => (inner, ""),
        },
        None => ("", rest),
    };
    // enum/set members are quoted strings: not numbers, and not needed.
    let args = if base == "enum" || base == "set" {
        Vec::new()
    } else {
        args.split(',')
            .filter_map(|a| a.trim().parse::<u32>().ok())
            .collect()
    };
    let unsigned = flags
        .split_whitespace()
        .any(|f| f == "unsigned" || f == "zerofill");
    ColumnType {
        base,
        args,
        unsigned,
    }
}

/// The `[mysql]` type policies on a table read from the catalog (the load,
/// the change stream and tables or columns added mid-stream alike).
pub fn apply_policies(
    config: &ferry_core::config::MySqlSourceConfig,
    table: &mut ferry_core::TableSchema,
) {
    if config.tinyint1 == ferry_core::config::Tinyint1::Smallint {
        tinyint1_as_smallint(table);
    }
    if config.enums == ferry_core::config::EnumPolicy::Type {
        let id = table.id.clone();
        for c in &mut table.columns {
            if parse(&c.source_type).base == "enum" {
                c.pg_type = format!(
                    "{}.{}",
                    ferry_core::schema::quote_ident(&id.schema),
                    enum_type_name(&id.name, &c.name)
                );
            }
        }
    }
}

/// The PostgreSQL enum type of an `enum(...)` column under `mysql.enum =
/// "type"`: `<table>_<column>` lower-cased, other characters than
/// letters, digits and `_` replaced by `_`, at most 63 bytes, so that it
/// never needs quoting.
pub fn enum_type_name(table: &str, column: &str) -> String {
    let mut name: String = format!("{table}_{column}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name.truncate(63);
    name
}

/// Whether `pg_type` is a per-column enum type ([`enum_type_name`]).
pub fn is_enum_type(column_type: &str, pg_type: &str) -> bool {
    parse(column_type).base == "enum" && pg_type != "text"
}

/// `mysql.tinyint1 = "smallint"`: the `tinyint(1)` columns of `table`
/// (mapped to `boolean` by default) become `smallint`, keeping every value.
pub fn tinyint1_as_smallint(table: &mut ferry_core::TableSchema) {
    for c in &mut table.columns {
        let t = parse(&c.source_type);
        if t.base == "tinyint" && !t.unsigned && t.args.first() == Some(&1) {
            c.pg_type = "smallint".into();
        }
    }
}

/// The PostgreSQL type for a MySQL `COLUMN_TYPE` (see the module table).
pub fn map_column_type(column_type: &str) -> PgMapping {
    let t = parse(column_type);
    let arg = |i: usize| t.args.get(i).copied();
    let with_precision = |name: &str| match arg(0) {
        Some(p) if p <= 6 => format!("{name}({p})"),
        _ => name.to_owned(),
    };
    let pg = match (t.base.as_str(), t.unsigned) {
        ("tinyint", false) if arg(0) == Some(1) => "boolean".to_owned(),
        ("tinyint", _) | ("smallint", false) => "smallint".to_owned(),
        ("smallint", true) | ("mediumint", _) | ("int" | "integer", false) => "integer".to_owned(),
        ("int" | "integer", true) | ("bigint", false) => "bigint".to_owned(),
        ("bigint", true) => "numeric(20)".to_owned(),
        ("decimal" | "numeric" | "dec" | "fixed", _) => match (arg(0), arg(1)) {
            (Some(p), Some(s)) => format!("numeric({p},{s})"),
            (Some(p), None) => format!("numeric({p})"),
            _ => "numeric(10,0)".to_owned(),
        },
        ("float", _) => "real".to_owned(),
        ("double" | "real", _) => "double precision".to_owned(),
        ("bit", _) => match arg(0).unwrap_or(1) {
            1 => "boolean".to_owned(),
            n => format!("bit({n})"),
        },
        ("char" | "varchar", _) => match arg(0) {
            Some(n) if n > 0 => format!("varchar({n})"),
            _ => "text".to_owned(),
        },
        ("tinytext" | "text" | "mediumtext" | "longtext", _) => "text".to_owned(),
        ("binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob", _) => {
            "bytea".to_owned()
        }
        ("date", _) => "date".to_owned(),
        ("datetime", _) => with_precision("timestamp"),
        ("timestamp", _) => with_precision("timestamptz"),
        ("time", _) => "interval".to_owned(),
        ("year", _) => "smallint".to_owned(),
        ("json", _) => "jsonb".to_owned(),
        ("enum", _) => "text".to_owned(),
        ("set", _) => "text[]".to_owned(),
        (
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" | "geomcollection",
            _,
        ) => "bytea".to_owned(),
        ("uuid", _) => "uuid".to_owned(),
        ("inet4" | "inet6", _) => "inet".to_owned(),
        _ => {
            return PgMapping {
                pg_type: "text".to_owned(),
                known: false,
            };
        }
    };
    PgMapping::known(pg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_type_names_never_need_quoting() {
        assert_eq!(enum_type_name("Orders", "Size"), "orders_size");
        assert_eq!(enum_type_name("a-b", "ç"), "a_b__");
        assert_eq!(enum_type_name("1t", "c"), "_1t_c");
        assert_eq!(enum_type_name(&"x".repeat(40), &"y".repeat(40)).len(), 63);
    }

    #[test]
    fn mapping_table() {
        let cases: &[(&str, &str)] = &[
            ("tinyint(1)", "boolean"),
            ("tinyint(1) unsigned", "smallint"),
            ("tinyint(4)", "smallint"),
            ("tinyint", "smallint"),
            ("tinyint(3) unsigned", "smallint"),
            ("smallint(6)", "smallint"),
            ("smallint(5) unsigned", "integer"),
            ("mediumint(9)", "integer"),
            ("mediumint(8) unsigned", "integer"),
            ("int(11)", "integer"),
            ("int", "integer"),
            ("int(10) unsigned", "bigint"),
            ("int(10) unsigned zerofill", "bigint"),
            ("int zerofill", "bigint"),
            ("bigint(20)", "bigint"),
            ("bigint(20) unsigned", "numeric(20)"),
            ("bigint unsigned", "numeric(20)"),
            ("decimal(10,2)", "numeric(10,2)"),
            ("decimal(65,30) unsigned", "numeric(65,30)"),
            ("decimal(5)", "numeric(5)"),
            ("decimal", "numeric(10,0)"),
            ("float", "real"),
            ("float(7,4)", "real"),
            ("float unsigned", "real"),
            ("double", "double precision"),
            ("double(10,2)", "double precision"),
            ("bit(1)", "boolean"),
            ("bit(8)", "bit(8)"),
            ("bit(64)", "bit(64)"),
            ("char(3)", "varchar(3)"),
            ("char(0)", "text"),
            ("varchar(255)", "varchar(255)"),
            ("VARCHAR(40)", "varchar(40)"),
            ("tinytext", "text"),
            ("text", "text"),
            ("mediumtext", "text"),
            ("longtext", "text"),
            ("binary(16)", "bytea"),
            ("varbinary(255)", "bytea"),
            ("tinyblob", "bytea"),
            ("blob", "bytea"),
            ("mediumblob", "bytea"),
            ("longblob", "bytea"),
            ("date", "date"),
            ("datetime", "timestamp"),
            ("datetime(3)", "timestamp(3)"),
            ("datetime(6)", "timestamp(6)"),
            ("timestamp", "timestamptz"),
            ("timestamp(6)", "timestamptz(6)"),
            ("time", "interval"),
            ("time(3)", "interval"),
            ("year(4)", "smallint"),
            ("year", "smallint"),
            ("json", "jsonb"),
            ("enum('G','PG','PG-13','R','NC-17')", "text"),
            ("enum('a,b','c(d)')", "text"),
            (
                "set('Trailers','Commentaries','Deleted Scenes','Behind the Scenes')",
                "text[]",
            ),
            ("geometry", "bytea"),
            ("point", "bytea"),
            ("multipolygon", "bytea"),
            ("geomcollection", "bytea"),
            ("uuid", "uuid"),
            ("inet6", "inet"),
            ("inet4", "inet"),
        ];
        for (mysql, pg) in cases {
            let m = map_column_type(mysql);
            assert_eq!(m.pg_type, *pg, "COLUMN_TYPE {mysql}");
            assert!(m.known, "COLUMN_TYPE {mysql} should be known");
        }
    }

    #[test]
    fn unknown_types_become_text_and_are_marked() {
        for t in ["vector(3)", "", "weird stuff", "("] {
            let m = map_column_type(t);
            assert_eq!(m.pg_type, "text", "{t}");
            assert!(!m.known, "{t}");
        }
    }
}
