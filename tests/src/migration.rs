//! A PostgreSQL → PostgreSQL migration driven through the `ferry` CLI, for
//! the end-to-end tests: a pair of throwaway servers, the `ferry` command
//! with the settings every test uses, `ferry run` in the background, waits
//! on the pipeline, a cutover checked to the end, and exact comparisons.
//!
//! What differs between tests is an option: extra environment
//! ([`Migration::env`], [`Migration::without_env`], [`Migration::start_with`]),
//! arguments before the subcommand ([`Migration::arg`], e.g. `--config`),
//! how long waits may take ([`Migration::timeout`]) and how often they poll
//! ([`Migration::poll`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::{PgOptions, PgServer};
use tokio_postgres::Client;

use crate::{Background, Ran, ferry, pgsync, run};

/// How long a wait may take unless [`Migration::timeout`] says otherwise.
pub const LONG: Duration = Duration::from_secs(180);

/// A free loopback port (for the control API), below the ephemeral range
/// (see [`ferry_testkit::free_port`]): a `ferry run` restarted on it after
/// a kill does not find it taken by an outgoing connection.
pub fn free_port() -> u16 {
    ferry_testkit::free_port().expect("finding a free port")
}

/// The target every test starts from: `wal_level = replica`.
pub fn target_options() -> PgOptions {
    PgOptions::new().wal_level("replica")
}

/// The URL of `db` on `server` as `user`.
pub fn role_url(server: &PgServer, user: &str, password: &str, db: &str) -> String {
    format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{db}",
        server.port()
    )
}

/// A source database owned by a role that is not a superuser, as managed
/// services (RDS/Aurora) give: `REPLICATION`, owner of the database (and of
/// the tables it creates there) and member of `pg_signal_backend`, which
/// `--fence` needs.
#[derive(Debug)]
pub struct OwnerSource {
    pub server: PgServer,
    /// The database, `src`.
    pub db: String,
    /// The role's URL of the database.
    pub url: String,
    /// The role's libpq conninfo of the database (for `psql_conninfo`).
    pub conninfo: String,
}

impl OwnerSource {
    /// A server started with `opts`, the role `role` and its database.
    pub fn start(opts: PgOptions, role: &str, password: &str) -> OwnerSource {
        let server = PgServer::start(opts).expect("source");
        server
            .create_role(role, password, "LOGIN REPLICATION NOSUPERUSER")
            .expect("source role");
        server
            .psql("postgres", &format!("GRANT pg_signal_backend TO {role}"))
            .expect("granting pg_signal_backend");
        let db = server.create_database("src").expect("source database");
        server
            .psql("postgres", &format!("ALTER DATABASE {db} OWNER TO {role}"))
            .expect("database owner");
        OwnerSource {
            url: role_url(&server, role, password, &db),
            conninfo: format!(
                "host=127.0.0.1 port={} user={role} password={password} dbname={db}",
                server.port()
            ),
            server,
            db,
        }
    }

    /// [`Migration::with_source`] from this source, as its role.
    pub fn migration(self, target_opts: PgOptions) -> Migration {
        Migration::with_source(self.server, self.db, self.url, target_opts)
    }
}

/// A source and a target server, the URLs ferry uses for them, the control
/// address of `ferry run` and a directory for logs (and config files).
#[derive(Debug)]
pub struct Migration {
    pub source: PgServer,
    pub target: PgServer,
    /// Database on the source.
    pub source_db: String,
    /// Database on the target.
    pub target_db: String,
    pub source_url: String,
    pub target_url: String,
    /// `FERRY_CONTROL_LISTEN` of every command.
    pub control: String,
    pub logs: tempfile::TempDir,
    env: BTreeMap<String, String>,
    args: Vec<OsString>,
    timeout: Duration,
    poll: Duration,
}

impl Migration {
    /// A source started with `source_opts` whose database `src` holds
    /// `schema_sql`, and an empty target database `dst` started with
    /// `target_opts`.
    pub fn new(source_opts: PgOptions, target_opts: PgOptions, schema_sql: &str) -> Migration {
        let source = PgServer::start(source_opts).expect("source");
        let sdb = source.create_database("src").expect("source database");
        source.psql(&sdb, schema_sql).expect("source schema");
        let url = source.url(&sdb);
        Migration::with_source(source, sdb, url, target_opts)
    }

