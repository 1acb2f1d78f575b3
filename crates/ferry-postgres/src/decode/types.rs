//! Column types: the exact SQL type name (as `format_type(oid, typmod)`
//! prints it) and how a column's text values are parsed.
//!
//! Built-in types come from a static table; anything else (enums, domains,
//! extension types, arrays of those) is asked of a [`TypeResolver`] once per
//! oid / typmod and cached in [`TypeCache`]. The decoder never blocks on the
//! resolver: it reports [`DecodeError::UnknownType`](super::DecodeError) and
//! the stream resolves and retries the message.

use std::collections::HashMap;

use futures_util::future::BoxFuture;

/// How a column's text is turned into a `Value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Bytes,
    Json,
    Jsonb,
    Uuid,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Enum,
    /// Array of `element` (named `element_type` in `Array::element_type`).
    Array {
        element: Box<ValueKind>,
        element_type: String,
        delimiter: u8,
    },
    /// Kept as exact text with this type name.
    Other(String),
}

/// What the catalog says about a non-built-in type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomType {
    /// `format_type(oid, NULL)`, e.g. `mood`, `public.email`, `mood[]`.
    pub name: String,
    pub kind: CustomKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomKind {
    Enum,
    /// A domain: values parse as the base type.
    Domain {
        base_oid: u32,
        base_typmod: i32,
    },
    /// An array of `element_oid` with the element type's delimiter.
    Array {
        element_oid: u32,
        delimiter: u8,
    },
    /// Composite, range, extension or pseudo types: kept as text.
    Other,
}

/// Looks up types the built-in table does not know (over a catalog
/// connection: `format_type`, `pg_type.typtype`, `typbasetype`, `typelem`).
pub trait TypeResolver: Send + Sync {
    /// The type with this oid.
    fn resolve(&self, oid: u32) -> BoxFuture<'_, Result<CustomType, ferry_core::Error>>;
    /// `format_type(oid, typmod)` for a non-built-in type with a typmod.
    fn format(&self, oid: u32, typmod: i32) -> BoxFuture<'_, Result<String, ferry_core::Error>>;
}

/// Resolved non-built-in types.
#[derive(Debug, Default, Clone)]
pub struct TypeCache {
    custom: HashMap<u32, CustomType>,
    formatted: HashMap<(u32, i32), String>,
}

/// What a lookup still needs from the resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Type(u32),
    Format(u32, i32),
}

impl TypeCache {
    pub fn insert(&mut self, oid: u32, t: CustomType) {
        self.custom.insert(oid, t);
    }

    pub fn insert_format(&mut self, oid: u32, typmod: i32, name: String) {
        self.formatted.insert((oid, typmod), name);
    }

    /// Fill whatever `missing` names from the resolver.
    pub async fn fill(
        &mut self,
        resolver: &dyn TypeResolver,
        missing: Missing,
    ) -> Result<(), ferry_core::Error> {
        match missing {
            Missing::Type(oid) => {
                let t = resolver.resolve(oid).await?;
                self.insert(oid, t);
            }
            Missing::Format(oid, typmod) => {
                let name = resolver.format(oid, typmod).await?;
                self.insert_format(oid, typmod, name);
            }
        }
        Ok(())
    }

    /// `format_type(oid, typmod)`.
    pub fn sql_name(&self, oid: u32, typmod: i32) -> Result<String, Missing> {
        if let Some(b) = builtin(oid) {
            return Ok(builtin_sql_name(b, typmod));
        }
        if let Some(elem) = builtin_array_element(oid) {
            return Ok(format!("{}[]", builtin_sql_name(elem, typmod)));
        }
        let t = self.custom.get(&oid).ok_or(Missing::Type(oid))?;
        if typmod < 0 {
            return Ok(t.name.clone());
        }
        self.formatted
            .get(&(oid, typmod))
            .cloned()
            .ok_or(Missing::Format(oid, typmod))
    }

