//! The console over real connections: tokio-postgres (simple and extended
//! protocol, binary results) and `psql`, against a recording backend.

use std::path::Path;
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_console::{Auth, Backend, BoxFuture, CutoverCommand, ValidateCommand, ValidateStarted};
use ferry_monitor::history::LagSample;
use ferry_monitor::{CutoverRecord, Phase, Status, TableStatus};
use tokio::net::TcpListener;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder {
    paused: Mutex<bool>,
    cutovers: Mutex<Vec<CutoverCommand>>,
    validations: Mutex<Vec<ValidateCommand>>,
}

impl Backend for Recorder {
    fn status(&self) -> Status {
        let mut s = Status::new(Phase::Stream, "postgres", SystemTime::now());
        s.paused = *self.paused.lock().unwrap();
        s.lag.seconds = 0.25;
        s.lag.bytes = 512;
        s.source_position = Some("0/3000060".into());
        s.applied_position = Some("0/3000000".into());
        s.tables = vec![
            TableStatus {
                name: "public.\"Order Lines\"".into(),
                state: "streaming".into(),
                rows_copied: 1200,
                rows_estimated: Some(1200),
                chunks_done: 2,
                chunks_total: 2,
                changes_applied: 31,
            },
            TableStatus {
                name: "public.customers".into(),
                state: "streaming".into(),
                rows_copied: 59,
                rows_estimated: None,
                chunks_done: 1,
                chunks_total: 1,
                changes_applied: 4,
            },
        ];
        s
    }

    fn lag_history(&self, since: SystemTime) -> BoxFuture<'_, Result<Vec<LagSample>, String>> {
        Box::pin(async move {
            Ok(vec![LagSample {
                at: since + Duration::from_secs(10),
                lag_seconds: 1.5,
                lag_bytes: 2048,
            }])
        })
    }

    fn cutover(&self, c: CutoverCommand) -> BoxFuture<'_, Result<CutoverRecord, String>> {
        Box::pin(async move {
            self.cutovers.lock().unwrap().push(c.clone());
            if c.max_lag < Duration::from_secs(1) {
                return Err("lag 0.25s is above max_lag 0.1s".into());
            }
            Ok(CutoverRecord {
                dry_run: c.dry_run,
                started_at: SystemTime::now(),
                finished_at: Some(SystemTime::now()),
                fenced: c.fence,
                write_freeze_seconds: c.fence.then_some(0.4),
                final_position: Some("0/3000060".into()),
                lag_seconds_at_start: 0.25,
                sequences_synced: 2,
                validation: vec![],
                slot_dropped: !c.keep_slot,
                restored: vec![],
                steps: vec!["checked lag".into()],
                outcome: if c.dry_run { "dry-run" } else { "completed" }.into(),
            })
        })
    }

    fn pause(&self) {
        *self.paused.lock().unwrap() = true;
    }

    fn resume(&self) {
        *self.paused.lock().unwrap() = false;
    }

    fn validate(&self, v: ValidateCommand) -> BoxFuture<'_, Result<ValidateStarted, String>> {
        Box::pin(async move {
            let mut seen = self.validations.lock().unwrap();
            if !seen.is_empty() {
                return Err("a validation is already running".into());
            }
            seen.push(v.clone());
            Ok(ValidateStarted {
                started: true,
                tables: v.tables,
                repair: v.repair,
            })
        })
    }
}

struct Server {
    port: u16,
    backend: Arc<Recorder>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(auth: Auth) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let (b, s) = (backend.clone(), stop.clone());
    let task = tokio::spawn(async move {
        ferry_console::serve(listener, b, auth, None, s.cancelled_owned()).await
    });
    Server {
        port,
        backend,
        stop,
        task,
    }
}

