//! One binlog column value → a ferry [`Value`] for the column's PostgreSQL type.
//!
//! The conversion follows the target type chosen by [`crate::typemap`]
//! (carried in [`ColumnSpec::pg_type`]), so the change stream and the
//! snapshot agree. Rules a value must obey and how the binlog form maps:
//!
//! | binlog value | target | rule |
//! |---|---|---|
//! | TINY/SHORT/INT24/LONG/LONGLONG | `boolean` | 0 → false, 1 → true, anything else is an error (never coerced) |
//! | same | `smallint`/`integer`/`bigint`/`numeric(20)` | unsigned columns reinterpreted from the binlog's two's complement by width |
//! | FLOAT / DOUBLE | `real` / `double precision` | bit-exact |
//! | NEWDECIMAL | `numeric(p,s)` | exact text, scale kept |
//! | BIT(n) | `boolean` (n = 1) / `bit(n)` | bits left-padded to n |
//! | YEAR | `smallint` | `0000` → 0 |
//! | DATE, DATETIME(fsp) | `date`, `timestamp(p)` | zero or partial dates (`0000-00-00`, `2024-00-10`) → [`ConvError::ZeroDate`] (policy decided by the caller) |
//! | TIMESTAMP(fsp) | `timestamptz(p)` | seconds since the epoch, UTC; `0` (the zero timestamp) → `ZeroDate` |
//! | TIME(fsp) | `interval` | −838:59:59 … 838:59:59 as hours/minutes/seconds (no days part) |
//! | JSON (binary) | `jsonb` | JSON text (see [`super::json`]) |
//! | ENUM | `text` | label by index; index 0 (MySQL's invalid-value marker) → `''` |
//! | SET | `text[]` | member labels in definition order |
//! | CHAR/VARCHAR/TEXT | `text`, `varchar(n)` | bytes decoded by the column's charset → UTF-8; invalid bytes or NUL → error |
//! | BINARY(n)/VARBINARY/BLOB | `bytea` | bytes; `binary(n)` right-padded with `\0` to n as MySQL returns it |
//! | GEOMETRY | `bytea` | WKB without MySQL's 4-byte SRID prefix |
//! | MariaDB `inet4`/`inet6`, `uuid` | `inet`, `uuid` | from their binary form |
//! | MariaDB JSON (`longtext`) | `jsonb` | the text as stored |

use ferry_core::Value;
use ferry_core::value::{Array, Date, Interval, Numeric, Time, Timestamp};
use mysql_async::Value as My;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;

use super::columns::{BINARY_COLLATION, ColumnSpec};
use super::json;

/// Why one value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvError {
    /// A zero or partial date / timestamp (the caller applies the policy).
    ZeroDate,
    /// The value cannot be represented; the text says why (never the value).
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConvError {
    ConvError::Invalid(msg.into())
}

/// The base of a PostgreSQL type name (`numeric(20)` → `numeric`).
pub(crate) fn pg_base(pg_type: &str) -> &str {
    pg_type.split('(').next().unwrap_or(pg_type).trim()
}

