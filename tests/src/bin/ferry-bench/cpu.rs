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

/// The fields of a `stat` file (`/proc/PID/stat`, `/proc/PID/task/TID/stat`)
/// after the command name: field N of stat(5) is at index N − 3.
fn stat_fields(path: impl AsRef<std::path::Path>) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// One process's `/proc/PID/stat` fields: (ppid, own + reaped children's ticks).
fn stat(pid: u32) -> Option<(u32, u64)> {
    let fields = stat_fields(format!("/proc/{pid}/stat"))?;
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
        let fields = stat_fields(path.join("stat"))?;
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

/// Where a process's time went over its life so far, by the scheduler's
/// own accounting (`/proc/PID/task/*/schedstat`): on a CPU, runnable but
/// waiting in a run queue for one, and (for one thread) the rest asleep —
/// waiting for a socket, a lock or the disk. It says whether a stage of a
/// pipeline sharing the machine's cores is short of CPU or waits on
/// another stage, which CPU time alone does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeSplit {
    pub age: Duration,
    pub running: Duration,
    pub runnable: Duration,
    pub threads: usize,
}

impl TimeSplit {
    /// "on a CPU 0.64, waiting for one 0.12, asleep 0.24" (shares of the
    /// process's life; for several threads, in threads: their sum can pass 1).
    pub fn shares(&self) -> String {
        let age = self.age.as_secs_f64().max(1e-9);
        let on = self.running.as_secs_f64() / age;
        let queued = self.runnable.as_secs_f64() / age;
        if self.threads == 1 {
            format!(
                "on a CPU {on:.2}, waiting for one {queued:.2}, asleep {:.2}",
                (1.0 - on - queued).max(0.0)
            )
        } else {
            format!(
                "on a CPU {on:.2}, waiting for one {queued:.2} ({} threads)",
                self.threads
            )
        }
    }
}

/// The first two fields of a `schedstat` file: time on a CPU and time
/// waiting in a run queue, in nanoseconds.
fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace();
    let running = fields.next()?.parse().ok()?;
    let runnable = fields.next()?.parse().ok()?;
    Some((running, runnable))
}

/// [`TimeSplit`] of `pid` (all its live threads) from its start until now.
pub fn time_split(pid: u32) -> Option<TimeSplit> {
    // Field 22 of stat(5), starttime in clock ticks since boot, is 19 here.
    let started: u64 = stat_fields(format!("/proc/{pid}/stat"))?
        .get(19)?
        .parse()
        .ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let age = (uptime - started as f64 / ticks_per_second()).max(0.0);
    let (mut running, mut runnable, mut threads) = (0u64, 0u64, 0usize);
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        if let Some((on, queued)) = parse_schedstat(&text) {
            running += on;
            runnable += queued;
            threads += 1;
        }
    }
    (threads > 0).then(|| TimeSplit {
        age: Duration::from_secs_f64(age),
        running: Duration::from_nanos(running),
        runnable: Duration::from_nanos(runnable),
        threads,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedstat_line_gives_time_on_a_cpu_and_in_the_run_queue() {
        assert_eq!(
            parse_schedstat("8512345678 1234567890 40213\n"),
            Some((8_512_345_678, 1_234_567_890))
        );
        assert_eq!(parse_schedstat("12\n"), None);
    }

    #[test]
    fn this_process_has_been_on_a_cpu_and_its_life_is_longer_than_that() {
        // Spin until the scheduler has counted 10 ms on a CPU for this
        // process (however busy the machine is), or fail after 10 s.
        let start = std::time::Instant::now();
        let split = loop {
            let split = time_split(std::process::id()).expect("own schedstat");
            if split.running >= Duration::from_millis(10) {
                break split;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "schedstat never counted 10 ms on a CPU: {split:?}"
            );
            std::hint::black_box((0..10_000u64).sum::<u64>());
        };
        assert!(split.threads >= 1, "{split:?}");
        // The age has clock-tick resolution (10 ms at 100 Hz).
        assert!(
            split.age + Duration::from_millis(20) >= split.running / split.threads as u32,
            "{split:?}"
        );
    }

    #[test]
    fn a_sleeping_childs_life_is_its_age_and_it_is_asleep() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        std::thread::sleep(Duration::from_millis(400));
        let split = time_split(child.id());
        let _ = child.kill();
        let _ = child.wait();
        let split = split.expect("the child's schedstat");
        // The age has clock-tick resolution (10 ms at 100 Hz).
        assert!(
            split.age >= Duration::from_millis(350) && split.age < Duration::from_secs(5),
            "{split:?}"
        );
        assert_eq!(split.threads, 1, "{split:?}");
        assert!(split.running < Duration::from_millis(200), "{split:?}");
        // Asleep nearly all its life, and said so.
        let awake = (split.running + split.runnable).as_secs_f64() / split.age.as_secs_f64();
        assert!(awake < 0.5, "{split:?}");
        assert!(split.shares().contains(", asleep "), "{}", split.shares());
    }

    #[test]
    fn one_threads_shares_add_up_to_its_life() {
        let split = TimeSplit {
            age: Duration::from_secs(10),
            running: Duration::from_millis(6400),
            runnable: Duration::from_millis(1200),
            threads: 1,
        };
        assert_eq!(
            split.shares(),
            "on a CPU 0.64, waiting for one 0.12, asleep 0.24"
        );
        let threads = TimeSplit {
            threads: 9,
            ..split
        };
        assert_eq!(
            threads.shares(),
            "on a CPU 0.64, waiting for one 0.12 (9 threads)"
        );
    }
}
