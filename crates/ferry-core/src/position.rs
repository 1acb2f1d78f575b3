//! Source log positions.
//!
//! One type per source, each totally ordered within its own log. They share
//! no common type a caller could compare across sources: an LSN and a binlog
//! coordinate simply do not typecheck against each other. Each position
//! serialises to text (for `ferry.checkpoint`) and parses back exactly.
//!
//! - [`Lsn`]: PostgreSQL WAL location, printed as `16/B374D848`.
//! - [`MySqlPosition`]: binlog file + offset, plus the GTID set executed
//!   up to that point when GTIDs are enabled; printed as
//!   `binlog.000003:1234` or `binlog.000003:1234#0-1-42`.
//! - [`ChangeLogSeq`]: sequence number of ferry's SQLite change-log table.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Which kind of source a position belongs to (stored beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Postgres,
    MySql,
    Sqlite,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Postgres => "postgres",
            SourceKind::MySql => "mysql",
            SourceKind::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in one source's change log.
pub trait Position:
    Ord + Clone + fmt::Debug + fmt::Display + FromStr<Err = PositionParseError> + Send + Sync + 'static
{
    /// The source this position type belongs to.
    const KIND: SourceKind;

    /// Bytes of log from `self` to `later` (0 when `later` is not after
    /// it); `None` when the source cannot tell (e.g. two binlog files).
    fn distance(&self, later: &Self) -> Option<u64> {
        let _ = later;
        None
    }

    /// The position as one number for metrics, where it has one.
    fn as_number(&self) -> Option<u64> {
        None
    }
}

/// A position string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} position {text:?}: expected {expected}")]
pub struct PositionParseError {
    kind: SourceKind,
    text: String,
    expected: &'static str,
}

impl PositionParseError {
    fn new(kind: SourceKind, text: &str, expected: &'static str) -> Self {
        PositionParseError {
            kind,
            text: text.chars().take(80).collect(),
            expected,
        }
    }
}

/// PostgreSQL log sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err =
            || PositionParseError::new(SourceKind::Postgres, s, "HEX/HEX such as 16/B374D848");
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Position for Lsn {
    const KIND: SourceKind = SourceKind::Postgres;

    fn distance(&self, later: &Self) -> Option<u64> {
        Some(later.0.saturating_sub(self.0))
    }

    fn as_number(&self) -> Option<u64> {
        Some(self.0)
    }
}

/// A set of executed GTIDs, kept as the server prints it.
///
/// MariaDB: `domain-server-seq` list (`0-1-42,1-2-7`); MySQL: `uuid:1-42,...`.
/// It travels with the binlog coordinate so a resumed stream can use GTID
/// positioning; ordering is by file and offset, which is total in one log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GtidSet(String);

impl GtidSet {
    /// Wrap a server-printed GTID set; whitespace and newlines are removed.
    pub fn new(text: &str) -> Self {
        GtidSet(text.chars().filter(|c| !c.is_whitespace()).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// MySQL / MariaDB binlog coordinate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MySqlPosition {
    /// Binlog file name, e.g. `mysql-bin.000003`.
    pub file: String,
    /// Byte offset of the next event in that file.
    pub offset: u64,
    /// GTID set executed up to here, when GTIDs are in use.
    pub gtid: Option<GtidSet>,
}

impl MySqlPosition {
    pub fn new(file: impl Into<String>, offset: u64) -> Self {
        MySqlPosition {
            file: file.into(),
            offset,
            gtid: None,
        }
    }

    /// The numeric suffix of the file name (`binlog.000012` → 12).
    fn file_seq(&self) -> Option<u64> {
        let (_, suffix) = self.file.rsplit_once('.')?;
        suffix.parse().ok()
    }
}

impl Ord for MySqlPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        // Binlog files of one server share a base name and grow by suffix;
        // compare the suffix numerically so `.1000000` follows `.999999`.
        let by_file = match (self.file_seq(), other.file_seq()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.file.cmp(&other.file),
        };
        by_file
            .then(self.offset.cmp(&other.offset))
            .then_with(|| self.file.cmp(&other.file))
            .then_with(|| {
                self.gtid
                    .as_ref()
                    .map(GtidSet::as_str)
                    .cmp(&other.gtid.as_ref().map(GtidSet::as_str))
            })
    }
}

impl PartialOrd for MySqlPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for MySqlPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)?;
        if let Some(g) = &self.gtid {
            write!(f, "#{g}")?;
        }
        Ok(())
    }
}

