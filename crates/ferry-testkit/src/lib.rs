//! ferry-testkit: throwaway PostgreSQL and MariaDB servers for integration
//! tests, `make demo` and benchmarks (DESIGN.md §9).
//!
//! # Design
//!
//! - **Real servers from the installed binaries.** [`PgServer::start`] runs
//!   `initdb` + `postgres` (highest `/usr/lib/postgresql/*/bin`, else `PATH`;
//!   another major with [`PgOptions::version`], from Debian or from the
//!   npm builds `make setup` installs under [`pg_versions_dir`]);
//!   [`MariaDbServer::start`] runs `mariadb-install-db` + `mariadbd`. A missing
//!   binary is an error naming the Debian package to install; nothing is
//!   skipped silently.
//! - **One supervisor.** Both servers run under the same process supervisor
//!   (spawn with the output in `server.log`, wait until ready with a timeout,
//!   retry on a new free port, stop or crash by pid, stop on drop).
//! - **Synchronous.** Everything uses `std::process`; no async runtime needed.
//!   SQL goes through the `psql` / `mariadb` command-line clients.
//! - **One directory per server** under `/tmp/ferry-testkit/` (override with
//!   `FERRY_TESTKIT_ROOT`): data dir, Unix socket, server log, TLS files.
//!   The server listens on a free `127.0.0.1` port only. Port races between
//!   parallel test processes are handled by retrying the start with a new
//!   port when the server reports "address already in use".
//! - **Root or not.** PostgreSQL refuses to run as root, so when the tests run
//!   as root the servers run as the `postgres` / `mysql` OS users (uid/gid
//!   switched with `CommandExt`) and the directories are handed to them
//!   (mode 0700). As an ordinary user the servers simply run as that user.
//!   The clients always run as the caller and connect over TCP with the
//!   password [`ADMIN_PASSWORD`] of the superuser [`ADMIN_USER`].
//! - **Fast start.** The result of `initdb` / `mariadb-install-db` is cached
//!   once per server version and OS user in `/tmp/ferry-testkit/template-*`
//!   (built under a file lock, published with an atomic rename) and copied
//!   with `cp -a` for each server. By default the servers trade durability
//!   for speed (PostgreSQL `fsync=off`, `full_page_writes=off`; MariaDB
//!   `innodb_flush_log_at_trx_commit=2`, `sync_binlog=0`); benchmarks can ask
//!   for durable settings.
//! - **No leaks.** Dropping a server stops it and removes its directory, also
//!   while a test panics. If a test process is killed, Drop never runs: each
//!   directory therefore holds an `owner` marker (pid + process start time),
//!   and every `start` reaps directories whose owner is dead, killing only the
//!   server process whose pid file and command line point into that
//!   directory.
//! - **Isolation.** Each test starts its own servers and gets its own
//!   databases ([`PgServer::create_database`] makes names unique per process).

mod mariadb;
mod pg;
mod supervisor;
mod sys;

use std::path::{Path, PathBuf};

pub use mariadb::{MariaDbOptions, MariaDbServer};
pub use pg::{
    MATRIX_MAJORS, PgAuth, PgOptions, PgServer, PgTlsFiles, binary_major, pg_dump_for,
    pg_server_bin_dir, pg_versions_dir, tls_files,
};
pub use supervisor::free_port;
pub use sys::testkit_root;

/// Superuser created in every server (PostgreSQL superuser; MariaDB user with
/// `ALL PRIVILEGES ... WITH GRANT OPTION`).
pub const ADMIN_USER: &str = "ferry_admin";
/// Password of [`ADMIN_USER`].
pub const ADMIN_PASSWORD: &str = "ferry-secret-pw";

