//! One server process under supervision: the lifecycle the PostgreSQL and
//! MariaDB harnesses share.
//!
//! A [`Supervisor`] spawns the server with its stdout and stderr appended to
//! `server.log` in the instance directory, polls until the server says it is
//! ready (each server has its own readiness probe) or the startup timeout
//! passes, and retries on a new free loopback port when the server reports
//! that its port was taken in the meantime. It stops the server by pid with a
//! signal (escalating to SIGKILL after a grace period), crashes it with
//! SIGKILL, and always waits for the server's former child processes so the
//! data directory can be reused. Dropping it stops the server the way the
//! harness chose ([`OnDrop`]).

use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sys::{children_of, io_err, send_signal, wait_pid_gone};
use crate::{Result, TestkitError};

/// How many free ports a start tries before giving up.
const PORT_ATTEMPTS: usize = 5;
/// How often startup and shutdown are polled.
const POLL: Duration = Duration::from_millis(20);

/// How dropping a [`Supervisor`] ends a still-running server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnDrop {
    /// Send this signal, SIGKILL after the grace period.
    Signal(i32, Duration),
    /// SIGKILL at once (nothing of the data directory is kept anyway).
    Crash,
}

/// What the server and the harness know about one server.
#[derive(Debug, Clone)]
pub(crate) struct ServerSpec {
    /// "PostgreSQL" or "MariaDB", for errors.
    pub server: &'static str,
    /// The program name, for errors ("postgres", "mariadbd").
    pub program: &'static str,
    /// Where the server's output goes (appended across restarts).
    pub log: PathBuf,
    /// How long a start may take until the server is ready.
    pub startup_timeout: Duration,
    /// Log lines that mean "another process took the port".
    pub port_in_use: &'static [&'static str],
    pub on_drop: OnDrop,
}

/// A spawned server process: start on a free port, wait until ready, stop,
/// crash, start again on the same port. See the module docs.
#[derive(Debug)]
pub(crate) struct Supervisor {
    spec: ServerSpec,
    port: u16,
    child: Option<Child>,
}

enum Attempt {
    Ready,
    PortInUse,
}

impl Supervisor {
    /// Nothing running yet; [`Supervisor::start`] picks the port.
    pub(crate) fn new(spec: ServerSpec) -> Self {
        Supervisor {
            spec,
            port: 0,
            child: None,
        }
    }

