//! Source DDL via `pg_dump`, split for the applier (PG→PG schema phase).
//!
//! Consumes the source endpoint and the schemas holding the selected tables;
//! emits the `pre-data` SQL (types, functions, sequences, tables, views;
//! applied before the load) and the `post-data` SQL (indexes, constraints,
//! triggers, rules; applied after it). [`split_post_data`] separates
//! post-data into statements the applier can run in parallel (index and
//! constraint builds) and those that must follow in dump order (foreign
//! keys, partition index attachment, triggers, …).
//!
//! Choices (documented for operators):
//! - One plain `pg_dump --schema-only` (one source session, the catalog
//!   read once), split into the two sections where its first post-data
//!   object starts ([`Via::Plain`], [`split_sections`]); where that split
//!   is not certain (an object type it does not know), one `pg_dump
//!   --format=custom` split by the `pg_restore` beside it ([`Via::Archive`]),
//!   or two `pg_dump --section` runs when there is no `pg_restore` there
//!   ([`Via::Sections`]). All give the same SQL text.
//! - Whole schemas are dumped (`-n` per schema of a selected table, `-N` the
//!   ferry state schema): `-t` would leave out the types, functions and
//!   sequences the tables need. Unselected tables of those schemas are
//!   therefore created on the target too (empty). Extensions are not dumped
//!   with `-n`: create them on the target first.
//! - `--snapshot=<load snapshot>` on the first run: the schema is the one
//!   the loaded rows fit (see [`crate::schema_hold`] for why the source's
//!   schema is also held still while the dump runs).
//! - `--no-owner --no-privileges --no-publications --no-subscriptions
//!   --no-tablespaces`: the target's own roles and storage apply.
//! - Materialized views are created `WITH NO DATA` (their data is not part of
//!   a schema-only dump); refresh them on the target after the load.
//! - The password travels in `PGPASSWORD`, never on the command line;
//!   `PGSSLMODE` / `PGSSLROOTCERT` come from the endpoint.
//! - `pg_dump` must be at least the server's major version. It is found via
//!   `FERRY_PG_DUMP`, else the highest `/usr/lib/postgresql/*/bin/pg_dump`,
//!   else `PATH`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferry_core::Error;
use ferry_core::config::Endpoint;
use ferry_core::schema::quote_ident;
use tokio_postgres::Client;
use tokio_postgres::config::Host;

use crate::connect::{pg_config, query_error, server_version_num};

/// The two schema sections of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaDump {
    pub pre_data: String,
    pub post_data: String,
    /// `pg_dump --version` of the binary used.
    pub pg_dump_version: String,
}

/// A `pg_dump` binary and its major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgDump {
    pub path: PathBuf,
    pub major: u32,
    /// Full `--version` line.
    pub version: String,
}

/// Locate `pg_dump` (see the module doc) without running it.
pub fn find_pg_dump() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("FERRY_PG_DUMP") {
        return Ok(PathBuf::from(p));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let Some(v) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let bin = e.path().join("bin").join("pg_dump");
            if bin.is_file() && best.as_ref().is_none_or(|(bv, _)| v > *bv) {
                best = Some((v, bin));
            }
        }
    }
    if let Some((_, p)) = best {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("pg_dump"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            Error::operator(
                "pg_dump not found (FERRY_PG_DUMP unset, nothing in /usr/lib/postgresql/*/bin or PATH)",
                "install postgresql-client matching the source server version, or set FERRY_PG_DUMP",
            )
        })
}

/// Run `pg_dump --version` and parse the major version. The answer is
/// kept for the same file (path, size and modification time): the checks
/// of `ferry plan` and the schema dump of the same start ask once (a
/// process of the PostgreSQL client tools costs milliseconds of CPU to
/// start: the two `pg_restore` runs [`Via::Plain`] replaced took 14 ms).
pub async fn pg_dump_version(path: &Path) -> Result<PgDump, Error> {
    type File = (u64, std::time::SystemTime);
    static KNOWN: std::sync::Mutex<Option<HashMap<PathBuf, (File, PgDump)>>> =
        std::sync::Mutex::new(None);
    let file = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.len(), m.modified().ok()?)));
    if let Some(file) = file
        && let Ok(known) = KNOWN.lock()
        && let Some((at, dump)) = known.as_ref().and_then(|k| k.get(path))
        && *at == file
    {
        return Ok(dump.clone());
    }
    let dump = run_pg_dump_version(path).await?;
    if let Some(file) = file
        && let Ok(mut known) = KNOWN.lock()
    {
        known
            .get_or_insert_with(HashMap::new)
            .insert(path.to_owned(), (file, dump.clone()));
    }
    Ok(dump)
}