/// Converts one non-partial binlog value.
pub fn convert(spec: &ColumnSpec, value: BinlogValue<'_>) -> Result<Value, ConvError> {
    use ColumnType::*;
    let v = match value {
        BinlogValue::Value(My::NULL) => return Ok(Value::Null),
        BinlogValue::Value(v) => v,
        BinlogValue::Jsonb(j) => {
            let dom = json::dom(j).map_err(ConvError::Invalid)?;
            return Ok(Value::Jsonb(json::text(&dom)));
        }
        BinlogValue::JsonDiff(_) => {
            return Err(invalid(
                "a partial JSON update outside a partial update row event",
            ));
        }
    };
    match spec.binlog_type {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG
        | MYSQL_TYPE_LONGLONG => {
            let bits = match spec.binlog_type {
                MYSQL_TYPE_TINY => 8,
                MYSQL_TYPE_SHORT => 16,
                MYSQL_TYPE_INT24 => 24,
                MYSQL_TYPE_LONG => 32,
                _ => 64,
            };
            let mut raw: i128 = match v {
                My::Int(i) => i128::from(i),
                My::UInt(u) => i128::from(u),
                _ => return Err(invalid("integer column carries a non-integer value")),
            };
            if spec.unsigned && raw < 0 {
                raw += 1i128 << bits;
            }
            if spec.binlog_type == MYSQL_TYPE_INT24 {
                // The parser does not sign-extend 3-byte integers: do it by the column's sign.
                raw &= 0xFF_FFFF;
                if !spec.unsigned && raw >= 0x80_0000 {
                    raw -= 0x100_0000;
                }
            }
            integer(raw, &spec.pg_type)
        }
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => match (v, pg_base(&spec.pg_type)) {
            (My::Float(f), "double precision") => Ok(Value::Float8(f64::from(f))),
            (My::Float(f), _) => Ok(Value::Float4(f)),
            (My::Double(d), "real") => Ok(Value::Float4(d as f32)),
            (My::Double(d), _) => Ok(Value::Float8(d)),
            _ => Err(invalid("float column carries a non-float value")),
        },
        MYSQL_TYPE_NEWDECIMAL | MYSQL_TYPE_DECIMAL => {
            let text = bytes_text(v)?;
            Numeric::parse(&text)
                .map(Value::Numeric)
                .map_err(|_| invalid("malformed decimal"))
        }
        MYSQL_TYPE_YEAR => {
            let y: i32 = bytes_text(v)?
                .parse()
                .map_err(|_| invalid("malformed year"))?;
            // The parser adds 1900; YEAR stores 0 for `0000` (1901..2155 otherwise).
            let y = if y == 1900 { 0 } else { y };
            integer(i128::from(y), &spec.pg_type)
        }
        MYSQL_TYPE_BIT => {
            let My::Bytes(b) = v else {
                return Err(invalid("bit column carries a non-byte value"));
            };
            let n = u32::from(spec.meta.get(1).copied().unwrap_or(0)) * 8
                + u32::from(spec.meta.first().copied().unwrap_or(0));
            let mut bits: u64 = 0;
            for byte in &b {
                bits = (bits << 8) | u64::from(*byte);
            }
            match pg_base(&spec.pg_type) {
                "boolean" => Ok(Value::Bool(bits != 0)),
                "bit" | "varbit" | "bit varying" => Ok(Value::Other {
                    type_name: spec.pg_type.clone(),
                    text: format!("{bits:0width$b}", width = n.max(1) as usize),
                }),
                _ => integer(i128::from(bits), &spec.pg_type),
            }
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => match v {
            My::Date(y, m, d, ..) => date(y, m, d).map(Value::Date),
            _ => Err(invalid("date column carries a non-date value")),
        },
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => match v {
            My::Date(y, m, d, h, mi, s, us) => {
                let day = date(y, m, d)?;
                let micros = ((i64::from(h) * 60 + i64::from(mi)) * 60 + i64::from(s)) * 1_000_000
                    + i64::from(us);
                let ts = Timestamp::from_parts(day, Time(micros))
                    .ok_or_else(|| invalid("datetime out of range"))?;
                Ok(if pg_base(&spec.pg_type) == "timestamptz" {
                    Value::TimestampTz(ts)
                } else {
                    Value::Timestamp(ts)
                })
            }
            _ => Err(invalid("datetime column carries a non-datetime value")),
        },
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => {
            let micros = match v {
                My::Int(secs) => secs.checked_mul(1_000_000),
                My::Bytes(b) => {
                    let t = String::from_utf8_lossy(&b).into_owned();
                    let (secs, frac) = t.split_once('.').unwrap_or((&t, "0"));
                    let secs: i64 = secs.parse().map_err(|_| invalid("malformed timestamp"))?;
                    let frac: i64 = frac.parse().map_err(|_| invalid("malformed timestamp"))?;
                    secs.checked_mul(1_000_000)
                        .and_then(|s| s.checked_add(frac))
                }
                _ => None,
            }
            .ok_or_else(|| invalid("malformed timestamp"))?;
            if micros == 0 {
                return Err(ConvError::ZeroDate);
            }
            let ts = Timestamp::from_unix_micros(micros);
            Ok(if pg_base(&spec.pg_type) == "timestamp" {
                Value::Timestamp(ts)
            } else {
                Value::TimestampTz(ts)
            })
        }
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => match v {
            My::Time(neg, days, h, m, s, us) => {
                let micros = (((i64::from(days) * 24 + i64::from(h)) * 60 + i64::from(m)) * 60
                    + i64::from(s))
                    * 1_000_000
                    + i64::from(us);
                let micros = if neg { -micros } else { micros };
                if pg_base(&spec.pg_type) == "time" {
                    if !(0..86_400_000_000).contains(&micros) {
                        return Err(invalid(
                            "TIME value outside 00:00:00..24:00:00 for a PostgreSQL time column; map the column to interval",
                        ));
                    }
                    return Ok(Value::Time(Time(micros)));
                }
                Ok(Value::Interval(Interval {
                    months: 0,
                    days: 0,
                    micros,
                }))
            }
            _ => Err(invalid("time column carries a non-time value")),
        },
        MYSQL_TYPE_ENUM => {
            let idx = match v {
                My::Int(i) => i,
                My::UInt(u) => i64::try_from(u).unwrap_or(i64::MAX),
                _ => return Err(invalid("enum column carries a non-index value")),
            };
            let labels = spec.labels.as_ref().ok_or_else(|| {
                invalid(
                    "ENUM labels unknown: set binlog_row_metadata=FULL or give the catalog schema",
                )
            })?;
            let label = if idx == 0 {
                String::new()
            } else {
                usize::try_from(idx - 1)
                    .ok()
                    .and_then(|i| labels.get(i))
                    .cloned()
                    .ok_or_else(|| {
                        invalid("ENUM index beyond the column's labels (schema changed?)")
                    })?
            };
            Ok(match pg_base(&spec.pg_type) {
                "text" | "varchar" | "character varying" => Value::Text(label),
                _ => Value::Enum(label),
            })
        }
        MYSQL_TYPE_SET => {
            let My::Bytes(b) = v else {
                return Err(invalid("set column carries a non-byte value"));
            };
            let labels = spec.labels.as_ref().ok_or_else(|| {
                invalid(
                    "SET labels unknown: set binlog_row_metadata=FULL or give the catalog schema",
                )
            })?;
            let mut bits: u64 = 0;
            for (i, byte) in b.iter().enumerate().take(8) {
                bits |= u64::from(*byte) << (8 * i);
            }
            let mut members = Vec::new();
            for (i, label) in labels.iter().enumerate() {
                if bits & (1 << i) != 0 {
                    members.push(Value::Text(label.clone()));
                }
            }
            if labels.len() < 64 && bits >> labels.len() != 0 {
                return Err(invalid(
                    "SET bits beyond the column's labels (schema changed?)",
                ));
            }
            if pg_base(&spec.pg_type) == "text" && !spec.pg_type.ends_with("[]") {
                let joined: Vec<String> =
                    members.into_iter().filter_map(|m| m.to_pg_text()).collect();
                return Ok(Value::Text(joined.join(",")));
            }
            Ok(Value::Array(Box::new(Array::one_dim("text", members))))
        }
        MYSQL_TYPE_JSON => Err(invalid("JSON column carries a non-JSON value")),
        MYSQL_TYPE_GEOMETRY => {
            let My::Bytes(b) = v else {
                return Err(invalid("geometry column carries a non-byte value"));
            };
            if b.len() < 4 {
                return Err(invalid("geometry value shorter than its SRID prefix"));
            }
            Ok(Value::Bytes(b[4..].to_vec()))
        }
        MYSQL_TYPE_VECTOR => {
            let My::Bytes(b) = v else {
                return Err(invalid("vector column carries a non-byte value"));
            };
            if b.len() % 4 != 0 {
                return Err(invalid("vector value is not a whole number of floats"));
            }
            let items: Vec<String> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).to_string())
                .collect();
            Ok(Value::Text(format!("[{}]", items.join(","))))
        }
        _ => {
            let My::Bytes(b) = v else {
                return Err(invalid("string column carries a non-byte value"));
            };
            bytes(spec, b)
        }
    }
}

