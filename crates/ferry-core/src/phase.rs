//! The phases of a migration, in order (DESIGN.md §3). Durable in the
//! target's state schema, shown by status and metrics.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// `plan → schema → load → catchup → stream → cutover → done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Plan,
    Schema,
    Load,
    Catchup,
    Stream,
    Cutover,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Plan,
        Phase::Schema,
        Phase::Load,
        Phase::Catchup,
        Phase::Stream,
        Phase::Cutover,
        Phase::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Schema => "schema",
            Phase::Load => "load",
            Phase::Catchup => "catchup",
            Phase::Stream => "stream",
            Phase::Cutover => "cutover",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::operator(
                    format!("state schema holds unknown phase {s:?}"),
                    "the state was written by a newer ferry; upgrade ferry",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_in_order() {
        for w in Phase::ALL.windows(2) {
            assert!(w[0] < w[1]);
        }
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
        }
        assert!("nope".parse::<Phase>().is_err());
    }
}