async fn run_pg_dump_version(path: &Path) -> Result<PgDump, Error> {
    let out = tokio::process::Command::new(path)
        .arg("--version")
        .output()
        .await
        .map_err(|e| {
            Error::operator(
                format!("cannot run {} --version: {e}", path.display()),
                "install postgresql-client or point FERRY_PG_DUMP at pg_dump",
            )
        })?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major = parse_major(&version).ok_or_else(|| {
        Error::operator(
            format!(
                "cannot read the version of {} ('{version}')",
                path.display()
            ),
            "point FERRY_PG_DUMP at a PostgreSQL pg_dump",
        )
    })?;
    Ok(PgDump {
        path: path.to_owned(),
        major,
        version,
    })
}

/// Major version from `pg_dump (PostgreSQL) 15.20 (Debian …)` → 15;
/// `9.6.24` → 9.
pub fn parse_major(version_line: &str) -> Option<u32> {
    let rest = version_line
        .split_once(')')
        .map_or(version_line, |(_, r)| r);
    let token = rest
        .split_whitespace()
        .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = token.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `pg_dump` must be at least the server's major version.
pub fn check_version(dump: &PgDump, server_major: u32) -> Result<(), Error> {
    if dump.major >= server_major {
        return Ok(());
    }
    Err(Error::operator(
        format!(
            "{} is version {} but the source server is PostgreSQL {server_major}; pg_dump cannot dump a newer server",
            dump.path.display(),
            dump.major
        ),
        format!(
            "install postgresql-client-{server_major} (or newer) or set FERRY_PG_DUMP to a pg_dump of version {server_major} or later"
        ),
    ))
}

/// Dump the pre-data and post-data sections of `schemas` from `endpoint`,
/// as the exported `snapshot` sees them (the load snapshot: the target
/// schema is the one its rows fit, later changes come through the stream).
/// `client` is a connection to the same server (for its version).
pub async fn dump_schema(
    endpoint: &Endpoint,
    client: &Client,
    schemas: &[String],
    state_schema: &str,
    snapshot: Option<&str>,
) -> Result<SchemaDump, Error> {
    if schemas.is_empty() {
        return Err(Error::operator(
            "no schema to dump: no table is selected",
            "check tables.include / tables.exclude",
        ));
    }
    let path = find_pg_dump()?;
    let via = Via::Plain(pg_restore_beside(&path));
    dump_schema_via(
        endpoint,
        client,
        schemas,
        state_schema,
        snapshot,
        &path,
        via,
    )
    .await
}

/// How the two sections are read from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// One plain `pg_dump --schema-only`, split into the two sections where
    /// its first post-data object starts ([`split_sections`]): no process
    /// besides `pg_dump`. The default. A script whose split is not certain
    /// (an object type [`split_sections`] does not know, or a pre-data
    /// object after a post-data one) is dumped again [`Via::Archive`] with
    /// the `pg_restore` given here, else [`Via::Sections`]. Measured on
    /// Pagila (PostgreSQL 15, eight alternating rounds, `pg_dump` 18): 85
    /// ms and 23 ms of client CPU against 100 ms and 34 ms for
    /// [`Via::Archive`], whose two `pg_restore` runs took 11 ms (14 ms of
    /// CPU) after `pg_dump`; the same SQL text.
    Plain(Option<PathBuf>),
    /// One `pg_dump --format=custom --schema-only`, split into the two
    /// sections by the `pg_restore` at this path, locally, without a
    /// connection. The default wherever `pg_restore` sits beside
    /// `pg_dump`: one source session reads the catalog once. Measured on
    /// Pagila (PostgreSQL 15, 12 alternating rounds): 50 ms of source
    /// server CPU against 100 ms for two `pg_dump --section` runs, the
    /// same SQL text.
    Archive(PathBuf),
    /// Two `pg_dump --section` runs at once, each its own session.
    Sections,
}

/// `pg_restore` in the directory of `pg_dump` (the same installation, so
/// the same archive format), if there is one.
pub fn pg_restore_beside(pg_dump: &Path) -> Option<PathBuf> {
    let restore = pg_dump.parent()?.join("pg_restore");
    restore.is_file().then_some(restore)
}

