//! Lag figures: how far the target is behind the source.
//!
//! Two figures, always both (DESIGN §6):
//! - **bytes** (or events): source head position minus applied position,
//!   computed by the caller, which knows its position type;
//! - **seconds**: now minus the commit time of the oldest source transaction
//!   not yet applied; 0 when caught up.
//!
//! The seconds figure must never freeze while data waits. Its reference time
//! is the earliest of what we know about the waiting data:
//! 1. the commit time of the oldest received-but-unapplied transaction;
//! 2. the write time of the oldest heartbeat not yet seen applied (on an idle
//!    source the heartbeat is the only traffic, so it keeps the figure true;
//!    when the reader is stalled, heartbeats pile up and the figure grows);
//! 3. when the head is ahead and nothing else is known (data not received
//!    yet): the time we have been behind since the applied position last
//!    advanced ([`LagTracker`] keeps it).
//!
//! Everything here is pure; the caller passes `now`.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The two lag figures.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LagFigures {
    pub seconds: f64,
    pub bytes: u64,
    pub caught_up: bool,
}

/// What the lag is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagInputs {
    /// Source head minus applied position (0 when applied ≥ head).
    pub pending_bytes: u64,
    /// Commit time of the oldest transaction received but not yet applied.
    pub oldest_unapplied_commit: Option<SystemTime>,
    /// Write time of the oldest heartbeat not yet seen applied.
    pub oldest_unapplied_heartbeat: Option<SystemTime>,
    /// Since when the head has been ahead of the applied position without
    /// the applied position advancing (see [`LagTracker`]).
    pub behind_since: Option<SystemTime>,
    pub now: SystemTime,
}

/// The lag figures for `i`.
pub fn lag_figures(i: &LagInputs) -> LagFigures {
    let known = [i.oldest_unapplied_commit, i.oldest_unapplied_heartbeat]
        .into_iter()
        .flatten()
        .min();
    let reference = match known {
        Some(t) => Some(t),
        None if i.pending_bytes > 0 => i.behind_since,
        None => None,
    };
    let caught_up = i.pending_bytes == 0 && known.is_none();
    let seconds = match reference {
        Some(t) if !caught_up => seconds_between(t, i.now),
        _ => 0.0,
    };
    LagFigures {
        seconds,
        bytes: i.pending_bytes,
        caught_up,
    }
}