impl FromStr for MySqlPosition {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PositionParseError::new(SourceKind::MySql, s, "FILE:OFFSET[#GTIDSET]");
        let (coord, gtid) = match s.split_once('#') {
            Some((c, g)) => (c, Some(GtidSet::new(g))),
            None => (s, None),
        };
        let (file, offset) = coord.rsplit_once(':').ok_or_else(err)?;
        if file.is_empty() || file.contains('#') {
            return Err(err());
        }
        let offset = offset.parse().map_err(|_| err())?;
        Ok(MySqlPosition {
            file: file.to_owned(),
            offset,
            gtid,
        })
    }
}

impl Position for MySqlPosition {
    const KIND: SourceKind = SourceKind::MySql;

    /// Within one binlog file only.
    fn distance(&self, later: &Self) -> Option<u64> {
        (self.file == later.file).then(|| later.offset.saturating_sub(self.offset))
    }
}

/// Sequence number in ferry's SQLite change-log table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ChangeLogSeq(pub u64);

impl fmt::Display for ChangeLogSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ChangeLogSeq {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse()
            .map(ChangeLogSeq)
            .map_err(|_| PositionParseError::new(SourceKind::Sqlite, s, "a non-negative integer"))
    }
}

impl Position for ChangeLogSeq {
    const KIND: SourceKind = SourceKind::Sqlite;

    fn as_number(&self) -> Option<u64> {
        Some(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_prints_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
    }

    #[test]
    fn bad_positions_are_rejected() {
        for bad in ["", "/", "1/", "/1", "x/1", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
        for bad in ["", "file", "file:", ":12", "f:-1", "f:x"] {
            assert!(bad.parse::<MySqlPosition>().is_err(), "{bad:?}");
        }
        assert!("-1".parse::<ChangeLogSeq>().is_err());
    }

    #[test]
    fn binlog_files_order_numerically() {
        let a: MySqlPosition = "binlog.999999:4".parse().unwrap();
        let b: MySqlPosition = "binlog.1000000:4".parse().unwrap();
        assert!(a < b);
        let c: MySqlPosition = "binlog.000002:900".parse().unwrap();
        let d: MySqlPosition = "binlog.000003:4".parse().unwrap();
        assert!(c < d);
    }

    #[test]
    fn mysql_position_keeps_gtid() {
        let p: MySqlPosition = "mysql-bin.000003:1234#0-1-42,1-2-7".parse().unwrap();
        assert_eq!(p.file, "mysql-bin.000003");
        assert_eq!(p.offset, 1234);
        assert_eq!(p.gtid.as_ref().unwrap().as_str(), "0-1-42,1-2-7");
        assert_eq!(p.to_string(), "mysql-bin.000003:1234#0-1-42,1-2-7");
        let uuid = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5";
        let q: MySqlPosition = format!("binlog.000001:4#{uuid}").parse().unwrap();
        assert_eq!(q.gtid.unwrap().as_str(), uuid);
    }

    proptest! {
        #[test]
        fn lsn_round_trips_and_orders(a: u64, b: u64) {
            let (la, lb) = (Lsn(a), Lsn(b));
            prop_assert_eq!(la.to_string().parse::<Lsn>().unwrap(), la);
            prop_assert_eq!(la.cmp(&lb), a.cmp(&b));
            prop_assert_eq!(la.to_string().parse::<Lsn>().unwrap().cmp(&lb), a.cmp(&b));
        }

        #[test]
        fn mysql_round_trips_and_orders(fa in 1u64..2_000_000, oa: u64, fb in 1u64..2_000_000, ob: u64,
                                        gtid in proptest::option::of("[0-9]{1,3}-[0-9]{1,3}-[0-9]{1,6}")) {
            let mut a = MySqlPosition::new(format!("binlog.{fa:06}"), oa);
            a.gtid = gtid.map(|g| GtidSet::new(&g));
            let b = MySqlPosition::new(format!("binlog.{fb:06}"), ob);
            let back: MySqlPosition = a.to_string().parse().unwrap();
            prop_assert_eq!(&back, &a);
            let expected = fa.cmp(&fb).then(oa.cmp(&ob));
            if expected != Ordering::Equal {
                prop_assert_eq!(a.cmp(&b), expected);
            }
        }

        #[test]
        fn seq_round_trips_and_orders(a: u64, b: u64) {
            prop_assert_eq!(ChangeLogSeq(a).to_string().parse::<ChangeLogSeq>().unwrap(), ChangeLogSeq(a));
            prop_assert_eq!(ChangeLogSeq(a).cmp(&ChangeLogSeq(b)), a.cmp(&b));
        }
    }
}
