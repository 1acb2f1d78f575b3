//! Operating-system plumbing shared by the PostgreSQL and MariaDB harnesses:
//! service users, instance directories, leak cleanup, signals, template
//! locks and command execution. The server process itself is run by
//! [`crate::supervisor`].

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::TestkitError;

/// Name of the marker file holding `"<pid> <starttime>"` of the owning test process.
pub(crate) const OWNER_FILE: &str = "owner";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A process-wide counter used to build unique names.
pub(crate) fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TestkitError {
    let context = context.into();
    move |source| TestkitError::Io { context, source }
}

/// The OS account a server process runs as (only switched to when we are root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
}

/// Effective uid of this process (the owner of `/proc/self`).
pub(crate) fn effective_uid() -> u32 {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// When running as root, the account named `name` from /etc/passwd; otherwise
/// `None` (servers then run as ourselves).
pub(crate) fn service_user(
    name: &str,
    package: &'static str,
) -> Result<Option<ServiceUser>, TestkitError> {
    if effective_uid() != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("reading /etc/passwd"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let uid = fields[2].parse().ok();
            let gid = fields[3].parse().ok();
            if let (Some(uid), Some(gid)) = (uid, gid) {
                return Ok(Some(ServiceUser { uid, gid }));
            }
        }
    }
    Err(TestkitError::Setup(format!(
        "running as root, but OS user `{name}` (needed to run the server) is not in /etc/passwd; \
         install the Debian package `{package}` or run the tests as an ordinary user"
    )))
}

/// Hands `path` to the service user (no-op when not root).
pub(crate) fn chown_to(path: &Path, user: Option<ServiceUser>) -> Result<(), TestkitError> {
    if let Some(u) = user {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))
            .map_err(io_err(format!("chown {}", path.display())))?;
    }
    Ok(())
}

/// A `Command` that runs as the service user, in `cwd`, with a sane HOME.
pub(crate) fn service_command(program: &Path, user: Option<ServiceUser>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).env("HOME", cwd).stdin(Stdio::null());
    if let Some(u) = user {
        cmd.uid(u.uid).gid(u.gid);
    }
    cmd
}

/// Root of all testkit directories (`$FERRY_TESTKIT_ROOT` or `/tmp/ferry-testkit`).
pub fn testkit_root() -> PathBuf {
    std::env::var_os("FERRY_TESTKIT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ferry-testkit"))
}

pub(crate) fn ensure_root() -> Result<PathBuf, TestkitError> {
    let root = testkit_root();
    if !root.is_dir() {
        match fs::DirBuilder::new().mode(0o1777).create(&root) {
            Ok(()) => {
                // umask may have trimmed the mode; shared by all users, sticky.
                let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o1777));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(format!("creating {}", root.display()))(e)),
        }
    }
    Ok(root)
}

/// Start time (clock ticks since boot) of a live, non-zombie process.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

pub(crate) fn process_alive(pid: u32) -> bool {
    process_start_time(pid).is_some()
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Pids whose parent is `pid`.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_pid(p) == Some(pid))
        .collect()
}

fn cmdline_contains(pid: u32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Sends `signal` to `pid`.
pub(crate) fn send_signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a
    // positive pid targets exactly one process, which callers verified is a
    // server this harness started.
    let rc = unsafe { libc::kill(pid, signal) };
    rc == 0
}

/// Polls until `pid` is gone (or a zombie), up to `timeout`.
pub(crate) fn wait_pid_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A per-server directory under the testkit root, with an owner marker.
#[derive(Debug)]
pub(crate) struct InstanceDir {
    pub path: PathBuf,
}