/// `later − earlier` in seconds, 0 if the clock says `later` is earlier
/// (clock skew between source and ferry must not show negative lag).
pub fn seconds_between(earlier: SystemTime, later: SystemTime) -> f64 {
    later
        .duration_since(earlier)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Keeps `behind_since` across observations: set when the head first gets
/// ahead of the applied position, moved to the time of each advance of the
/// applied position while still behind, cleared when caught up.
#[derive(Debug, Clone, Default)]
pub struct LagTracker {
    last_applied: Option<u64>,
    behind_since: Option<SystemTime>,
}

impl LagTracker {
    pub fn new() -> Self {
        LagTracker::default()
    }

    /// Record an observation; `applied` is any numeric form of the applied
    /// position that grows when it advances (e.g. LSN, or a counter of
    /// applied commits). Returns the current `behind_since`.
    pub fn observe(
        &mut self,
        pending_bytes: u64,
        applied: u64,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let advanced = self.last_applied.is_some_and(|prev| applied > prev);
        self.last_applied = Some(applied);
        self.behind_since = match (pending_bytes, self.behind_since) {
            (0, _) => None,
            (_, None) => Some(now),
            (_, Some(_)) if advanced => Some(now),
            (_, since) => since,
        };
        self.behind_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn figures_follow_the_rules() {
        struct Case {
            what: &'static str,
            pending: u64,
            commit: Option<u64>,
            heartbeat: Option<u64>,
            behind: Option<u64>,
            now: u64,
            want: (f64, u64, bool),
        }
        let cases = [
            Case {
                what: "caught up",
                pending: 0,
                commit: None,
                heartbeat: None,
                behind: None,
                now: 100,
                want: (0.0, 0, true),
            },
            Case {
                what: "caught up ignores a stale behind_since",
                pending: 0,
                commit: None,
                heartbeat: None,
                behind: Some(10),
                now: 100,
                want: (0.0, 0, true),
            },
            Case {
                what: "oldest unapplied commit",
                pending: 500,
                commit: Some(90),
                heartbeat: None,
                behind: Some(95),
                now: 100,
                want: (10.0, 500, false),
            },
            Case {
                what: "received but head not yet refreshed",
                pending: 0,
                commit: Some(97),
                heartbeat: None,
                behind: None,
                now: 100,
                want: (3.0, 0, false),
            },
            Case {
                what: "stalled: figure grows with now",
                pending: 500,
                commit: Some(90),
                heartbeat: None,
                behind: None,
                now: 160,
                want: (70.0, 500, false),
            },
            Case {
                what: "idle source, heartbeat applied",
                pending: 0,
                commit: None,
                heartbeat: None,
                behind: None,
                now: 5000,
                want: (0.0, 0, true),
            },
            Case {
                what: "reader stalled: unapplied heartbeat",
                pending: 64,
                commit: None,
                heartbeat: Some(40),
                behind: Some(70),
                now: 100,
                want: (60.0, 64, false),
            },
            Case {
                what: "heartbeat older than pending commit wins",
                pending: 64,
                commit: Some(80),
                heartbeat: Some(50),
                behind: None,
                now: 100,
                want: (50.0, 64, false),
            },
            Case {
                what: "head ahead, no commit time: behind_since",
                pending: 64,
                commit: None,
                heartbeat: None,
                behind: Some(85),
                now: 100,
                want: (15.0, 64, false),
            },
            Case {
                what: "head ahead, nothing known yet",
                pending: 64,
                commit: None,
                heartbeat: None,
                behind: None,
                now: 100,
                want: (0.0, 64, false),
            },
            Case {
                what: "source clock ahead of ours",
                pending: 10,
                commit: Some(130),
                heartbeat: None,
                behind: None,
                now: 100,
                want: (0.0, 10, false),
            },
        ];
        for c in cases {
            let got = lag_figures(&LagInputs {
                pending_bytes: c.pending,
                oldest_unapplied_commit: c.commit.map(at),
                oldest_unapplied_heartbeat: c.heartbeat.map(at),
                behind_since: c.behind.map(at),
                now: at(c.now),
            });
            assert_eq!(
                (got.seconds, got.bytes, got.caught_up),
                c.want,
                "{}",
                c.what
            );
        }
    }

    #[test]
    fn tracker_never_freezes_while_stalled() {
        let mut t = LagTracker::new();
        assert_eq!(t.observe(0, 100, at(0)), None);
        // Head moves ahead at t=10; applied does not move: behind since 10.
        assert_eq!(t.observe(50, 100, at(10)), Some(at(10)));
        assert_eq!(t.observe(80, 100, at(20)), Some(at(10)));
        let fig = |since, now| {
            lag_figures(&LagInputs {
                pending_bytes: 80,
                oldest_unapplied_commit: None,
                oldest_unapplied_heartbeat: None,
                behind_since: since,
                now: at(now),
            })
            .seconds
        };
        let a = fig(t.observe(80, 100, at(30)), 30);
        let b = fig(t.observe(80, 100, at(90)), 90);
        assert!(b > a && a == 20.0 && b == 80.0, "{a} {b}");
        // Applied advances but still behind: reference moves to the advance.
        assert_eq!(t.observe(40, 140, at(95)), Some(at(95)));
        assert_eq!(t.observe(40, 140, at(99)), Some(at(95)));
        // Caught up: cleared.
        assert_eq!(t.observe(0, 180, at(100)), None);
        assert_eq!(t.observe(5, 180, at(101)), Some(at(101)));
    }
}