/// [`dump_schema`] with the `pg_dump` at `path`, read [`Via`] `via`.
pub async fn dump_schema_via(
    endpoint: &Endpoint,
    client: &Client,
    schemas: &[String],
    state_schema: &str,
    snapshot: Option<&str>,
    path: &Path,
    via: Via,
) -> Result<SchemaDump, Error> {
    let run = PgDumpRun {
        pg_dump: path,
        endpoint,
        schemas,
        state_schema,
        snapshot,
    };
    let archive = async |restore: &Path| {
        let archive = run.output(Dump::Archive).await?;
        let (pre, post) = tokio::join!(
            run_pg_restore(restore, &archive, "pre-data"),
            run_pg_restore(restore, &archive, "post-data"),
        );
        Ok::<_, Error>((pre?, post?))
    };
    let sections = async {
        match &via {
            Via::Plain(restore) => {
                let script = text(run.output(Dump::Plain).await?, "pg_dump --schema-only")?;
                if let Some(split) = split_sections(&script) {
                    return Ok(split);
                }
                tracing::debug!(
                    "the plain schema dump has an object this split does not place; dumping again split by pg_restore"
                );
                match restore {
                    Some(restore) => archive(restore).await,
                    None => run.sections().await,
                }
            }
            Via::Archive(restore) => archive(restore).await,
            // Both sections at once: each pg_dump is its own session (in
            // the same exported snapshot when there is one), and most of
            // its time is spent waiting on the server's catalog queries.
            Via::Sections => run.sections().await,
        }
    };
    // The version check runs beside the dump and its verdict comes first:
    // a pg_dump older than the server fails with the fix named, not with
    // pg_dump's own message.
    let (dump, server, sections) =
        tokio::join!(pg_dump_version(path), server_version_num(client), sections,);
    let dump = dump?;
    check_version(&dump, server? / 10_000)?;
    let (pre_data, post_data) = sections?;
    let post_data = strip_meta_commands(&post_data);
    let pre_data = tidy_pre_data(&pre_data);
    Ok(SchemaDump {
        pre_data,
        post_data,
        pg_dump_version: dump.version,
    })
}

/// What one `pg_dump` run writes: the whole schema as a plain script, a
/// plain-text section, or the whole schema as a custom-format archive.
#[derive(Debug, Clone, Copy)]
enum Dump {
    Plain,
    Section(&'static str),
    Archive,
}

impl Dump {
    fn what(self) -> String {
        match self {
            Dump::Plain => "pg_dump --schema-only".to_owned(),
            Dump::Section(s) => format!("pg_dump --section={s}"),
            Dump::Archive => "pg_dump --format=custom --schema-only".to_owned(),
        }
    }
}

/// Object types (`Type:` of a plain script's entry headers) `pg_dump`
/// puts in post-data, in any version from 10 on. (`STATISTICS DATA` of
/// `pg_dump` 18 is not here: it is data or post-data by the relation's
/// kind, and never in a `--schema-only` dump.)
const POST_DATA_TYPES: &[&str] = &[
    "INDEX",
    "INDEX ATTACH",
    "STATISTICS",
    "CONSTRAINT",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "TRIGGER",
    "EVENT TRIGGER",
    "RULE",
    "POLICY",
    "ROW SECURITY",
    "DEFAULT ACL",
    "PUBLICATION",
    "PUBLICATION TABLE",
    "PUBLICATION TABLES IN SCHEMA",
    "SUBSCRIPTION",
    "SUBSCRIPTION TABLE",
    "MATERIALIZED VIEW DATA",
];

/// Object types `pg_dump` puts in pre-data.
const PRE_DATA_TYPES: &[&str] = &[
    "SCHEMA",
    "EXTENSION",
    "TYPE",
    "SHELL TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "OPERATOR",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "COLLATION",
    "CONVERSION",
    "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH CONFIGURATION",
    "CAST",
    "TRANSFORM",
    "ACCESS METHOD",
    "PROCEDURAL LANGUAGE",
    "TABLE",
    "TABLE ATTACH",
    "VIEW",
    "MATERIALIZED VIEW",
    "SEQUENCE",
    "SEQUENCE OWNED BY",
    "DEFAULT",
    "FOREIGN TABLE",
    "FOREIGN DATA WRAPPER",
    "SERVER",
    "USER MAPPING",
];

/// Object types of no section of their own: `pg_restore` puts each where
/// the object before it is (they follow the object they belong to).
const FOLLOWING_TYPES: &[&str] = &["COMMENT", "SECURITY LABEL", "ACL"];

/// A plain `pg_dump --schema-only` script as the two sections `pg_restore
/// --section` prints of the same dump as an archive: pre-data up to the
/// first post-data object (with the script's closing lines), post-data from
/// it (after the script's preamble). `None` when that split is not certain:
/// an object type outside [`PRE_DATA_TYPES`], [`POST_DATA_TYPES`] and
/// [`FOLLOWING_TYPES`], or a pre-data object after a post-data one. Pure.
pub fn split_sections(script: &str) -> Option<(String, String)> {
    // (offset of the entry's opening `--` line, its type)
    let mut entries: Vec<(usize, &str)> = Vec::new();
    let mut offset = 0;
    let mut previous = "";
    let mut closing = script.len();
    for line in script.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let text = line.trim_end_matches('\n');
        if let Some(header) = text
            .strip_prefix("-- Name: ")
            .or_else(|| text.strip_prefix("-- Data for Name: "))
        {
            // `Name: …; Type: …; Schema: …; Owner: …` after a `--` line, as
            // pg_dump writes every header; anything else is not certain.
            let (_, rest) = header.split_once("; Type: ")?;
            let (kind, rest) = rest.split_once("; Schema: ")?;
            if previous != "--" || !rest.contains("; Owner: ") {
                return None;
            }
            entries.push((start - "--\n".len(), kind.trim()));
        } else if text == "-- PostgreSQL database dump complete" && previous == "--" {
            closing = start - "--\n".len();
        }
        previous = text;
    }
    let first = entries.first().map_or(closing, |(at, _)| *at);
    let mut boundary = None;
    for (at, kind) in &entries {
        let post = if POST_DATA_TYPES.contains(kind) {
            true
        } else if PRE_DATA_TYPES.contains(kind) {
            false
        } else if FOLLOWING_TYPES.contains(kind) {
            continue;
        } else {
            return None;
        };
        match (post, boundary) {
            (true, None) => boundary = Some(*at),
            (false, Some(_)) => return None,
            _ => {}
        }
    }
    let boundary = boundary.unwrap_or(closing);
    let pre = format!("{}{}", &script[..boundary], &script[closing..]);
    let post = format!("{}{}", &script[..first], &script[boundary..]);
    Some((pre, post))
}

