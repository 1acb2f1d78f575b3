//! The executed GTID set a binlog position carries, kept up to date as
//! transactions commit.
//!
//! Two forms, decided by the first GTID seen (or by the starting set):
//!
//! - MariaDB: one `domain-server-seq` per replication domain, the last
//!   transaction of each domain (`0-1-42,1-2-7`), as `@@gtid_binlog_pos`.
//! - MySQL: `uuid[:tag]:interval[:interval…]` per source (`3e11…:1-42`),
//!   intervals inclusive, as `@@gtid_executed`.
//!
//! Printed deterministically (domains and uuids sorted) so equal sets print
//! equal and parse back exactly.

use std::collections::BTreeMap;
use std::fmt;

/// An executed GTID set in MariaDB or MySQL form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GtidState {
    /// No GTIDs seen (GTIDs off, or nothing committed yet).
    #[default]
    Empty,
    /// domain → (server_id, seq_no) of the last transaction in that domain.
    MariaDb(BTreeMap<u32, (u32, u64)>),
    /// `uuid` or `uuid:tag` → sorted, disjoint, inclusive intervals.
    MySql(BTreeMap<String, Vec<(u64, u64)>>),
}

/// Text that is not a GTID set in either form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtidParseError(pub String);

impl fmt::Display for GtidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a GTID set: {:?}", self.0)
    }
}

impl GtidState {
    pub fn is_empty(&self) -> bool {
        match self {
            GtidState::Empty => true,
            GtidState::MariaDb(m) => m.is_empty(),
            GtidState::MySql(m) => m.is_empty(),
        }
    }

    /// Parses `@@gtid_binlog_pos` (MariaDB) or `@@gtid_executed` (MySQL) text.
    pub fn parse(text: &str) -> Result<GtidState, GtidParseError> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if text.is_empty() {
            return Ok(GtidState::Empty);
        }
        let err = || GtidParseError(text.chars().take(80).collect());
        if text.contains(':') {
            let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
            for part in text.split(',') {
                let mut items = part.split(':');
                let uuid = items.next().filter(|u| is_uuid(u)).ok_or_else(err)?;
                let uuid = uuid.to_ascii_lowercase();
                let mut key = uuid.clone();
                let mut any = false;
                for item in items {
                    if item.starts_with(|c: char| c.is_ascii_digit()) {
                        let (a, b) = match item.split_once('-') {
                            Some((a, b)) => (a, b),
                            None => (item, item),
                        };
                        let a: u64 = a.parse().map_err(|_| err())?;
                        let b: u64 = b.parse().map_err(|_| err())?;
                        if a == 0 || b < a {
                            return Err(err());
                        }
                        add_interval(out.entry(key.clone()).or_default(), a, b);
                        any = true;
                    } else if !item.is_empty()
                        && item.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        key = format!("{uuid}:{}", item.to_ascii_lowercase());
                    } else {
                        return Err(err());
                    }
                }
                if !any {
                    return Err(err());
                }
            }
            Ok(GtidState::MySql(out))
        } else {
            let mut out = BTreeMap::new();
            for part in text.split(',') {
                let mut it = part.split('-');
                let (Some(d), Some(s), Some(n), None) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    return Err(err());
                };
                let d: u32 = d.parse().map_err(|_| err())?;
                let s: u32 = s.parse().map_err(|_| err())?;
                let n: u64 = n.parse().map_err(|_| err())?;
                out.insert(d, (s, n));
            }
            Ok(GtidState::MariaDb(out))
        }
    }

    /// Records a committed MariaDB GTID `domain-server-seq`.
    pub fn add_mariadb(&mut self, domain: u32, server: u32, seq: u64) {
        if !matches!(self, GtidState::MariaDb(_)) {
            *self = GtidState::MariaDb(BTreeMap::new());
        }
        if let GtidState::MariaDb(m) = self {
            m.insert(domain, (server, seq));
        }
    }

    /// Records a committed MySQL GTID `uuid[:tag]:gno`.
    pub fn add_mysql(&mut self, source: &str, gno: u64) {
        self.add_mysql_interval(source, gno, gno);
    }

    /// Records MySQL GTIDs `first..=last` of `source` (`uuid` or `uuid:tag`).
    pub fn add_mysql_interval(&mut self, source: &str, first: u64, last: u64) {
        if !matches!(self, GtidState::MySql(_)) {
            *self = GtidState::MySql(BTreeMap::new());
        }
        if let GtidState::MySql(m) = self
            && first <= last
        {
            add_interval(
                m.entry(source.to_ascii_lowercase()).or_default(),
                first,
                last,
            );
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Adds `[a, b]` to sorted disjoint intervals, merging neighbours.
fn add_interval(list: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    list.push((a, b));
    list.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(list.len());
    for &(s, e) in list.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *list = merged;
}

/// The 16 bytes of a MySQL server uuid as text.
pub fn uuid_text(sid: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in sid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtidState::Empty => Ok(()),
            GtidState::MariaDb(m) => {
                for (i, (d, (s, n))) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}-{s}-{n}")?;
                }
                Ok(())
            }
            GtidState::MySql(m) => {
                for (i, (source, intervals)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(source)?;
                    for (a, b) in intervals {
                        if a == b {
                            write!(f, ":{a}")?;
                        } else {
                            write!(f, ":{a}-{b}")?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_sets_track_last_seq_per_domain() {
        let mut g = GtidState::parse("0-1-42, 1-2-7").unwrap();
        g.add_mariadb(0, 1, 43);
        g.add_mariadb(2, 5, 1);
        assert_eq!(g.to_string(), "0-1-43,1-2-7,2-5-1");
        assert_eq!(GtidState::parse(&g.to_string()).unwrap(), g);
    }

    #[test]
    fn mysql_sets_merge_intervals() {
        let u = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        let mut g = GtidState::parse(&format!("{u}:1-5:7")).unwrap();
        g.add_mysql(&u.to_ascii_lowercase(), 6);
        g.add_mysql("3e11fa47-71ca-11e1-9e33-c80aa9429562:mytag", 3);
        assert_eq!(
            g.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-7,3e11fa47-71ca-11e1-9e33-c80aa9429562:mytag:3"
        );
        assert_eq!(GtidState::parse(&g.to_string()).unwrap(), g);
        let tagged = GtidState::parse(&format!("{u}:1-2:mytag:3-4")).unwrap();
        assert_eq!(
            tagged.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-2,3e11fa47-71ca-11e1-9e33-c80aa9429562:mytag:3-4"
        );
    }

    #[test]
    fn bad_sets_are_rejected() {
        for bad in [
            "0-1",
            "a-b-c",
            "0-1-2-3",
            "zz:1-2",
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:5-1",
        ] {
            assert!(GtidState::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(GtidState::parse("").unwrap(), GtidState::Empty);
    }
}