async fn connect(
    port: u16,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("ferry");
    if let Some(p) = password {
        config.password(p);
    }
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn password() -> Auth {
    Auth::Password {
        user: "ferry".into(),
        password: "console-pw".into(),
    }
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<&tokio_postgres::SimpleQueryRow> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn extended_protocol_answers_typed_rows_in_binary() {
    let server = start(password()).await;
    let client = connect(server.port, "ferry", Some("console-pw"))
        .await
        .unwrap();

    // `query` is the extended protocol: parse, describe, bind (binary), execute.
    let lag = client.query_one("SHOW LAG", &[]).await.unwrap();
    assert_eq!(lag.get::<_, f64>("lag_seconds"), 0.25);
    assert_eq!(lag.get::<_, i64>("lag_bytes"), 512);
    assert_eq!(
        lag.get::<_, Option<String>>("source_position").as_deref(),
        Some("0/3000060")
    );
    let as_of: SystemTime = lag.get("as_of");
    assert!(as_of.elapsed().unwrap() < Duration::from_secs(60));

    let tables = client.query("show tables;", &[]).await.unwrap();
    let names: Vec<String> = tables.iter().map(|r| r.get("table_name")).collect();
    assert_eq!(names, ["public.\"Order Lines\"", "public.customers"]);
    assert_eq!(tables[0].get::<_, i64>("changes_applied"), 31);
    assert_eq!(tables[1].get::<_, Option<i64>>("rows_estimated"), None);

    let status = client.query_one("SHOW STATUS", &[]).await.unwrap();
    assert_eq!(status.get::<_, String>("phase"), "stream");
    assert!(!status.get::<_, bool>("paused"));

    // A prepared statement is described before it runs.
    let stmt = client.prepare("SHOW LAG HISTORY '1h'").await.unwrap();
    let cols: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(cols, ["at", "lag_seconds", "lag_bytes"]);
    let history = client.query(&stmt, &[]).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].get::<_, i64>("lag_bytes"), 2048);

    let record = client
        .query_one("CUTOVER DRY RUN MAX LAG '3s'", &[])
        .await
        .unwrap();
    assert_eq!(record.get::<_, String>("outcome"), "dry-run");
    assert!(record.get::<_, bool>("dry_run"));
    let seen = server.backend.cutovers.lock().unwrap().clone();
    assert_eq!(
        seen,
        [CutoverCommand {
            dry_run: true,
            max_lag: Duration::from_secs(3),
            ..CutoverCommand::default()
        }]
    );
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn validate_starts_once_and_show_validation_answers() {
    let server = start(password()).await;
    let client = connect(server.port, "ferry", Some("console-pw"))
        .await
        .unwrap();
    let row = client
        .query_one("VALIDATE public.customers REPAIR", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>("started"));
    assert_eq!(row.get::<_, String>("tables"), "public.customers");
    assert!(row.get::<_, bool>("repair"));
    assert_eq!(
        *server.backend.validations.lock().unwrap(),
        [ValidateCommand {
            tables: vec!["public.customers".into()],
            repair: true,
        }]
    );
    let e = client.query("VALIDATE", &[]).await.unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("already running"), "{}", db.message());
    let cols: Vec<String> = client
        .prepare("SHOW VALIDATION")
        .await
        .unwrap()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    assert_eq!(&cols[..3], ["table_name", "clean", "rows_checked"]);
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn simple_protocol_runs_several_commands_and_pause_resume() {
    let server = start(password()).await;
    let client = connect(server.port, "ferry", Some("console-pw"))
        .await
        .unwrap();
    let out = client.simple_query("PAUSE; SHOW STATUS").await.unwrap();
    let status = rows(&out);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].get("paused"), Some("t"));
    assert!(*server.backend.paused.lock().unwrap());
    let out = client.simple_query("RESUME; SHOW LAG").await.unwrap();
    assert_eq!(rows(&out)[0].get("lag_bytes"), Some("512"));
    assert!(!*server.backend.paused.lock().unwrap());
    // Drivers' session settings are accepted.
    client
        .simple_query("SET extra_float_digits = 3")
        .await
        .unwrap();
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn errors_are_postgresql_errors_with_sqlstate_and_hint() {
    let server = start(Auth::Open).await;
    let client = connect(server.port, "anyone", None).await.unwrap();

    let e = client
        .simple_query("SELECT * FROM pg_class")
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42601");
    assert!(
        db.message().contains("unknown console command \"SELECT\""),
        "{}",
        db.message()
    );
    assert!(
        db.hint().unwrap().contains("SHOW STATUS"),
        "{:?}",
        db.hint()
    );

    // Parse errors in the extended protocol, too.
    let e = client.query("CUTOVER SOON", &[]).await.unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42601");
    assert!(
        db.message().contains("CUTOVER does not take \"SOON\""),
        "{}",
        db.message()
    );

    // A refused cutover is 55000 with the pipeline's reason.
    let e = client
        .query("CUTOVER FENCE MAX LAG '100ms'", &[])
        .await
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000");
    assert!(
        db.message().contains("lag 0.25s is above max_lag 0.1s"),
        "{}",
        db.message()
    );
    assert!(db.hint().unwrap().contains("CUTOVER DRY RUN"));

    // The session survives its errors.
    assert_eq!(client.query("SHOW LAG", &[]).await.unwrap().len(), 1);
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_credentials_are_refused() {
    let server = start(password()).await;
    let wrong = connect(server.port, "ferry", Some("not-the-password")).await;
    let e = wrong.expect_err("a wrong password must be refused");
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("28P01"),
        "{e}"
    );
    let user = connect(server.port, "postgres", Some("console-pw")).await;
    assert!(user.is_err(), "another user name must be refused");
    let none = connect(server.port, "ferry", None).await;
    assert!(none.is_err(), "no password must be refused");
    assert!(
        connect(server.port, "ferry", Some("console-pw"))
            .await
            .is_ok()
    );
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_non_loopback_address_without_credentials_is_refused_at_startup() {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = ferry_console::serve(
        listener,
        Arc::new(Recorder::default()),
        Auth::Open,
        None,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not a loopback address"), "{e}");
}

/// `psql` itself, in both protocols: plain statements are the simple
/// protocol, `\bind … \g` the extended one (psql 16+; `make setup` unpacks
/// psql 18 into `.pg/client`).
#[tokio::test]
async fn psql_talks_to_the_console_in_both_protocols() {
    let psql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.pg/client/bin/psql");
    assert!(
        psql.exists(),
        "{} is missing: run `make setup` (it unpacks the PostgreSQL client tools into .pg/client)",
        psql.display()
    );
    let server = start(password()).await;
    let port = server.port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("console.sql");
    std::fs::write(
        &script,
        "SHOW LAG;\nCUTOVER DRY RUN;\nSHOW TABLES \\bind \\g\nSHOW NONSENSE;\nPAUSE \\bind \\g\n\
         SHOW STATUS;\nSHOW LAG HISTORY '2h' \\bind \\g\nSHOW VALIDATION;\nSHOW HELP;\n\
         VALIDATE public.customers;\nRESUME;\nCUTOVER FENCE MAX LAG '2s' TIMEOUT '30s' KEEP SLOT \\bind \\g\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Process::new(psql)
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "ferry",
                "-d",
                "ferry",
            ])
            .args(["-v", "ON_ERROR_STOP=0", "-A", "-F", "|", "-f"])
            .arg(&script)
            .env("PGPASSWORD", "console-pw")
            .env("PGSSLMODE", "disable")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("0.25|512|f|0/3000060|0/3000000"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("dry-run|t|f"), "{stdout}");
    assert!(
        stdout.contains("public.customers|streaming|59||1|1|4"),
        "{stdout}"
    );
    assert!(stdout.contains("PAUSE"), "{stdout}");
    // SHOW STATUS after PAUSE: phase stream, live, paused.
    assert!(
        stdout.contains("\nstream|t|t|postgres|0/3000060|"),
        "{stdout}"
    );
    assert!(stdout.contains("|1.5|2048"), "lag history row: {stdout}");
    assert!(
        stdout.contains("VALIDATE [table [, table …]] [REPAIR]|start a validation"),
        "SHOW HELP: {stdout}"
    );
    assert!(
        stdout.contains("t|public.customers|f|SHOW VALIDATION shows"),
        "VALIDATE: {stdout}"
    );
    assert!(stdout.contains("RESUME"), "{stdout}");
    assert!(!*server.backend.paused.lock().unwrap(), "RESUME came last");
    assert!(
        stdout.contains("\ncompleted|f|t|0.4|0/3000060|"),
        "fenced CUTOVER: {stdout}"
    );
    let cutovers = server.backend.cutovers.lock().unwrap().clone();
    assert_eq!(
        cutovers.last(),
        Some(&CutoverCommand {
            fence: true,
            max_lag: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            keep_slot: true,
            ..CutoverCommand::default()
        })
    );
    assert!(
        stderr.contains("unknown console command \"SHOW NONSENSE\""),
        "{stderr}"
    );
    assert!(stderr.contains("HINT:"), "{stderr}");
    server.stop.cancel();
    server.task.await.unwrap().unwrap();
}

/// With a certificate and key the console speaks TLS: psql verifies the
/// certificate (`verify-full`) and binds SCRAM to the channel.
#[tokio::test]
async fn tls_with_certificate_verification_and_channel_binding() {
    let psql = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.pg/client/bin/psql");
    assert!(
        psql.exists(),
        "{} is missing: run `make setup`",
        psql.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let files = ferry_testkit::tls_files(dir.path()).unwrap();
    let tls = ferry_console::Tls {
        cert_pem: std::fs::read(&files.server_cert).unwrap(),
        key_pem: std::fs::read(&files.server_key).unwrap(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        ferry_console::serve(
            listener,
            Arc::new(Recorder::default()),
            password(),
            Some(tls),
            s.cancelled_owned(),
        )
        .await
    });
    let ca = files.ca_cert.clone();
    let run = move |sslmode: &'static str| {
        let (psql, port, ca) = (psql.clone(), port.clone(), ca.clone());
        move || {
            Process::new(psql)
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-h",
                    "localhost",
                    "-p",
                    &port,
                    "-U",
                    "ferry",
                    "-d",
                    "ferry",
                ])
                .args(["-c", "SHOW LAG"])
                .env("PGPASSWORD", "console-pw")
                .env("PGSSLMODE", sslmode)
                .env("PGSSLROOTCERT", &ca)
                .env("PGCHANNELBINDING", "require")
                .output()
                .unwrap()
        }
    };
    let out = tokio::task::spawn_blocking(run("verify-full"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("0.25|512|"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without TLS there is no channel to bind: libpq refuses, which shows
    // the verify-full login above really was SCRAM-SHA-256-PLUS over TLS.
    let plain = tokio::task::spawn_blocking(run("disable")).await.unwrap();
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("channel binding"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}