/// Everything that can go wrong while running test servers.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A required program is not installed.
    #[error("required program `{binary}` not found; install the Debian package `{package}`")]
    MissingBinary {
        /// Program name.
        binary: String,
        /// Debian package that provides it.
        package: &'static str,
    },
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A server did not come up.
    #[error("{server} failed to start: {reason}\n--- last lines of {log} ---\n{log_tail}")]
    Start {
        /// "PostgreSQL" or "MariaDB".
        server: &'static str,
        /// Why.
        reason: String,
        /// Server log path.
        log: PathBuf,
        /// Last lines of the server log.
        log_tail: String,
    },
    /// A command (client, initdb, openssl, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status})\n--- stderr ---\n{stderr}")]
    Command {
        /// The command, without secrets.
        command: String,
        /// Exit status.
        status: String,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },
    /// The shared datasets directory could not be found.
    #[error("datasets directory not found: {0}")]
    Datasets(String),
    /// Anything else about the environment.
    #[error("{0}")]
    Setup(String),
}

impl TestkitError {
    /// Standard error of a failed command, if this is one (handy for
    /// asserting on the reason a connection was refused).
    pub fn stderr(&self) -> Option<&str> {
        match self {
            TestkitError::Command { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

/// Locates the shared datasets (`/work/shared/datasets` in this project):
/// `$FERRY_DATASETS` if set, else the first `shared/datasets` found walking up
/// from this crate's manifest dir, `$CARGO_MANIFEST_DIR` or the current dir
/// (i.e. `<workspace>/../shared/datasets`).
pub fn datasets_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_DATASETS") {
        let p = PathBuf::from(p);
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(TestkitError::Datasets(format!(
                "FERRY_DATASETS={} is not a directory",
                p.display()
            )))
        };
    }
    let mut starts: Vec<PathBuf> = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    if let Some(d) = std::env::var_os("CARGO_MANIFEST_DIR") {
        starts.push(PathBuf::from(d));
    }
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    for start in &starts {
        for dir in start.ancestors() {
            let candidate = dir.join("shared").join("datasets");
            if candidate.is_dir() {
                return Ok(candidate);
            }
        }
    }
    Err(TestkitError::Datasets(format!(
        "no `shared/datasets` above any of {:?}; set FERRY_DATASETS",
        starts
    )))
}

/// A file inside [`datasets_dir`], which must exist.
pub fn dataset_file(relative: impl AsRef<Path>) -> Result<PathBuf> {
    let p = datasets_dir()?.join(relative.as_ref());
    if p.is_file() {
        Ok(p)
    } else {
        Err(TestkitError::Datasets(format!(
            "missing dataset file {}",
            p.display()
        )))
    }
}

/// Drops the lines of a SQL script that create, drop or switch databases
/// (`DROP DATABASE`, `CREATE DATABASE`, `\c`, `USE`), so the script loads
/// into whatever database the client is connected to.
pub(crate) fn strip_database_switches(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    for line in script.lines() {
        let t = line.trim_start().to_ascii_lowercase();
        let skip = t.starts_with("drop database")
            || t.starts_with("create database")
            || t.starts_with("\\c ")
            || t.starts_with("\\connect ")
            || t.starts_with("use ")
            || t.starts_with("use`");
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_package() {
        let err = sys::require_program(
            &["/nonexistent/pg_frobnicate"],
            "pg_frobnicate_xyz",
            "postgresql",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "required program `pg_frobnicate_xyz` not found; install the Debian package `postgresql`"
        );
    }

    #[test]
    fn database_switches_are_stripped() {
        let s = "DROP DATABASE IF EXISTS chinook;\nCREATE DATABASE chinook;\n\\c chinook;\nUSE `Chinook`;\nCREATE TABLE a (x int);\n";
        assert_eq!(strip_database_switches(s), "CREATE TABLE a (x int);\n");
    }

    #[test]
    fn unique_names() {
        let a = sys::unique_db_name("My Test");
        let b = sys::unique_db_name("My Test");
        assert_ne!(a, b);
        assert!(a.starts_with("my_test_"), "{a}");
        assert!(sys::unique_db_name(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn datasets_are_found() {
        assert!(dataset_file("chinook/Chinook_PostgreSql.sql").is_ok());
    }
}
