//! CPU time of process trees from `/proc`, to say where a drain's time
//! went: the source server (walsender decoding and sending), the target
//! server (applying) and ferry.
//!
//! A tree's time is user + system time of the root and of every live
//! descendant, each including its reaped children (`cutime`, `cstime`):
//! a backend that exits between two samples is counted once, through its
//! parent, so the difference of two samples is the tree's CPU time between
//! them.

use std::collections::HashMap;
use std::time::Duration;

/// One process's `/proc/PID/stat` fields: (ppid, own + reaped children's ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    // Fields 14–17 of stat(5) (utime, stime, cutime, cstime) are 11–14 here.
    let ticks = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some((ppid, ticks))
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// CPU time of `root` and all its descendants so far.
pub fn tree(root: u32) -> Duration {
    let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(s) = stat(pid) {
                procs.insert(pid, s);
            }
        }
    }
    let mut total = procs.get(&root).map_or(0, |(_, t)| *t);
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, (ppid, ticks)) in &procs {
            if *ppid == parent && *pid != parent {
                total += ticks;
                frontier.push(*pid);
            }
        }
    }
    Duration::from_secs_f64(total as f64 / ticks_per_second())
}

/// CPU time of one process (all its threads) so far.
pub fn process(pid: u32) -> Duration {
    let ticks = stat(pid).map_or(0, |(_, t)| t);
    Duration::from_secs_f64(ticks as f64 / ticks_per_second())
}

/// CPU time of the thread of `pid` named `name` (its `comm`) so far, if
/// there is one.
pub fn thread(pid: u32, name: &str) -> Option<Duration> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let text = std::fs::read_to_string(path.join("stat")).ok()?;
        let rest = &text[text.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime (fields 14 and 15 of stat(5)).
        let ticks = fields
            .get(11..13)?
            .iter()
            .map(|f| f.parse::<u64>().ok())
            .sum::<Option<u64>>()?;
        return Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second()));
    }
    None
}

/// Where a drain's CPU time went.
#[derive(Debug, Clone, Copy)]
pub struct DrainCpu {
    pub source: Duration,
    pub target: Duration,
    pub ferry: Duration,
}

impl DrainCpu {
    /// "source A µs, target B µs, ferry C µs" per change.
    pub fn per_change(&self, changes: u64) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / changes.max(1) as f64;
        format!(
            "source {:.1} µs, target {:.1} µs, ferry {:.1} µs",
            us(self.source),
            us(self.target),
            us(self.ferry)
        )
    }

    /// The drain rate at which the servers alone would keep every core of
    /// this machine busy, if decoding cost `decode` per change on the
    /// source and applying cost what it cost the target here: no client,
    /// however fast, drains faster on this machine.
    pub fn ceiling(&self, decode: Duration, changes: u64) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let per_change = decode.as_secs_f64() + self.target.as_secs_f64() / changes.max(1) as f64;
        if per_change > 0.0 {
            cores / per_change
        } else {
            f64::INFINITY
        }
    }
}