    /// How values of this type parse; `depth` guards against cycles.
    pub fn value_kind(&self, oid: u32) -> Result<ValueKind, Missing> {
        self.kind_at(oid, 0)
    }

    fn kind_at(&self, oid: u32, depth: u8) -> Result<ValueKind, Missing> {
        if let Some(b) = builtin(oid) {
            return Ok(b
                .kind
                .clone()
                .unwrap_or_else(|| ValueKind::Other(builtin_sql_name(b, -1))));
        }
        if let Some(elem) = builtin_array_element(oid) {
            let delimiter = if elem.oid == BOX_OID { b';' } else { b',' };
            return Ok(array_of(
                self.kind_at(elem.oid, depth + 1)?,
                elem.typname,
                delimiter,
            ));
        }
        let t = self.custom.get(&oid).ok_or(Missing::Type(oid))?;
        if depth > 8 {
            return Ok(ValueKind::Other(t.name.clone()));
        }
        Ok(match &t.kind {
            CustomKind::Enum => ValueKind::Enum,
            CustomKind::Domain { base_oid, .. } => self.kind_at(*base_oid, depth + 1)?,
            CustomKind::Array {
                element_oid,
                delimiter,
            } => {
                let element = self.kind_at(*element_oid, depth + 1)?;
                let name = self.element_name(*element_oid)?;
                array_of(element, &name, *delimiter)
            }
            CustomKind::Other => ValueKind::Other(t.name.clone()),
        })
    }

    fn element_name(&self, oid: u32) -> Result<String, Missing> {
        match builtin(oid) {
            Some(b) => Ok(b.typname.to_owned()),
            None => self.sql_name(oid, -1),
        }
    }
}

fn array_of(element: ValueKind, element_type: &str, delimiter: u8) -> ValueKind {
    ValueKind::Array {
        element: Box::new(element),
        element_type: element_type.to_owned(),
        delimiter,
    }
}

/// One built-in type.
#[derive(Debug)]
struct Builtin {
    oid: u32,
    array_oid: u32,
    typname: &'static str,
    /// `format_type` without a typmod.
    sql: &'static str,
    kind: Option<ValueKind>,
}

const BOX_OID: u32 = 603;

macro_rules! builtins {
    ($(($oid:expr, $arr:expr, $typname:expr, $sql:expr, $kind:expr)),* $(,)?) => {
        const BUILTINS: &[Builtin] = &[$(Builtin { oid: $oid, array_oid: $arr, typname: $typname, sql: $sql, kind: $kind }),*];
    };
}

use ValueKind as K;