fn bytes_text(v: My) -> Result<String, ConvError> {
    match v {
        My::Bytes(b) => String::from_utf8(b).map_err(|_| invalid("malformed numeric text")),
        My::Int(i) => Ok(i.to_string()),
        My::UInt(u) => Ok(u.to_string()),
        _ => Err(invalid("unexpected value kind")),
    }
}

pub(crate) fn date(y: u16, m: u8, d: u8) -> Result<Date, ConvError> {
    if y == 0 || m == 0 || d == 0 {
        return Err(ConvError::ZeroDate);
    }
    // Invalid calendar dates (`ALLOW_INVALID_DATES`) fall under the same policy.
    Date::from_ymd(i32::from(y), u32::from(m), u32::from(d)).ok_or(ConvError::ZeroDate)
}

pub(crate) fn integer(v: i128, pg_type: &str) -> Result<Value, ConvError> {
    let range = || invalid(format!("integer out of range for {pg_type}"));
    Ok(match pg_base(pg_type) {
        "boolean" => match v {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            _ => {
                return Err(invalid(
                    "tinyint(1) column holds a value other than 0 or 1, which boolean cannot carry; \
                     change the column to tinyint(4) or map it to smallint",
                ));
            }
        },
        "smallint" => Value::Int2(i16::try_from(v).map_err(|_| range())?),
        "integer" => Value::Int4(i32::try_from(v).map_err(|_| range())?),
        "bigint" => Value::Int8(i64::try_from(v).map_err(|_| range())?),
        "numeric" => Value::Numeric(Numeric::parse(&v.to_string()).map_err(|_| range())?),
        "text" => Value::Text(v.to_string()),
        _ => Value::Other {
            type_name: pg_type.to_owned(),
            text: v.to_string(),
        },
    })
}