/// The arguments every `pg_dump` run of one schema dump shares.
struct PgDumpRun<'a> {
    pg_dump: &'a Path,
    endpoint: &'a Endpoint,
    schemas: &'a [String],
    state_schema: &'a str,
    snapshot: Option<&'a str>,
}

/// `pg_dump`'s output as text, or an error naming `what`.
fn text(out: Vec<u8>, what: &str) -> Result<String, Error> {
    String::from_utf8(out).map_err(|_| {
        Error::operator(
            format!("{what} printed non-UTF-8 text"),
            "set the source database encoding to UTF8 or report this as a bug",
        )
    })
}

/// One `pg_restore --section=… -f -` of a custom-format `archive`: the
/// section's SQL, as `pg_dump --section` prints it. Runs locally; the
/// archive goes in on standard input.
async fn run_pg_restore(pg_restore: &Path, archive: &[u8], section: &str) -> Result<String, Error> {
    use tokio::io::AsyncWriteExt;
    let what = format!("pg_restore --section={section}");
    let mut child = tokio::process::Command::new(pg_restore)
        .args(["--no-owner", "--no-privileges", "--no-publications"])
        .args(["--no-subscriptions", "--no-tablespaces"])
        .arg(format!("--section={section}"))
        // Not `--file -`: `pg_restore` before 12 reads that as a file name.
        .arg("--file=/dev/stdout")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::operator(
                format!("cannot run {}: {e}", pg_restore.display()),
                "check that pg_restore (beside pg_dump) is installed and executable",
            )
        })?;
    let Some(mut stdin) = child.stdin.take() else {
        return Err(Error::operator(
            format!("{what}: no pipe to its standard input"),
            "report this as a ferry bug",
        ));
    };
    // Written while the output is read: either may fill its pipe first.
    let write = async move {
        let written = stdin.write_all(archive).await;
        drop(stdin);
        written
    };
    let (written, out) = tokio::join!(write, child.wait_with_output());
    let out = out.map_err(|e| {
        Error::operator(
            format!("{what}: {e}"),
            "check that pg_restore (beside pg_dump) is installed and executable",
        )
    })?;
    // A write that failed while pg_restore still succeeded (it stopped
    // reading once it had what it needed) loses nothing.
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = match written {
            Ok(()) => stderr.into_owned(),
            Err(e) => format!("{}; writing the archive to it: {e}", stderr.trim()),
        };
        return Err(Error::operator(
            format!(
                "{what} of the schema archive failed ({}): {}",
                out.status,
                stderr.trim()
            ),
            "report this as a ferry bug with the pg_dump version; meanwhile point FERRY_PG_DUMP at a pg_dump without a pg_restore beside it",
        ));
    }
    text(out.stdout, &what)
}