builtins![
    (16, 1000, "bool", "boolean", Some(K::Bool)),
    (17, 1001, "bytea", "bytea", Some(K::Bytes)),
    (18, 1002, "char", "\"char\"", Some(K::Text)),
    (19, 1003, "name", "name", Some(K::Text)),
    (20, 1016, "int8", "bigint", Some(K::Int8)),
    (21, 1005, "int2", "smallint", Some(K::Int2)),
    (22, 1006, "int2vector", "int2vector", None),
    (23, 1007, "int4", "integer", Some(K::Int4)),
    (24, 1008, "regproc", "regproc", None),
    (25, 1009, "text", "text", Some(K::Text)),
    (26, 1028, "oid", "oid", None),
    (27, 1010, "tid", "tid", None),
    (28, 1011, "xid", "xid", None),
    (29, 1012, "cid", "cid", None),
    (30, 1013, "oidvector", "oidvector", None),
    (114, 199, "json", "json", Some(K::Json)),
    (142, 143, "xml", "xml", None),
    (600, 1017, "point", "point", None),
    (601, 1018, "lseg", "lseg", None),
    (602, 1019, "path", "path", None),
    (603, 1020, "box", "box", None),
    (604, 1027, "polygon", "polygon", None),
    (628, 629, "line", "line", None),
    (650, 651, "cidr", "cidr", None),
    (700, 1021, "float4", "real", Some(K::Float4)),
    (701, 1022, "float8", "double precision", Some(K::Float8)),
    (718, 719, "circle", "circle", None),
    (774, 775, "macaddr8", "macaddr8", None),
    (790, 791, "money", "money", None),
    (829, 1040, "macaddr", "macaddr", None),
    (869, 1041, "inet", "inet", None),
    (1042, 1014, "bpchar", "bpchar", Some(K::Text)),
    (1043, 1015, "varchar", "character varying", Some(K::Text)),
    (1082, 1182, "date", "date", Some(K::Date)),
    (1083, 1183, "time", "time without time zone", Some(K::Time)),
    (
        1114,
        1115,
        "timestamp",
        "timestamp without time zone",
        Some(K::Timestamp)
    ),
    (
        1184,
        1185,
        "timestamptz",
        "timestamp with time zone",
        Some(K::TimestampTz)
    ),
    (1186, 1187, "interval", "interval", Some(K::Interval)),
    (1266, 1270, "timetz", "time with time zone", Some(K::TimeTz)),
    (1560, 1561, "bit", "bit", None),
    (1562, 1563, "varbit", "bit varying", None),
    (1700, 1231, "numeric", "numeric", Some(K::Numeric)),
    (1790, 2201, "refcursor", "refcursor", None),
    (2202, 2207, "regprocedure", "regprocedure", None),
    (2203, 2208, "regoper", "regoper", None),
    (2204, 2209, "regoperator", "regoperator", None),
    (2205, 2210, "regclass", "regclass", None),
    (2206, 2211, "regtype", "regtype", None),
    (2950, 2951, "uuid", "uuid", Some(K::Uuid)),
    (2970, 2949, "txid_snapshot", "txid_snapshot", None),
    (3220, 3221, "pg_lsn", "pg_lsn", None),
    (3614, 3643, "tsvector", "tsvector", None),
    (3615, 3645, "tsquery", "tsquery", None),
    (3734, 3735, "regconfig", "regconfig", None),
    (3769, 3770, "regdictionary", "regdictionary", None),
    (3802, 3807, "jsonb", "jsonb", Some(K::Jsonb)),
    (3904, 3905, "int4range", "int4range", None),
    (3906, 3907, "numrange", "numrange", None),
    (3908, 3909, "tsrange", "tsrange", None),
    (3910, 3911, "tstzrange", "tstzrange", None),
    (3912, 3913, "daterange", "daterange", None),
    (3926, 3927, "int8range", "int8range", None),
    (4072, 4073, "jsonpath", "jsonpath", None),
    (4451, 6150, "int4multirange", "int4multirange", None),
    (4532, 6151, "nummultirange", "nummultirange", None),
    (4533, 6152, "tsmultirange", "tsmultirange", None),
    (4534, 6153, "tstzmultirange", "tstzmultirange", None),
    (4535, 6155, "datemultirange", "datemultirange", None),
    (4536, 6157, "int8multirange", "int8multirange", None),
    (5038, 5039, "pg_snapshot", "pg_snapshot", None),
    (5069, 271, "xid8", "xid8", None),
];

fn builtin(oid: u32) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.oid == oid)
}

fn builtin_array_element(array_oid: u32) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.array_oid == array_oid)
}

/// `format_type(oid, typmod)` for a built-in type (typmod rules of
/// `varchar`, `bpchar`, `numeric`, `bit`, time types and `interval`).
fn builtin_sql_name(b: &Builtin, typmod: i32) -> String {
    if typmod < 0 {
        return b.sql.to_owned();
    }
    match b.oid {
        1042 => format!("character({})", typmod - 4),
        1043 => format!("character varying({})", typmod - 4),
        1560 => format!("bit({typmod})"),
        1562 => format!("bit varying({typmod})"),
        1700 => {
            let t = typmod - 4;
            let precision = (t >> 16) & 0xFFFF;
            let scale = ((t & 0x7FF) ^ 1024) - 1024;
            format!("numeric({precision},{scale})")
        }
        1083 => format!("time({typmod}) without time zone"),
        1266 => format!("time({typmod}) with time zone"),
        1114 => format!("timestamp({typmod}) without time zone"),
        1184 => format!("timestamp({typmod}) with time zone"),
        1186 => format!("interval{}", interval_typmod(typmod)),
        _ => b.sql.to_owned(),
    }
}

