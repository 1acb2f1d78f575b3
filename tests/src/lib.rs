//! Shared pieces of ferry's end-to-end tests, demo and benchmarks: find the
//! `ferry` binary, run it with a config given through `FERRY_*` variables,
//! and prepare sample sources.
//!
//! The binary is the one cargo built next to the running test
//! (`target/<profile>/ferry`); `make test` builds it before the suite runs.

pub mod memory;
pub mod migration;
pub mod pgsync;
pub mod sqlite_app;
pub mod validation;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

/// Path of the `ferry` binary built in the same target directory.
pub fn ferry_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("ferry");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the ferry binary was not found next to {}; run `cargo build --bin ferry` first (make test and make demo do)",
        exe.display()
    )
}

/// A `ferry` invocation with its environment cleared of `FERRY_*` variables
/// from the caller, so only what the test sets applies.
pub fn ferry(source_url: &str, target_url: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(ferry_bin()?);
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_") && k != "FERRY_DATASETS" {
            cmd.env_remove(k);
        }
    }
    cmd.env("FERRY_SOURCE_URL", source_url)
        .env("FERRY_TARGET_URL", target_url)
        .env("FERRY_LOG", "warn");
    Ok(cmd)
}

/// Output of a finished command, as text, for assertions and messages.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn from_output(out: Output) -> Self {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout and stderr together, for failure messages.
    pub fn all(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Run to completion and capture.
pub fn run(cmd: &mut Command) -> anyhow::Result<Ran> {
    Ok(Ran::from_output(cmd.output().context("running ferry")?))
}

/// Copy an SQLite dataset file into `dir` (datasets are never modified) and
/// return the `sqlite:///…` URL of the copy.
pub fn sqlite_copy(relative: &str, dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let src = ferry_testkit::dataset_file(relative)?;
    let dst = dir.join(src.file_name().context("dataset file name")?);
    std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
    let url = format!("sqlite://{}", dst.display());
    Ok((dst, url))
}

/// A `ferry run` (or other long-running command) in the background, its
/// output going to a log file that failure messages include.
#[derive(Debug)]
pub struct Background {
    child: std::process::Child,
    log: PathBuf,
}

impl Background {
    /// Start `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Background> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdout(out).stderr(err);
        let child = cmd.spawn().context("starting ferry")?;
        Ok(Background {
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running (`None`) or its exit code.
    pub fn exited(&mut self) -> anyhow::Result<Option<Option<i32>>> {
        Ok(self.child.try_wait()?.map(|s| s.code()))
    }

    /// SIGKILL: a crash, no cleanup.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait()?;
        Ok(())
    }

    /// Send `signal` and wait up to `timeout` for the exit code.
    pub fn signal_and_wait(
        mut self,
        signal: i32,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Option<i32>> {
        let pid = i32::try_from(self.child.id())?;
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of our own child process, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!("kill({pid}, {signal}) failed");
        }
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "ferry did not exit within {timeout:?} after signal {signal}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Wait up to `timeout` for the process to end on its own and return
    /// how it ended (exit code or the signal that killed it).
    pub fn wait_status(
        mut self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Wait for the process to exit on its own; its exit code.
    pub fn wait(self, timeout: std::time::Duration) -> anyhow::Result<Option<i32>> {
        Ok(self.wait_status(timeout)?.code())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `done` every 200 ms until it holds; fails naming `what` (with
/// `ferry`'s log) when `ferry` exits first or `timeout` passes.
pub fn wait_until(
    ferry: &mut Background,
    what: &str,
    timeout: std::time::Duration,
    mut done: impl FnMut() -> bool,
) {
    let start = std::time::Instant::now();
    while !done() {
        if let Some(code) = ferry.exited().expect("ferry's status") {
            panic!("ferry exited with {code:?} before {what}:\n{}", ferry.log());
        }
        assert!(
            start.elapsed() < timeout,
            "{what} never happened:\n{}",
            ferry.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The text the target at `url` answers to `sql`: `None` for no row, NULL,
/// or while the target cannot answer yet (no such relation, no connection).
pub fn target_text(url: &str, sql: &str) -> Option<String> {
    pgsync::runtime().block_on(async {
        let c = pgsync::connect(url).await.ok()?;
        match c.query_opt(sql, &[]).await {
            Ok(row) => row?.get::<_, Option<String>>(0),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
            Err(e) if e.code().is_none() => None,
            Err(e) => panic!("{sql}: {:?}", e.as_db_error()),
        }
    })
}