    /// A source holding `pgbench -i -s 1` (`pgbench_history` with REPLICA
    /// IDENTITY FULL, so that its updates and deletes can be carried) and
    /// an empty target started with `target_opts`; the directory of the
    /// server binaries (pgbench among them).
    pub fn pgbench(target_opts: PgOptions) -> (Migration, std::path::PathBuf) {
        let m = Migration::new(PgOptions::new(), target_opts, "");
        let bin = m.source.bin_dir().to_owned();
        let init = Command::new(bin.join("pgbench"))
            .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p"])
            .arg(m.source.port().to_string())
            .args(["-U", ferry_testkit::ADMIN_USER])
            .arg(&m.source_db)
            .env("PGPASSWORD", ferry_testkit::ADMIN_PASSWORD)
            .output()
            .expect("pgbench runs");
        assert!(
            init.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        m.source
            .psql(
                &m.source_db,
                "ALTER TABLE pgbench_history REPLICA IDENTITY FULL",
            )
            .expect("replica identity");
        (m, bin)
    }

    /// A source prepared by the test (`source_url` may name another role
    /// than the superuser) and an empty target database `dst` started with
    /// `target_opts`.
    pub fn with_source(
        source: PgServer,
        source_db: String,
        source_url: String,
        target_opts: PgOptions,
    ) -> Migration {
        let target = PgServer::start(target_opts).expect("target");
        let tdb = target.create_database("dst").expect("target database");
        let control = format!("127.0.0.1:{}", free_port());
        let env = [
            ("FERRY_SOURCE_SSLMODE", "disable"),
            ("FERRY_TARGET_SSLMODE", "disable"),
            ("FERRY_CONTROL_LISTEN", control.as_str()),
            ("FERRY_APPLY_BATCH_MS", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Migration {
            target_url: target.url(&tdb),
            source,
            target,
            source_db,
            target_db: tdb,
            source_url,
            control,
            logs: tempfile::tempdir().expect("log directory"),
            env,
            args: Vec::new(),
            timeout: LONG,
            poll: Duration::from_millis(200),
        }
    }

    /// Set `key` for every command (replacing a default).
    pub fn env(mut self, key: &str, value: &str) -> Migration {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Leave `key` out of every command (a default the test does not want).
    pub fn without_env(mut self, key: &str) -> Migration {
        self.env.remove(key);
        self
    }

    /// An argument of every command, before the subcommand (`--config`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Migration {
        self.args.push(arg.into());
        self
    }

    /// How long each wait may take (default [`LONG`]).
    pub fn timeout(mut self, timeout: Duration) -> Migration {
        self.timeout = timeout;
        self
    }

    /// How often waits look again (default 200 ms).
    pub fn poll(mut self, poll: Duration) -> Migration {
        self.poll = poll;
        self
    }

    /// The wait bound in force.
    pub fn long(&self) -> Duration {
        self.timeout
    }

    /// A `ferry` command with the common settings; the caller adds the
    /// subcommand.
    pub fn cmd(&self) -> Command {
        let mut cmd = ferry(&self.source_url, &self.target_url).expect("ferry command");
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `ferry <args>` to completion.
    pub fn ferry(&self, args: &[&str]) -> Ran {
        run(self.cmd().args(args)).expect("running ferry")
    }

    /// `ferry run` at `FERRY_LOG=info`, logging to `<name>.log`.
    pub fn start(&self, name: &str) -> Background {
        self.start_with(name, &[])
    }

    /// [`Migration::start`] with `env` set for this run only.
    pub fn start_with(&self, name: &str, env: &[(&str, &str)]) -> Background {
        let mut cmd = self.cmd();
        cmd.env("FERRY_LOG", "info").arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Background::spawn(cmd, &self.logs.path().join(format!("{name}.log"))).expect("ferry run")
    }

    /// `ferry status --json`, which must succeed.
    pub fn status(&self) -> serde_json::Value {
        let ran = self.ferry(&["status", "--json"]);
        assert_eq!(ran.code, Some(0), "{}", ran.all());
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout))
    }

    /// `GET <path>` on the control API of the running `ferry`: the whole
    /// HTTP response, status line first.
    pub fn control_get(&self, path: &str) -> String {
        control_get(&self.control, path)
    }

    /// `POST <path>` with a JSON `body` on the control API of the running
    /// `ferry`: the whole HTTP response, status line first.
    pub fn control_post(&self, path: &str, body: &str) -> String {
        let addr = &self.control;
        let mut s = std::net::TcpStream::connect(addr).expect("connecting to the control API");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("sending the request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reading the response");
        out
    }

    /// Poll `done` until it holds; fail if `ferry` exits first or the wait
    /// bound passes (`what` says what never happened).
    pub fn wait_until(&self, ferry: &mut Background, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if let Some(code) = ferry.exited().expect("ferry process") {
                panic!("ferry exited with {code:?}:\n{}", ferry.log());
            }
            if done() {
                return;
            }
            assert!(start.elapsed() < self.timeout, "{what}:\n{}", ferry.log());
            std::thread::sleep(self.poll);
        }
    }

    /// Wait until the live status of the running `ferry` says `phase`.
    pub fn wait_phase(&self, ferry: &mut Background, phase: &str) {
        self.wait_until(ferry, &format!("never reached {phase}"), || {
            let ran = self.ferry(&["status", "--json"]);
            if ran.code != Some(0) {
                return false;
            }
            let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
            v["live"] == true && v["phase"] == phase
        });
    }

    /// Wait until the state in the target (`ferry.pipeline`) says `phase`.
    pub fn wait_state_phase(&self, ferry: &mut Background, phase: &str) {
        self.wait_until(ferry, &format!("never reached {phase}"), || {
            self.pipeline_phase().as_deref() == Some(phase)
        });
    }

    /// Wait until the target holds an applied position and its state says
    /// `stream` or `catchup`.
    pub fn wait_streaming(&self, ferry: &mut Background) {
        self.wait_until(ferry, "ferry never reached streaming", || {
            let applied = self.target_query(async |dst| pgsync::applied_lsn(dst).await.ok()?);
            applied.is_some()
                && matches!(self.pipeline_phase().as_deref(), Some("stream" | "catchup"))
        });
    }

    /// Wait until the log of the running `ferry` contains `needle`.
    pub fn wait_log(&self, ferry: &mut Background, needle: &str) {
        let start = Instant::now();
        while !ferry.log().contains(needle) {
            if let Some(code) = ferry.exited().expect("ferry process") {
                panic!("ferry exited with {code:?}:\n{}", ferry.log());
            }
            assert!(
                start.elapsed() < self.timeout,
                "log never said {needle:?}:\n{}",
                ferry.log()
            );
            std::thread::sleep(self.poll);
        }
    }

    /// The phase recorded in the target's `ferry.pipeline`, if any yet.
    pub fn pipeline_phase(&self) -> Option<String> {
        self.target_query(async |dst| {
            let row = dst
                .query_opt("SELECT phase FROM ferry.pipeline", &[])
                .await
                .ok()??;
            Some(row.get::<_, String>(0))
        })
    }

    /// The single `int8` the target answers to `sql`; `None` when it cannot
    /// answer (yet).
    pub fn target_i64(&self, sql: &str) -> Option<i64> {
        self.target_query(async |dst| {
            let row = dst.query_opt(sql, &[]).await.ok()??;
            Some(row.get::<_, i64>(0))
        })
    }

    /// Wait until the running load committed its first chunk
    /// (`ferry.chunks`), looking every 10 ms whatever [`Migration::poll`]
    /// says, so that the test can still kill the load while it runs.
    pub fn wait_first_chunk(&self, ferry: &mut Background) {
        // One session polled every 10 ms (not a new connection per poll),
        // so the caller's kill lands while the load is still going.
        let rt = pgsync::runtime();
        let mut dst = None;
        let start = Instant::now();
        loop {
            if dst.is_none() {
                dst = rt.block_on(pgsync::connect(&self.target_url)).ok();
            }
            let polled = dst
                .as_ref()
                .map(|c| rt.block_on(c.query_opt("SELECT count(*) FROM ferry.chunks", &[])));
            let done = match polled {
                Some(Ok(row)) => row.map(|r| r.get::<_, i64>(0)),
                // Not there yet (state schema), or the session broke:
                // poll again on a new one.
                Some(Err(_)) => {
                    dst = None;
                    None
                }
                None => None,
            };
            if done.unwrap_or(0) >= 1 {
                return;
            }
            if let Some(code) = ferry.exited().expect("ferry process") {
                panic!(
                    "ferry exited during the load with {code:?}:\n{}",
                    ferry.log()
                );
            }
            assert!(
                start.elapsed() < self.timeout,
                "no chunk completed:\n{}",
                ferry.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Run `f` on a fresh session to the target; `None` when it cannot
    /// connect or `f` says so.
    pub fn target_query<T>(&self, f: impl AsyncFnOnce(&Client) -> Option<T>) -> Option<T> {
        pgsync::runtime().block_on(async {
            let dst = pgsync::connect(&self.target_url).await.ok()?;
            f(&dst).await
        })
    }

    /// Wait until the target's checkpoint is past everything the source
    /// committed so far (its WAL insert position, which also covers
    /// commits with `synchronous_commit = off`).
    pub fn wait_caught_up(&self) {
        pgsync::runtime().block_on(async {
            let src = pgsync::connect(&self.source_url).await.expect("source");
            let lsn = pgsync::insert_lsn(&src).await.expect("source position");
            pgsync::wait_applied(&self.target_url, lsn, self.timeout)
                .await
                .expect("caught up");
        });
    }

    /// A fenced cutover (`--fence --max-lag <max_lag> --timeout 120s`); see
    /// [`Migration::cutover`].
    pub fn fenced_cutover(&self, ferry: Background, max_lag: &str) -> Ran {
        self.cutover(
            ferry,
            &["--fence", "--max-lag", max_lag, "--timeout", "120s"],
        )
    }

    /// `ferry cutover <args>` must exit 0 saying `cutover: done`, and the
    /// running `ferry` must then exit 0 within 60 s. Returns the cutover's
    /// output. The request waits for the run's control API first: the state
    /// in the target may already say `stream` (from an earlier run) while a
    /// restarted `ferry run` is still starting up.
    pub fn cutover(&self, mut ferry: Background, args: &[&str]) -> Ran {
        self.wait_until(
            &mut ferry,
            "ferry run never answered on its control API",
            || {
                let ran = self.ferry(&["status", "--json"]);
                let v: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap_or_default();
                ran.code == Some(0) && v["live"] == true
            },
        );
        let mut cut = self.cmd();
        cut.arg("cutover").args(args);
        let cut = run(&mut cut).expect("running ferry cutover");
        assert_eq!(cut.code, Some(0), "{}\n{}", cut.all(), ferry.log());
        assert!(cut.stdout.contains("cutover: done"), "{}", cut.all());
        let log = ferry.log();
        let code = ferry.wait(Duration::from_secs(60)).expect("ferry run");
        assert_eq!(code, Some(0), "ferry run exits 0 after cutover:\n{log}");
        cut
    }

    /// Compare `tables` (SQL names) exactly between source and target now.
    pub fn compare(&self, tables: &[&str]) {
        self.compare_in_sessions("", tables);
    }

    /// [`Migration::compare`] on sessions that first run `session_sql`
    /// (settings that fix the text form of values).
    pub fn compare_in_sessions(&self, session_sql: &str, tables: &[&str]) {
        pgsync::runtime().block_on(async {
            let open = async |url: &str| {
                let c = pgsync::connect(url).await.expect("connecting");
                if !session_sql.is_empty() {
                    c.batch_execute(session_sql)
                        .await
                        .expect("session settings");
                }
                c
            };
            let src = open(&self.source_url).await;
            let dst = open(&self.target_url).await;
            pgsync::compare_tables(&src, &dst, tables)
                .await
                .expect("source and target are identical");
        });
    }

    /// Wait until the target caught up with the source, then compare
    /// `tables` exactly (writes must have stopped).
    pub fn compare_caught_up(&self, tables: &[&str]) {
        self.wait_caught_up();
        self.compare(tables);
    }
}

/// `GET path` from the control API at `addr`: the whole HTTP response.
pub fn control_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the control API");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading the response");
    out
}
