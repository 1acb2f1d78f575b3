//! Throwaway MariaDB servers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_core::schema::quote_ident_with;

use crate::supervisor::{OnDrop, ServerSpec, Supervisor};
use crate::sys::{self, InstanceDir, ServiceUser, io_err};
use crate::{ADMIN_PASSWORD, ADMIN_USER, Result};

const MARIADBD: &[&str] = &["/usr/sbin/mariadbd", "/usr/bin/mariadbd"];
const INSTALL_DB: &[&str] = &[
    "/usr/bin/mariadb-install-db",
    "/usr/sbin/mariadb-install-db",
];
const CLIENT: &[&str] = &["/usr/bin/mariadb"];
/// Applied to both `mariadb-install-db` and `mariadbd` (a smaller redo log
/// makes the template cheap to copy).
const INNODB_LOG_SIZE: &str = "--innodb-log-file-size=16M";

/// Options for [`MariaDbServer::start`] (builder style).
#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    settings: Vec<(String, String)>,
    log_bin: bool,
    server_id: Option<u32>,
    durable: bool,
    startup_timeout: Duration,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        Self {
            settings: Vec::new(),
            log_bin: true,
            server_id: None,
            durable: false,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

impl MariaDbOptions {
    /// Defaults: binlog on (ROW, FULL row image, GTID strict mode),
    /// `innodb_flush_log_at_trx_commit=2`, `sync_binlog=0`.
    pub fn new() -> Self {
        Self::default()
    }
    /// Any server option, passed as `--name=value` after the harness
    /// defaults (so it overrides them), e.g. `("binlog_format", "STATEMENT")`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }
    /// Runs without a binary log.
    pub fn no_log_bin(mut self) -> Self {
        self.log_bin = false;
        self
    }
    /// `server_id` (default: the port number, so it is nonzero and differs
    /// between servers).
    pub fn server_id(mut self, id: u32) -> Self {
        self.server_id = Some(id);
        self
    }
    /// `innodb_flush_log_at_trx_commit=1` and `sync_binlog=1` (for benchmarks).
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }
    /// How long to wait for the server to accept connections.
    pub fn startup_timeout(mut self, t: Duration) -> Self {
        self.startup_timeout = t;
        self
    }
}

/// A running throwaway MariaDB server. Dropping it kills it and deletes its
/// directory.
#[derive(Debug)]
pub struct MariaDbServer {
    dir: InstanceDir,
    user: Option<ServiceUser>,
    mariadbd: PathBuf,
    client: PathBuf,
    process: Supervisor,
    opts: MariaDbOptions,
}