    /// Starts the server on a free loopback port: `command(port)` builds the
    /// server command line, `ready(new_log, pid)` says whether the server
    /// accepts connections yet (`new_log` is what it logged since this
    /// spawn). Another free port is tried when the port was taken between
    /// choosing and binding it.
    pub(crate) fn start(
        &mut self,
        mut command: impl FnMut(u16) -> Command,
        mut ready: impl FnMut(&str, u32) -> bool,
    ) -> Result<()> {
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port()?;
            if let Attempt::Ready = self.spawn_and_wait(command(self.port), &mut ready)? {
                return Ok(());
            }
        }
        Err(self.start_error(format!("port still in use after {PORT_ATTEMPTS} attempts")))
    }

    /// Starts the server again on the port it had (after
    /// [`Supervisor::stop`] or [`Supervisor::crash`]), waiting for a port
    /// that is still held by the old process's leftovers to free up.
    pub(crate) fn start_again(
        &mut self,
        mut command: impl FnMut(u16) -> Command,
        mut ready: impl FnMut(&str, u32) -> bool,
    ) -> Result<()> {
        if self.child.is_some() {
            return Err(TestkitError::Setup(
                "start_again: the server is still running".into(),
            ));
        }
        for _ in 0..PORT_ATTEMPTS {
            match self.spawn_and_wait(command(self.port), &mut ready)? {
                Attempt::Ready => return Ok(()),
                Attempt::PortInUse => std::thread::sleep(Duration::from_millis(500)),
            }
        }
        Err(self.start_error(format!("port {} stays in use", self.port)))
    }

    fn spawn_and_wait(
        &mut self,
        mut cmd: Command,
        ready: &mut impl FnMut(&str, u32) -> bool,
    ) -> Result<Attempt> {
        let log = self.spec.log.clone();
        let offset = file_len(&log);
        let (out, err) = open_log(&log)?;
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawning {}", self.spec.program)))?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + self.spec.startup_timeout;
        loop {
            let new_log = read_from(&log, offset);
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let new_log = read_from(&log, offset);
                if self.spec.port_in_use.iter().any(|m| new_log.contains(m)) {
                    return Ok(Attempt::PortInUse);
                }
                return Err(self.start_error(format!(
                    "{} exited during startup ({status})",
                    self.spec.program
                )));
            }
            if ready(&new_log, pid) {
                return Ok(Attempt::Ready);
            }
            if Instant::now() > deadline {
                self.crash();
                return Err(self.start_error(format!(
                    "not ready after {:?} (port {})",
                    self.spec.startup_timeout, self.port
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// A start failure with the end of the server log.
    pub(crate) fn start_error(&self, reason: String) -> TestkitError {
        TestkitError::Start {
            server: self.spec.server,
            reason,
            log: self.spec.log.clone(),
            log_tail: log_tail(&self.spec.log, 40),
        }
    }

    /// The TCP port on 127.0.0.1 (0 before the first start).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Pid of the server, while running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The whole server log.
    pub(crate) fn log_contents(&self) -> String {
        read_from(&self.spec.log, 0)
    }

    /// Asks the server to exit with `signal`, SIGKILL after `grace`; waits
    /// for it and its former children.
    pub(crate) fn stop(&mut self, signal: i32, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child, signal, grace);
        }
    }

    /// SIGKILLs the server (a crash) and waits for its former children.
    pub(crate) fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            crash_child(&mut child);
        }
    }

    /// Ends a still-running server as [`ServerSpec::on_drop`] says (also
    /// what dropping does); call it before removing the server's directory.
    pub(crate) fn end(&mut self) {
        match self.spec.on_drop {
            OnDrop::Signal(signal, grace) => self.stop(signal, grace),
            OnDrop::Crash => self.crash(),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.end();
    }
}

/// A currently free loopback port to listen on. Another process may grab
/// it before the server binds it; [`Supervisor::start`] retries with a new
/// one then.
///
/// It is taken below the kernel's ephemeral range when there is room
/// there: any outgoing connection may be given a port of that range as its
/// local port, so a server (or a `ferry run`) restarting on a port from it
/// can find it held for as long as that connection lives.
pub fn free_port() -> Result<u16> {
    if let Some((low, high)) = listening_range() {
        for attempt in 0u32..64 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(attempt);
            h.write_u32(std::process::id());
            let port = low + (h.finish() % u64::from(high - low)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(io_err("binding 127.0.0.1:0 to find a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("reading local address"))?
        .port())
}

/// Ports below the ephemeral range (`net.ipv4.ip_local_port_range`), at
/// most 16,384 of them and none below 10,000; `None` when there is too
/// little room or the range cannot be read.
fn listening_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_low: u16 = text.split_whitespace().next()?.parse().ok()?;
    listening_range_below(ephemeral_low)
}

fn listening_range_below(ephemeral_low: u16) -> Option<(u16, u16)> {
    let low = ephemeral_low.saturating_sub(16_384).max(10_000);
    (ephemeral_low >= low + 4_096).then_some((low, ephemeral_low))
}

/// Waits for our own child up to `timeout`; true if it exited.
fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() > deadline => return false,
            Ok(None) => std::thread::sleep(POLL),
        }
    }
}

/// Waits for the former children of a server that has exited, SIGKILLing
/// any that outlive 10 s.
fn reap_children(kids: Vec<u32>) {
    for k in kids {
        if !wait_pid_gone(k, Duration::from_secs(10)) {
            send_signal(k, libc::SIGKILL);
            wait_pid_gone(k, Duration::from_secs(2));
        }
    }
}

/// Asks `child` to exit with `signal`, escalating to SIGKILL after `grace`.
/// Afterwards waits (up to 10 s) for the processes that were its children.
fn terminate_child(child: &mut Child, signal: i32, grace: Duration) {
    let kids = children_of(child.id());
    if child.try_wait().ok().flatten().is_none() {
        send_signal(child.id(), signal);
        if !wait_child(child, grace) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    reap_children(kids);
}

/// SIGKILLs `child` (a crash), then waits for its former children to exit
/// (PostgreSQL backends notice postmaster death on their own).
fn crash_child(child: &mut Child) {
    let kids = children_of(child.id());
    let _ = child.kill();
    let _ = child.wait();
    reap_children(kids);
}

/// Everything in `path` from byte `offset` on (lossy UTF-8).
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `lines` lines of a log file.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = read_from(path, 0);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Opens (creating) a log file for appending, for a server's stdout/stderr.
fn open_log(path: &Path) -> Result<(File, File)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(format!("opening log {}", path.display())))?;
    let g = f.try_clone().map_err(io_err("cloning log handle"))?;
    Ok((f, g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_stay_below_the_ephemeral_range() {
        // Linux's default range starts at 32768.
        assert_eq!(listening_range_below(32_768), Some((16_384, 32_768)));
        // A range starting low leaves no room: the kernel picks then.
        assert_eq!(listening_range_below(12_000), None);
        assert_eq!(listening_range_below(1_024), None);
        assert_eq!(listening_range_below(49_152), Some((32_768, 49_152)));
        for _ in 0..50 {
            let port = free_port().unwrap();
            if let Some((low, high)) = listening_range() {
                assert!((low..high).contains(&port), "{port} outside {low}..{high}");
            }
            // Free: it can be bound now.
            TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }
}