impl PgDumpRun<'_> {
    /// Both sections, each from its own `pg_dump --section` run, at once:
    /// each is its own session (in the same exported snapshot when there is
    /// one), and most of its time is spent waiting on the server's catalog
    /// queries.
    async fn sections(&self) -> Result<(String, String), Error> {
        let (pre, post) = tokio::join!(
            self.output(Dump::Section("pre-data")),
            self.output(Dump::Section("post-data")),
        );
        Ok((
            text(pre?, "pg_dump --section=pre-data")?,
            text(post?, "pg_dump --section=post-data")?,
        ))
    }

    /// Run `pg_dump` for `dump`; its standard output.
    async fn output(&self, dump: Dump) -> Result<Vec<u8>, Error> {
        let PgDumpRun {
            pg_dump,
            endpoint,
            schemas,
            state_schema,
            snapshot,
        } = *self;
        let config = pg_config(endpoint, "source")?;
        let mut cmd = tokio::process::Command::new(pg_dump);
        cmd.args(["--schema-only", "--no-owner", "--no-privileges"])
            .args([
                "--no-publications",
                "--no-subscriptions",
                "--no-tablespaces",
            ]);
        match dump {
            Dump::Plain => &mut cmd,
            Dump::Section(section) => cmd.arg(format!("--section={section}")),
            // Schema only: the archive holds no data blocks to compress.
            Dump::Archive => cmd.args(["--format=custom", "--compress=0"]),
        };
        if let Some(name) = snapshot {
            cmd.arg(format!("--snapshot={name}"));
        }
        // A quoted identifier is a pg_dump pattern that matches the name
        // literally (no case folding, `*`/`?`/`.` not special).
        for s in schemas {
            cmd.arg(format!("--schema={}", quote_ident(s)));
        }
        cmd.arg(format!("--exclude-schema={}", quote_ident(state_schema)));
        for var in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGPASSFILE",
            "PGSSLCERT",
            "PGSSLKEY",
        ] {
            cmd.env_remove(var);
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        if !hosts.is_empty() {
            cmd.env("PGHOST", hosts.join(","));
        }
        let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
        if !ports.is_empty() {
            cmd.env("PGPORT", ports.join(","));
        }
        if let Some(u) = config.get_user() {
            cmd.env("PGUSER", u);
        }
        if let Some(db) = config.get_dbname() {
            cmd.env("PGDATABASE", db);
        }
        match config.get_password() {
            Some(pw) => cmd.env("PGPASSWORD", String::from_utf8_lossy(pw).as_ref()),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd.env("PGSSLMODE", endpoint.effective_sslmode().to_string())
            .env("PGAPPNAME", "ferry-pg_dump")
            .env("PGCONNECT_TIMEOUT", "15");
        match endpoint.effective_sslrootcert() {
            Some(p) => cmd.env("PGSSLROOTCERT", p),
            None => cmd.env_remove("PGSSLROOTCERT"),
        };
        let out = cmd.output().await.map_err(|e| {
            Error::operator(
                format!("cannot run {}: {e}", pg_dump.display()),
                "check that pg_dump is installed and executable",
            )
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(Error::operator(
                format!(
                    "{} of {} failed ({}): {}",
                    dump.what(),
                    endpoint.url,
                    out.status,
                    stderr.trim()
                ),
                "fix the cause pg_dump reports (privileges on the dumped schemas, connectivity)",
            ));
        }
        Ok(out.stdout)
    }
}

/// Run a dump section (or any SQL text) on `client` in one transaction,
/// then reset the session settings the dump changed (`search_path`, …).
/// psql meta-commands (`\restrict`, …) are dropped first.
/// Run `sql` (psql meta-commands dropped) inside the caller's open
/// transaction, then reset the session settings it made (`SET
/// search_path` and the like), so that it commits or rolls back with
/// everything else the caller does.
pub async fn apply_sql_in_transaction(client: &Client, sql: &str, what: &str) -> Result<(), Error> {
    let body = strip_meta_commands(sql);
    client
        .batch_execute(&body)
        .await
        .map_err(|e| query_error(&format!("applying {what} on the target"), e))?;
    client
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| query_error("resetting session after applying SQL", e))
}

pub async fn apply_sql(client: &Client, sql: &str, what: &str) -> Result<(), Error> {
    let body = strip_meta_commands(sql);
    let result = client
        .batch_execute(&format!("BEGIN;\n{body}\nCOMMIT;"))
        .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        let _ = client.batch_execute("RESET ALL").await;
        return Err(query_error(&format!("applying {what} on the target"), e));
    }
    client
        .batch_execute("RESET ALL")
        .await
        .map_err(|e| query_error("resetting session after applying SQL", e))
}