/// The cached `mariadb-install-db` result for this server version and OS
/// user, building it on first use.
fn template_data_dir(mariadbd: &Path, user: Option<ServiceUser>) -> Result<PathBuf> {
    let version = sys::run_capture(
        Command::new(mariadbd).arg("--version"),
        "mariadbd --version",
        None,
    )?;
    let key: String = version
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("unknown")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let uid = user.map_or_else(sys::effective_uid, |u| u.uid);
    let root = sys::ensure_root()?;
    let name = format!("template-mariadb-{key}-u{uid}");
    let final_dir = root.join(&name);
    let done = |d: &Path| {
        d.join("data/mysql/user.frm").is_file() || d.join("data/mysql/global_priv.frm").is_file()
    };
    if done(&final_dir) {
        return Ok(final_dir.join("data"));
    }
    sys::with_file_lock(&root.join(format!("{name}.lock")), || {
        if done(&final_dir) {
            return Ok(final_dir.join("data"));
        }
        let install = sys::require_program(INSTALL_DB, "mariadb-install-db", "mariadb-server")?;
        let tmp = root.join(format!("{name}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_dir_all(&final_dir);
        fs::create_dir(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod template"))?;
        sys::chown_to(&tmp, user)?;
        let mut cmd = sys::service_command(&install, user, &tmp);
        cmd.args([
            "--no-defaults",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .arg(format!("--datadir={}", tmp.join("data").display()))
        .arg(INNODB_LOG_SIZE);
        sys::run_capture(&mut cmd, "mariadb-install-db", None)?;
        fs::rename(&tmp, &final_dir).map_err(io_err("publishing mariadb-install-db template"))?;
        Ok(final_dir.join("data"))
    })
}

impl MariaDbServer {
    /// Starts a new server in a fresh directory on a free loopback port and
    /// creates the user [`ADMIN_USER`] (all privileges, with grant option).
    pub fn start(opts: MariaDbOptions) -> Result<MariaDbServer> {
        sys::reap_stale_instances();
        let mariadbd = sys::require_program(MARIADBD, "mariadbd", "mariadb-server")?;
        let client = sys::require_program(CLIENT, "mariadb", "mariadb-client")?;
        let user = sys::service_user("mysql", "mariadb-server")?;
        let template = template_data_dir(&mariadbd, user)?;
        let dir = InstanceDir::create("mariadb", user)?;
        sys::copy_tree(&template, &dir.path.join("data"))?;
        let process = Supervisor::new(ServerSpec {
            server: "MariaDB",
            program: "mariadbd",
            log: dir.path.join("server.log"),
            startup_timeout: opts.startup_timeout,
            port_in_use: &["Address already in use", "Bind on TCP/IP port"],
            on_drop: OnDrop::Crash,
        });
        let mut server = MariaDbServer {
            dir,
            user,
            mariadbd,
            client,
            process,
            opts,
        };
        server.process.start(server.server_command(), ready)?;
        server.create_admin()?;
        Ok(server)
    }

    fn create_admin(&self) -> Result<()> {
        let pw = sys::sql_literal(ADMIN_PASSWORD);
        let sql = format!(
            "SET SESSION sql_log_bin = 0;\n\
             CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY {pw};\n\
             GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION;\n\
             CREATE USER '{ADMIN_USER}'@'localhost' IDENTIFIED BY {pw};\n\
             GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'localhost' WITH GRANT OPTION;\n"
        );
        let mut cmd = Command::new(&self.client);
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket_path().display()))
            .args(["-u", "root", "-N", "-B"]);
        sys::run_capture(
            &mut cmd,
            "mariadb (create admin user)",
            Some(sql.as_bytes()),
        )?;
        Ok(())
    }

    /// The mariadbd command line for `port`.
    fn server_command(&self) -> impl FnMut(u16) -> Command + use<> {
        let (mariadbd, user, dir) = (self.mariadbd.clone(), self.user, self.dir.path.clone());
        let opts = self.opts.clone();
        move |port: u16| {
            let mut cmd = sys::service_command(&mariadbd, user, &dir);
            cmd.args(server_args(&dir, &opts, port));
            cmd
        }
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The server's `server_id`.
    pub fn server_id(&self) -> u32 {
        server_id(&self.opts, self.port())
    }

    /// `mysql://ferry_admin:ferry-secret-pw@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "mysql://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{}/{db}",
            self.port()
        )
    }

    /// The directory holding everything of this server.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path.join("data")
    }

    /// The Unix socket path.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.dir.path)
    }

    /// Base name of the binary log files (`<dir>/binlog.000001`, ...).
    pub fn binlog_base(&self) -> PathBuf {
        self.dir.path.join("binlog")
    }

    /// Pid of mariadbd, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether mariadbd is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The whole server log (for diagnostics).
    pub fn log_contents(&self) -> String {
        self.process.log_contents()
    }

    /// A `mariadb` client command for [`ADMIN_USER`] over TCP in batch mode
    /// (`-N -B`, utf8mb4), password in `MYSQL_PWD`; add arguments and run it.
    pub fn client_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.args(["--no-defaults", "--protocol=tcp", "-h", "127.0.0.1"])
            .arg(format!("--port={}", self.port()))
            .args([
                "-u",
                ADMIN_USER,
                "-N",
                "-B",
                "--default-character-set=utf8mb4",
            ])
            .env("MYSQL_PWD", ADMIN_PASSWORD);
        if !db.is_empty() {
            cmd.arg(format!("--database={db}"));
        }
        cmd
    }

    /// Runs `sql` (statements separated by `;`) in `db` (`""` for none) and
    /// returns the tab-separated output without column names.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.client_command(db);
        sys::run_capture(
            &mut cmd,
            &format!("mariadb --database={db} (port {})", self.port()),
            Some(sql.as_bytes()),
        )
    }

    /// Runs a SQL file in `db`.
    pub fn sql_file(&self, db: &str, path: impl AsRef<Path>) -> Result<String> {
        let path = path.as_ref();
        let script = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
        let mut cmd = self.client_command(db);
        sys::run_capture(
            &mut cmd,
            &format!("mariadb --database={db} < {}", path.display()),
            Some(&script),
        )
    }

    /// Creates a database with a unique name (`prefix_<pid>_<n>`) and returns the name.
    pub fn create_database(&self, prefix: &str) -> Result<String> {
        let name = sys::unique_db_name(prefix);
        self.sql(
            "",
            &format!("CREATE DATABASE {}", quote_ident_with(&name, '`')),
        )?;
        Ok(name)
    }

    /// Creates `'name'@'%'` with `password` and grants it `grants` on `*.*`
    /// (a privilege list such as `"SELECT, REPLICATION SLAVE, REPLICATION CLIENT"`;
    /// empty for none).
    pub fn create_user(&self, name: &str, password: &str, grants: &str) -> Result<()> {
        let user = format!("{}@'%'", sys::sql_literal(name));
        let mut sql = format!(
            "CREATE USER {user} IDENTIFIED BY {};\n",
            sys::sql_literal(password)
        );
        if !grants.trim().is_empty() {
            sql.push_str(&format!("GRANT {grants} ON *.* TO {user};\n"));
        }
        self.sql("", &sql)?;
        Ok(())
    }

    /// Graceful shutdown (SIGTERM); waits for mariadbd to exit.
    pub fn stop(&mut self) -> Result<()> {
        self.process.stop(libc::SIGTERM, Duration::from_secs(60));
        Ok(())
    }

    /// Crash: SIGKILL mariadbd.
    pub fn kill(&mut self) {
        self.process.crash();
    }

    /// Starts the server again on the same data directory and port.
    pub fn start_again(&mut self) -> Result<()> {
        self.process.start_again(self.server_command(), ready)
    }

    /// [`MariaDbServer::stop`] then [`MariaDbServer::start_again`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Loads Chinook (`chinook/Chinook_MySql.sql`) into `db`, skipping the
    /// script's own `DROP/CREATE DATABASE Chinook` and `USE Chinook`.
    pub fn load_chinook(&self, db: &str) -> Result<()> {
        let path = crate::dataset_file("chinook/Chinook_MySql.sql")?;
        let script =
            fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
        self.sql(db, &crate::strip_database_switches(&script))?;
        Ok(())
    }
}