impl InstanceDir {
    pub(crate) fn create(kind: &str, user: Option<ServiceUser>) -> Result<Self, TestkitError> {
        let root = ensure_root()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = root.join(format!(
            "{kind}-{}-{}-{nanos:x}",
            std::process::id(),
            next_id()
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        let me = std::process::id();
        let start = process_start_time(me).unwrap_or(0);
        fs::write(path.join(OWNER_FILE), format!("{me} {start}\n")).map_err(io_err(format!(
            "writing owner marker in {}",
            path.display()
        )))?;
        chown_to(&path, user)?;
        Ok(Self { path })
    }

    pub(crate) fn remove(&self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes instance directories whose owning test process is dead, after
/// killing the server recorded in them. Anything else is left alone.
pub(crate) fn reap_stale_instances() {
    let root = testkit_root();
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pg-") || name.starts_with("mariadb-")) || !path.is_dir() {
            continue;
        }
        let Ok(marker) = fs::read_to_string(path.join(OWNER_FILE)) else {
            continue; // being created, or not ours to read
        };
        let mut it = marker.split_whitespace();
        let (Some(pid), Some(start)) = (
            it.next().and_then(|s| s.parse::<u32>().ok()),
            it.next().and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if process_start_time(pid) == Some(start) {
            continue; // owner still running
        }
        let dir_str = path.to_string_lossy().into_owned();
        for pid_file in [path.join("data/postmaster.pid"), path.join("mariadbd.pid")] {
            let Some(server_pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            else {
                continue;
            };
            // Only kill a process whose command line names this directory.
            if process_alive(server_pid) && cmdline_contains(server_pid, &dir_str) {
                let kids = children_of(server_pid);
                send_signal(server_pid, libc::SIGKILL);
                wait_pid_gone(server_pid, Duration::from_secs(5));
                for k in kids {
                    if !wait_pid_gone(k, Duration::from_secs(5)) && cmdline_contains(k, "postgres")
                    {
                        send_signal(k, libc::SIGKILL);
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&path);
    }
}

/// Runs `f` while holding an exclusive lock on `lock_path`.
pub(crate) fn with_file_lock<T>(
    lock_path: &Path,
    f: impl FnOnce() -> Result<T, TestkitError>,
) -> Result<T, TestkitError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(io_err(format!("opening lock {}", lock_path.display())))?;
    // Shared by every user of the (sticky) testkit root.
    if file.metadata().is_ok_and(|m| m.uid() == effective_uid()) {
        let _ = file.set_permissions(fs::Permissions::from_mode(0o666));
    }
    file.lock()
        .map_err(io_err(format!("locking {}", lock_path.display())))?;
    let out = f();
    let _ = file.unlock();
    out
}

/// Copies a template directory with `cp -a` (keeps owners and modes).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<(), TestkitError> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .map_err(io_err("running cp -a"))?;
    if !out.status.success() {
        return Err(command_error(
            &format!("cp -a {} {}", from.display(), to.display()),
            &out,
        ));
    }
    Ok(())
}

pub(crate) fn command_error(command: &str, out: &Output) -> TestkitError {
    TestkitError::Command {
        command: command.to_owned(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd`, feeding `stdin` (if any), and returns stdout on success.
pub(crate) fn run_capture(
    cmd: &mut Command,
    description: &str,
    stdin: Option<&[u8]>,
) -> Result<String, TestkitError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("spawning {description}")))?;
    let out = match stdin {
        Some(input) => {
            let mut pipe = child.stdin.take();
            std::thread::scope(|s| {
                let writer = s.spawn(move || {
                    if let Some(p) = pipe.as_mut() {
                        // A broken pipe means the client stopped early; its
                        // exit status and stderr tell why.
                        let _ = p.write_all(input);
                    }
                    drop(pipe);
                });
                let out = child.wait_with_output();
                let _ = writer.join();
                out
            })
        }
        None => child.wait_with_output(),
    }
    .map_err(io_err(format!("waiting for {description}")))?;
    if !out.status.success() {
        return Err(command_error(description, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds `name` on PATH.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Locates a required program or fails naming the Debian package.
pub(crate) fn require_program(
    candidates: &[&str],
    name: &str,
    package: &'static str,
) -> Result<PathBuf, TestkitError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_in_path(name))
        .ok_or_else(|| TestkitError::MissingBinary {
            binary: name.to_owned(),
            package,
        })
}

/// Quotes `s` as an SQL string literal.
pub(crate) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Makes a database name from a prefix: lowercase `[a-z0-9_]`, unique per
/// process (pid + counter), at most 63 bytes.
pub(crate) fn unique_db_name(prefix: &str) -> String {
    let mut p: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if p.is_empty() || p.starts_with(|c: char| c.is_ascii_digit()) {
        p.insert_str(0, "db_");
    }
    let suffix = format!("_{}_{}", std::process::id(), next_id());
    p.truncate(63 - suffix.len());
    p + &suffix
}