/// Pre-data as the target can run it: psql meta-commands dropped and
/// `CREATE SCHEMA x;` made `CREATE SCHEMA IF NOT EXISTS x;` (a target
/// database already has `public`, and operators may pre-create schemas).
pub fn tidy_pre_data(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for line in strip_meta_commands(sql).lines() {
        match line.strip_prefix("CREATE SCHEMA ") {
            Some(rest) if !rest.starts_with("IF NOT EXISTS ") => {
                out.push_str("CREATE SCHEMA IF NOT EXISTS ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Drop psql meta-command lines (`\restrict KEY`, `\unrestrict KEY`,
/// `\connect`) that pg_dump writes for psql, and set settings of a newer
/// pg_dump only where the target knows them ([`NEWER_SETTINGS`]).
pub fn strip_meta_commands(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for line in sql.lines() {
        if line.starts_with('\\') {
            continue;
        }
        out.push_str(&portable_setting(line));
        out.push('\n');
    }
    out
}

/// Settings a newer pg_dump sets that an older target does not know
/// (pg_dump 17+ writes `SET transaction_timeout = 0;`; the target may be
/// 13–16): set them only where the target has them.
const NEWER_SETTINGS: &[&str] = &["transaction_timeout"];

fn portable_setting(line: &str) -> std::borrow::Cow<'_, str> {
    for name in NEWER_SETTINGS {
        if let Some(value) = line
            .strip_prefix("SET ")
            .and_then(|r| r.strip_prefix(name))
            .and_then(|r| r.strip_prefix(" = "))
            .and_then(|r| r.strip_suffix(';'))
            && value.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return format!(
                "SELECT set_config(name, '{value}', false) FROM pg_settings WHERE name = '{name}';"
            )
            .into();
        }
    }
    line.into()
}

/// One object of a plain pg_dump script (a `-- Name: …; Type: …` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpEntry {
    pub name: String,
    /// pg_dump's object type: `INDEX`, `CONSTRAINT`, `FK CONSTRAINT`,
    /// `TRIGGER`, `INDEX ATTACH`, `TABLE`, …
    pub kind: String,
    pub schema: Option<String>,
    /// The statements of the entry (without the comment header).
    pub sql: String,
}

/// A post-data script split for the applier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostData {
    /// `SET …` / `set_config` lines every session must run first.
    pub preamble: String,
    /// Index and constraint builds (PK, unique, check, exclusion): independent,
    /// run them in parallel on separate connections.
    pub parallel: Vec<DumpEntry>,
    /// Everything else (foreign keys, `INDEX ATTACH`, triggers, rules,
    /// comments, …): run after `parallel`, one at a time, in this order.
    pub sequential: Vec<DumpEntry>,
}

/// Split a plain pg_dump script into its preamble and entries. Pure.
pub fn parse_dump(sql: &str) -> (String, Vec<DumpEntry>) {
    let text = strip_meta_commands(sql);
    let mut preamble = String::new();
    let mut entries: Vec<DumpEntry> = Vec::new();
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("-- Name: ")
            && let Some(entry) = parse_header(header)
        {
            entries.push(entry);
            continue;
        }
        if line.starts_with("--") || (line.trim().is_empty() && entries.is_empty()) {
            continue;
        }
        match entries.last_mut() {
            Some(e) => {
                e.sql.push_str(line);
                e.sql.push('\n');
            }
            None => {
                preamble.push_str(line);
                preamble.push('\n');
            }
        }
    }
    for e in &mut entries {
        e.sql = e.sql.trim().to_owned();
        if !e.sql.is_empty() {
            e.sql.push('\n');
        }
    }
    entries.retain(|e| !e.sql.is_empty());
    (preamble, entries)
}

/// `name; Type: KIND; Schema: s; Owner: o` → entry without SQL.
fn parse_header(header: &str) -> Option<DumpEntry> {
    let (name, rest) = header.split_once("; Type: ")?;
    let (kind, rest) = rest.split_once("; Schema: ").unwrap_or((rest, ""));
    let schema = rest.split_once(';').map_or(rest, |(s, _)| s).trim();
    Some(DumpEntry {
        name: name.to_owned(),
        kind: kind.trim().to_owned(),
        schema: (!schema.is_empty() && schema != "-").then(|| schema.to_owned()),
        sql: String::new(),
    })
}

/// Split post-data into parallel index/constraint builds and the ordered rest.
pub fn split_post_data(sql: &str) -> PostData {
    let (preamble, entries) = parse_dump(sql);
    let (parallel, sequential) = entries
        .into_iter()
        .partition(|e| matches!(e.kind.as_str(), "INDEX" | "CONSTRAINT"));
    PostData {
        preamble,
        parallel,
        sequential,
    }
}

/// A foreign key of a post-data script, as created by ferry: `NOT VALID`,
/// so existing rows are not checked when it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredForeignKey {
    /// The `ALTER TABLE … ADD CONSTRAINT … NOT VALID;` statement.
    pub sql: String,
    /// The referencing table as the dump wrote it (quoted where needed).
    pub table: String,
    /// The constraint name, unquoted.
    pub constraint: String,
}

/// Rewrite a pg_dump `FK CONSTRAINT` entry to add the key `NOT VALID`.
/// Pure. `None` when the entry is not a single `ALTER TABLE … ADD
/// CONSTRAINT … FOREIGN KEY …;` or is `NOT VALID` already (the source's own
/// constraint is unvalidated: leave it so).
///
/// Why: after a resumed load the tables come from different snapshots, so a
/// child may hold rows whose parent arrives only during catch-up; the keys
/// are validated once every table has reached one consistent position.
pub fn defer_foreign_key(sql: &str) -> Option<DeferredForeignKey> {
    let body = sql.trim_end();
    let stmt = body.strip_suffix(';')?;
    if stmt.contains(';') || stmt.contains("NOT VALID") {
        return None;
    }
    let rest = stmt.trim_start().strip_prefix("ALTER TABLE ")?;
    let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
    let (table, rest) = qualified_name(rest)?;
    let rest = rest.trim_start().strip_prefix("ADD CONSTRAINT ")?;
    let (constraint, rest) = identifier(rest)?;
    if !rest.trim_start().starts_with("FOREIGN KEY") {
        return None;
    }
    Some(DeferredForeignKey {
        sql: format!("{stmt} NOT VALID;\n"),
        table,
        constraint,
    })
}