impl Drop for MariaDbServer {
    fn drop(&mut self) {
        self.process.end();
        self.dir.remove();
    }
}

/// Ready once mariadbd logs that it accepts connections.
fn ready(log: &str, _pid: u32) -> bool {
    log.contains("ready for connections")
}

/// `server_id`: the option, else the port (nonzero and distinct per server).
fn server_id(o: &MariaDbOptions, port: u16) -> u32 {
    o.server_id.unwrap_or(u32::from(port))
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("mysqld.sock")
}

/// The `mariadbd` arguments for a server in `d` listening on `port`.
fn server_args(d: &Path, o: &MariaDbOptions, port: u16) -> Vec<String> {
    let mut a = vec![
        "--no-defaults".to_owned(),
        format!("--datadir={}", d.join("data").display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--socket={}", socket_path(d).display()),
        format!("--pid-file={}", d.join("mariadbd.pid").display()),
        format!("--tmpdir={}", d.display()),
        "--skip-name-resolve".to_owned(),
        format!("--server-id={}", server_id(o, port)),
        "--max-connections=200".to_owned(),
        "--character-set-server=utf8mb4".to_owned(),
        "--collation-server=utf8mb4_general_ci".to_owned(),
        "--innodb-buffer-pool-size=64M".to_owned(),
        INNODB_LOG_SIZE.to_owned(),
        format!(
            "--innodb-flush-log-at-trx-commit={}",
            if o.durable { 1 } else { 2 }
        ),
        format!("--sync-binlog={}", if o.durable { 1 } else { 0 }),
        "--gtid-strict-mode=ON".to_owned(),
        "--binlog-format=ROW".to_owned(),
        "--binlog-row-image=FULL".to_owned(),
    ];
    if o.log_bin {
        a.push(format!("--log-bin={}", d.join("binlog").display()));
    }
    for (k, v) in &o.settings {
        a.push(format!("--{}={v}", k.replace('_', "-")));
    }
    a
}