/// Character and binary string columns.
fn bytes(spec: &ColumnSpec, mut b: Vec<u8>) -> Result<Value, ConvError> {
    match pg_base(&spec.pg_type) {
        "bytea" => {
            if let Some(width) = binary_width(spec)
                && b.len() < width
            {
                b.resize(width, 0);
            }
            Ok(Value::Bytes(b))
        }
        "uuid" => match binary_width(spec).filter(|w| *w == 16 && b.len() < 16) {
            Some(w) => {
                b.resize(w, 0);
                mariadb_uuid(&b)
                    .map(Value::Uuid)
                    .ok_or_else(|| invalid("malformed uuid"))
            }
            None => match b.len() {
                16 => mariadb_uuid(&b)
                    .map(Value::Uuid)
                    .ok_or_else(|| invalid("malformed uuid")),
                _ => {
                    let t = decode_text(spec, b)?;
                    parse_uuid(&t)
                        .map(Value::Uuid)
                        .ok_or_else(|| invalid("malformed uuid"))
                }
            },
        },
        "inet" => match binary_width(spec).filter(|w| matches!(w, 4 | 16) && b.len() < *w) {
            // Fixed-width binary values lose trailing zero bytes in row images.
            Some(w) => {
                b.resize(w, 0);
                bytes(spec, b)
            }
            None => match b.len() {
                4 => Ok(Value::Other {
                    type_name: "inet".into(),
                    text: std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
                }),
                16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&b);
                    Ok(Value::Other {
                        type_name: "inet".into(),
                        text: std::net::Ipv6Addr::from(a).to_string(),
                    })
                }
                _ => Ok(Value::Other {
                    type_name: "inet".into(),
                    text: decode_text(spec, b)?,
                }),
            },
        },
        "jsonb" | "json" => {
            let t = decode_text(spec, b)?;
            serde_json::from_str::<serde_json::Value>(&t)
                .map_err(|_| invalid("JSON column holds invalid JSON text"))?;
            Ok(Value::Jsonb(t))
        }
        _ => {
            if spec.collation == Some(BINARY_COLLATION) {
                // A binary string carried to a text column: must still be UTF-8.
                let t = String::from_utf8(b)
                    .map_err(|_| invalid("binary string is not valid UTF-8 for a text column"))?;
                return no_nul(t).map(Value::Text);
            }
            decode_text(spec, b).map(Value::Text)
        }
    }
}

/// `BINARY(n)`: MySQL strips trailing `\0` in row images; the width to restore.
fn binary_width(spec: &ColumnSpec) -> Option<usize> {
    if spec.binlog_type != ColumnType::MYSQL_TYPE_STRING {
        return None;
    }
    let m0 = usize::from(*spec.meta.first()?);
    let m1 = usize::from(*spec.meta.get(1)?);
    // Real type STRING with the length split across both bytes (see TABLE_MAP docs).
    let len = if m0 & 0x30 != 0x30 {
        m1 | (((m0 & 0x30) ^ 0x30) << 4)
    } else {
        m1
    };
    Some(len)
}

/// A MariaDB `UUID` column's 16 stored bytes → the UUID.
fn mariadb_uuid(b: &[u8]) -> Option<[u8; 16]> {
    let mut u = [0u8; 16];
    u.copy_from_slice(b.get(..16)?);
    Some(u)
}

pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, slot) in u.iter_mut().enumerate() {
        *slot = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(u)
}

pub(crate) fn no_nul(t: String) -> Result<String, ConvError> {
    if t.contains('\0') {
        return Err(invalid(
            "text contains a NUL character, which PostgreSQL text cannot store; \
             remove it at the source or change the column to a binary type",
        ));
    }
    Ok(t)
}

/// Decodes a character column's bytes to UTF-8 by its charset.
pub fn decode_text(spec: &ColumnSpec, b: Vec<u8>) -> Result<String, ConvError> {
    let charset = match (spec.collation, &spec.charset) {
        (Some(c), _) => super::charset::charset_of(c),
        (None, Some(name)) => super::charset::normalise(name),
        (None, None) => "utf8mb4",
    };
    let t = super::charset::decode(charset, b).map_err(ConvError::Invalid)?;
    no_nul(t)
}