/// `intervaltypmodout`: field restriction then precision.
fn interval_typmod(typmod: i32) -> String {
    const YEAR: i32 = 1 << 2;
    const MONTH: i32 = 1 << 1;
    const DAY: i32 = 1 << 3;
    const HOUR: i32 = 1 << 10;
    const MINUTE: i32 = 1 << 11;
    const SECOND: i32 = 1 << 12;
    let fields = (typmod >> 16) & 0x7FFF;
    let precision = typmod & 0xFFFF;
    let f = match fields {
        YEAR => " year",
        MONTH => " month",
        DAY => " day",
        HOUR => " hour",
        MINUTE => " minute",
        SECOND => " second",
        x if x == YEAR | MONTH => " year to month",
        x if x == DAY | HOUR => " day to hour",
        x if x == DAY | HOUR | MINUTE => " day to minute",
        x if x == DAY | HOUR | MINUTE | SECOND => " day to second",
        x if x == HOUR | MINUTE => " hour to minute",
        x if x == HOUR | MINUTE | SECOND => " hour to second",
        x if x == MINUTE | SECOND => " minute to second",
        _ => "",
    };
    if precision == 0xFFFF {
        f.to_owned()
    } else {
        format!("{f}({precision})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_follow_format_type() {
        let c = TypeCache::default();
        let cases = [
            (23, -1, "integer"),
            (1043, 44, "character varying(40)"),
            (1042, 14, "character(10)"),
            (1700, (10 << 16 | 2) + 4, "numeric(10,2)"),
            (1700, -1, "numeric"),
            (1114, 3, "timestamp(3) without time zone"),
            (1184, -1, "timestamp with time zone"),
            (1015, 36, "character varying(32)[]"),
            (1007, -1, "integer[]"),
            (
                1186,
                (((1 << 2) | (1 << 1)) << 16) | 0xFFFF,
                "interval year to month",
            ),
            (1186, (0x7FFF << 16) | 3, "interval(3)"),
            (1560, 8, "bit(8)"),
            (18, -1, "\"char\""),
            (701, -1, "double precision"),
        ];
        for (oid, typmod, want) in cases {
            assert_eq!(c.sql_name(oid, typmod).unwrap(), want, "{oid} {typmod}");
        }
    }

    #[test]
    fn custom_types_need_the_resolver() {
        let mut c = TypeCache::default();
        assert_eq!(c.value_kind(90000), Err(Missing::Type(90000)));
        c.insert(
            90000,
            CustomType {
                name: "mood".into(),
                kind: CustomKind::Enum,
            },
        );
        c.insert(
            90001,
            CustomType {
                name: "mood[]".into(),
                kind: CustomKind::Array {
                    element_oid: 90000,
                    delimiter: b',',
                },
            },
        );
        c.insert(
            90002,
            CustomType {
                name: "email".into(),
                kind: CustomKind::Domain {
                    base_oid: 25,
                    base_typmod: -1,
                },
            },
        );
        assert_eq!(c.value_kind(90000).unwrap(), ValueKind::Enum);
        assert_eq!(c.value_kind(90002).unwrap(), ValueKind::Text);
        assert_eq!(
            c.value_kind(90001).unwrap(),
            array_of(ValueKind::Enum, "mood", b',')
        );
        assert_eq!(c.sql_name(90001, -1).unwrap(), "mood[]");
        assert_eq!(c.sql_name(90000, 7), Err(Missing::Format(90000, 7)));
        assert_eq!(c.value_kind(600).unwrap(), ValueKind::Other("point".into()));
    }
}