/// `schema.name` (each part quoted or not) as written, and the rest.
fn qualified_name(s: &str) -> Option<(String, &str)> {
    let start = s.len();
    let (_, mut rest) = identifier(s)?;
    if let Some(r) = rest.strip_prefix('.') {
        rest = identifier(r)?.1;
    }
    let written = &s[..start - rest.len()];
    Some((written.to_owned(), rest))
}

/// One SQL identifier: its unquoted value and the rest of the text.
fn identifier(s: &str) -> Option<(String, &str)> {
    if let Some(q) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = q.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().is_some_and(|(_, n)| *n == '"') {
                    chars.next();
                    value.push('"');
                    continue;
                }
                return Some((value, &q[i + 1..]));
            }
            value.push(c);
        }
        return None;
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_owned(), &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: &str, sql: &str) -> String {
        format!("--\n-- Name: {name}; Type: {kind}; Schema: public; Owner: -\n--\n\n{sql}\n\n\n")
    }

    const PREAMBLE: &str =
        "--\n-- PostgreSQL database dump\n--\n\n\\restrict k\n\nSET lock_timeout = 0;\n\n";
    const CLOSING: &str = "--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict k\n\n";

    /// The version of the same `pg_dump` file is asked once; a file
    /// changed in place (another size or time) is asked again.
    #[tokio::test]
    async fn a_pg_dump_version_is_asked_once_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("runs");
        let bin = dir.path().join("pg_dump");
        let script = |version: &str| {
            let text = format!(
                "#!/bin/sh\necho run >> '{}'\necho 'pg_dump (PostgreSQL) {version}'\n",
                count.display()
            );
            std::fs::write(&bin, text).unwrap();
            std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        let runs = || std::fs::read_to_string(&count).unwrap().lines().count();
        script("16.2");
        assert_eq!(pg_dump_version(&bin).await.unwrap().major, 16);
        assert_eq!(pg_dump_version(&bin).await.unwrap().major, 16);
        assert_eq!(runs(), 1, "asked once");
        script("17.10");
        assert_eq!(pg_dump_version(&bin).await.unwrap().major, 17);
        assert_eq!(runs(), 2, "asked again once the file changed");
    }

    #[test]
    fn a_plain_script_splits_at_its_first_post_data_object() {
        let table = entry("t", "TABLE", "CREATE TABLE public.t (id int);");
        let comment = entry("TABLE t", "COMMENT", "COMMENT ON TABLE public.t IS 'x';");
        let key = entry(
            "t t_pkey",
            "CONSTRAINT",
            "ALTER TABLE ONLY public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id);",
        );
        let index = entry("t_i", "INDEX", "CREATE INDEX t_i ON public.t (id);");
        let index_comment = entry(
            "INDEX t_i",
            "COMMENT",
            "COMMENT ON INDEX public.t_i IS 'y';",
        );
        let script = format!("{PREAMBLE}{table}{comment}{key}{index}{index_comment}{CLOSING}");
        let (pre, post) = split_sections(&script).unwrap();
        assert_eq!(pre, format!("{PREAMBLE}{table}{comment}{CLOSING}"));
        assert_eq!(
            post,
            format!("{PREAMBLE}{key}{index}{index_comment}{CLOSING}")
        );

        // Nothing after pre-data: post-data is the preamble and the closing lines.
        let script = format!("{PREAMBLE}{table}{CLOSING}");
        assert_eq!(
            split_sections(&script).unwrap(),
            (script.clone(), format!("{PREAMBLE}{CLOSING}"))
        );
    }

    #[test]
    fn a_plain_script_whose_split_is_not_certain_is_not_split() {
        let table = entry("t", "TABLE", "CREATE TABLE public.t (id int);");
        let index = entry("t_i", "INDEX", "CREATE INDEX t_i ON public.t (id);");
        let unknown = entry("x", "SOMETHING NEW", "SELECT 1;");
        assert_eq!(
            split_sections(&format!("{PREAMBLE}{table}{unknown}{index}{CLOSING}")),
            None,
            "a type of no known section"
        );
        assert_eq!(
            split_sections(&format!("{PREAMBLE}{index}{table}{CLOSING}")),
            None,
            "pre-data after post-data"
        );
    }

    #[test]
    fn foreign_keys_are_deferred() {
        let fk = "ALTER TABLE ONLY public.film\n    ADD CONSTRAINT film_language_id_fkey FOREIGN KEY (language_id) REFERENCES public.language(language_id) ON UPDATE CASCADE ON DELETE RESTRICT;\n";
        let d = defer_foreign_key(fk).unwrap();
        assert_eq!(d.table, "public.film");
        assert_eq!(d.constraint, "film_language_id_fkey");
        assert!(
            d.sql.ends_with("ON DELETE RESTRICT NOT VALID;\n"),
            "{}",
            d.sql
        );
        let quoted = "ALTER TABLE \"My Schema\".\"Order \"\"Lines\"\"\"\n    ADD CONSTRAINT \"fk one\" FOREIGN KEY (a) REFERENCES x.y(a);\n";
        let d = defer_foreign_key(quoted).unwrap();
        assert_eq!(d.table, "\"My Schema\".\"Order \"\"Lines\"\"\"");
        assert_eq!(d.constraint, "fk one");
        // Already NOT VALID on the source, or not a foreign key: left alone.
        assert_eq!(
            defer_foreign_key(
                "ALTER TABLE ONLY public.a\n    ADD CONSTRAINT a_fk FOREIGN KEY (b) REFERENCES public.b(id) NOT VALID;\n"
            ),
            None
        );
        assert_eq!(
            defer_foreign_key(
                "ALTER TABLE ONLY public.a\n    ADD CONSTRAINT a_pkey PRIMARY KEY (id);\n"
            ),
            None
        );
    }

    const POST: &str = r#"--
-- PostgreSQL database dump
--

\restrict abc123

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: actor actor_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.actor
    ADD CONSTRAINT actor_pkey PRIMARY KEY (actor_id);


--
-- Name: idx_actor_last_name; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX idx_actor_last_name ON public.actor USING btree (last_name);


--
-- Name: payment_p2022_01_pkey; Type: INDEX ATTACH; Schema: public; Owner: -
--

ALTER INDEX public.payment_pkey ATTACH PARTITION public.payment_p2022_01_pkey;


--
-- Name: film film_language_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.film
    ADD CONSTRAINT film_language_id_fkey FOREIGN KEY (language_id) REFERENCES public.language(language_id) ON UPDATE CASCADE ON DELETE RESTRICT;


--
-- PostgreSQL database dump complete
--

\unrestrict abc123
"#;

    #[test]
    fn post_data_splits() {
        let p = split_post_data(POST);
        assert!(p.preamble.contains("set_config('search_path', '', false)"));
        assert!(!p.preamble.contains("restrict"));
        let par: Vec<(&str, &str)> = p
            .parallel
            .iter()
            .map(|e| (e.kind.as_str(), e.name.as_str()))
            .collect();
        assert_eq!(
            par,
            [
                ("CONSTRAINT", "actor actor_pkey"),
                ("INDEX", "idx_actor_last_name")
            ]
        );
        assert_eq!(
            p.parallel[1].sql,
            "CREATE INDEX idx_actor_last_name ON public.actor USING btree (last_name);\n"
        );
        assert_eq!(p.parallel[0].schema.as_deref(), Some("public"));
        let seq: Vec<&str> = p.sequential.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(seq, ["INDEX ATTACH", "FK CONSTRAINT"]);
        assert!(p.sequential[1].sql.ends_with("ON DELETE RESTRICT;\n"));
        assert!(p.sequential.iter().all(|e| !e.sql.contains("unrestrict")));
    }

    #[test]
    fn schemas_are_created_if_missing() {
        let pre = "\\restrict k\nCREATE SCHEMA public;\nCREATE SCHEMA IF NOT EXISTS x;\nCREATE TABLE public.t (a int);\n";
        assert_eq!(
            tidy_pre_data(pre),
            "CREATE SCHEMA IF NOT EXISTS public;\nCREATE SCHEMA IF NOT EXISTS x;\nCREATE TABLE public.t (a int);\n"
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn settings_of_newer_pg_dumps_are_set_only_where_known() {
        assert_eq!(
            strip_meta_commands(
                "SET statement_timeout = 0;\nSET transaction_timeout = 0;\n\\restrict abc\n"
            ),
            "SET statement_timeout = 0;\n\
             SELECT set_config(name, '0', false) FROM pg_settings WHERE name = 'transaction_timeout';\n"
        );
    }

    #[test]
    fn old_pg_dump_is_refused_with_the_fix() {
        let d = PgDump {
            path: PathBuf::from("/usr/bin/pg_dump"),
            major: 13,
            version: "pg_dump (PostgreSQL) 13.1".into(),
        };
        check_version(&d, 13).unwrap();
        let e = check_version(&d, 16).unwrap_err().to_string();
        assert!(e.contains("version 13"), "{e}");
        assert!(e.contains("PostgreSQL 16"), "{e}");
        assert!(e.contains("install postgresql-client-16"), "{e}");
    }

    #[tokio::test]
    async fn a_broken_schema_archive_names_pg_restore_and_the_section() {
        let pg_dump = find_pg_dump().unwrap();
        let restore = pg_restore_beside(&pg_dump).expect("pg_restore beside pg_dump");
        let e = run_pg_restore(&restore, b"not an archive", "post-data")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pg_restore --section=post-data of the schema archive failed"),
            "{e}"
        );
        assert!(e.contains("FERRY_PG_DUMP"), "{e}");
    }
}
