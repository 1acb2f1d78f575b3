use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const BASIC: &str = r#"
[source]
url = "postgres://app:pw-source@127.0.0.1:5433/app"
[target]
url = "postgres://admin:pw-target@127.0.0.1:5434/app"
sslmode = "disable"
"#;

#[test]
fn console_defaults_to_loopback_and_refuses_an_open_public_address() {
    let c = Config::from_parts(BASIC, "test", env(&[])).unwrap();
    assert_eq!(c.console.address(), Some(("127.0.0.1:7434", false)));
    assert_eq!(c.console.user, "ferry");
    let off = Config::from_parts(BASIC, "test", env(&[("FERRY_CONSOLE_LISTEN", "off")])).unwrap();
    assert_eq!(off.console.address(), None);
    off.validate().unwrap();
    let chosen = Config::from_parts(
        BASIC,
        "test",
        env(&[("FERRY_CONSOLE_LISTEN", "127.0.0.1:6000")]),
    )
    .unwrap();
    assert_eq!(chosen.console.address(), Some(("127.0.0.1:6000", true)));
    let open = Config::from_parts(
        BASIC,
        "test",
        env(&[("FERRY_CONSOLE_LISTEN", "0.0.0.0:6000")]),
    )
    .unwrap();
    let e = open.validate().unwrap_err().to_string();
    assert!(
        e.contains("console.listen 0.0.0.0:6000 is not a loopback address"),
        "{e}"
    );
    let with_password = Config::from_parts(
        BASIC,
        "test",
        env(&[
            ("FERRY_CONSOLE_LISTEN", "0.0.0.0:6000"),
            ("FERRY_CONSOLE_PASSWORD", "pw"),
        ]),
    )
    .unwrap();
    with_password.validate().unwrap();
    let half_tls =
        Config::from_parts(BASIC, "test", env(&[("FERRY_CONSOLE_TLS_CERT", "/c.pem")])).unwrap();
    let e = half_tls.validate().unwrap_err().to_string();
    assert!(
        e.contains("console.tls_cert and console.tls_key go together"),
        "{e}"
    );
}

#[test]
fn defaults_are_sensible() {
    let c = Config::from_parts(BASIC, "test", env(&[])).unwrap();
    c.validate().unwrap();
    assert_eq!(c.state.schema, "ferry");
    assert_eq!(c.source.effective_sslmode(), SslMode::Prefer);
    assert_eq!(c.target.effective_sslmode(), SslMode::Disable);
    assert_eq!(c.source.kind().unwrap(), EndpointKind::Postgres);
    assert!(
        c.tables
            .filter()
            .unwrap()
            .matches(&TableId::new("public", "x"))
    );
}

#[test]
fn env_overrides_file() {
    let c = Config::from_parts(
        BASIC,
        "test",
        env(&[
            ("FERRY_SOURCE_URL", "mysql://root:pw@127.0.0.1:3307/shop"),
            ("FERRY_APPLY_BATCH_ROWS", "500"),
            ("FERRY_TABLES_EXCLUDE", "shop.audit_*, shop.tmp"),
            ("FERRY_CONFIG", "/ignored"),
            ("FERRY_PG_DUMP", "/opt/pg18/bin/pg_dump"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.source.kind().unwrap(), EndpointKind::MySql);
    assert_eq!(c.apply.batch_rows, 500);
    let f = c.tables.filter().unwrap();
    assert!(!f.matches(&TableId::new("shop", "audit_2024")));
    assert!(!f.matches(&TableId::new("shop", "tmp")));
    assert!(f.matches(&TableId::new("shop", "orders")));
}

#[test]
fn existing_slot_from_file_or_environment() {
    let c = Config::from_parts(BASIC, "test", env(&[])).unwrap();
    assert!(
        !c.postgres.existing_slot,
        "ferry creates its slot by default"
    );
    let text = format!("{BASIC}[postgres]\nslot = \"dba_slot\"\nexisting_slot = true\n");
    let c = Config::from_parts(&text, "test", env(&[])).unwrap();
    c.validate().unwrap();
    assert!(c.postgres.existing_slot);
    assert_eq!(c.postgres.slot, "dba_slot");
    let c = Config::from_parts(
        BASIC,
        "test",
        env(&[("FERRY_POSTGRES_EXISTING_SLOT", "true")]),
    )
    .unwrap();
    assert!(c.postgres.existing_slot);
    let bad = Config::from_parts(
        BASIC,
        "test",
        env(&[("FERRY_POSTGRES_EXISTING_SLOT", "yes")]),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("existing_slot"), "{bad}");
}

#[test]
fn validate_section_from_toml_and_env_and_its_bounds() {
    let text = format!("{BASIC}\n[validate]\nrows_per_second = 5000\nevery_seconds = 3600\n");
    let c =
        Config::from_parts(&text, "test", env(&[("FERRY_VALIDATE_CHUNK_ROWS", "2000")])).unwrap();
    c.validate().unwrap();
    assert_eq!(
        (
            c.validate.rows_per_second,
            c.validate.every_seconds,
            c.validate.chunk_rows
        ),
        (5000, 3600, 2000)
    );
    assert_eq!((c.validate.leaf_rows, c.validate.rounds), (500, 5));
    let bad = Config::from_parts(
        BASIC,
        "test",
        env(&[
            ("FERRY_VALIDATE_LEAF_ROWS", "0"),
            ("FERRY_VALIDATE_ROUNDS", "0"),
            ("FERRY_VALIDATE_WAIT_SECONDS", "0"),
        ]),
    )
    .unwrap()
    .validate()
    .unwrap_err()
    .to_string();
    for want in [
        "validate.leaf_rows",
        "validate.rounds",
        "validate.wait_seconds",
    ] {
        assert!(bad.contains(want), "{bad}");
    }
    let unknown = format!("{BASIC}\n[validate]\nrows_per_sec = 1\n");
    assert!(Config::from_parts(&unknown, "test", env(&[])).is_err());
}

#[test]
fn env_alone_is_enough() {
    let c = Config::from_parts(
        "",
        "(environment)",
        env(&[
            ("FERRY_SOURCE_URL", "sqlite:///var/data/app.db"),
            ("FERRY_TARGET_URL", "postgres://u:p@127.0.0.1/app"),
        ]),
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.source.kind().unwrap(),
        EndpointKind::Sqlite("/var/data/app.db".into())
    );
    let rel = Endpoint {
        url: RedactedUrl::new("sqlite:data/app.db"),
        sslmode: None,
        sslrootcert: None,
    };
    assert_eq!(
        rel.kind().unwrap(),
        EndpointKind::Sqlite("data/app.db".into())
    );
}

#[test]
fn buffer_budget_in_bytes() {
    let c = Config::from_parts(BASIC, "test", env(&[])).unwrap();
    assert_eq!(c.apply.max_buffered_bytes, 256 << 20);
    assert_eq!(c.apply.buffer_share(), 64 << 20);
    let c = Config::from_parts(
        BASIC,
        "test",
        env(&[("FERRY_APPLY_MAX_BUFFERED_BYTES", "1000")]),
    )
    .unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("apply.max_buffered_bytes = 1000"), "{e}");
    // The row-count knob it replaces is gone, not silently ignored.
    let old = format!("{BASIC}[apply]\nmax_buffered_changes = 100000\n");
    assert!(Config::from_parts(&old, "test", env(&[])).is_err());
}

#[test]
fn insert_only_globs() {
    let text = format!("{BASIC}[tables]\ninsert_only = [\"app.audit_*\"]\n");
    let c = Config::from_parts(&text, "test", env(&[])).unwrap();
    c.validate().unwrap();
    let f = c.tables.filter().unwrap();
    assert!(f.insert_only(&TableId::new("app", "audit_log")));
    assert!(!f.insert_only(&TableId::new("app", "orders")));
    let c = Config::from_parts(
        BASIC,
        "test",
        env(&[("FERRY_TABLES_INSERT_ONLY", "public.history, app.log")]),
    )
    .unwrap();
    assert!(
        c.tables
            .filter()
            .unwrap()
            .insert_only(&TableId::new("public", "history"))
    );
    let bad = format!("{BASIC}[tables]\ninsert_only = [\"app.[\"]\n");
    let e = Config::from_parts(&bad, "test", env(&[]))
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("app.["), "{e}");
    let mysql = "[source]\nurl = \"mysql://root:pw@127.0.0.1:3307/shop\"\n[target]\nurl = \"postgres://u:p@127.0.0.1/app\"\n[tables]\ninsert_only = [\"shop.log\"]\n";
    let e = Config::from_parts(mysql, "test", env(&[]))
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tables.insert_only applies to PostgreSQL"),
        "{e}"
    );
}

#[test]
fn failpoint_env_is_not_config_but_is_checked() {
    for point in FAILPOINTS {
        Config::from_parts(BASIC, "test", env(&[(FAILPOINT_ENV, point)])).unwrap();
    }
    let e = Config::from_parts(BASIC, "test", env(&[(FAILPOINT_ENV, "after-lunch")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("FERRY_FAILPOINT") && e.contains("after-commit-before-ack"),
        "{e}"
    );
}

#[test]
fn unknown_env_and_fields_are_rejected() {
    let e = Config::from_parts(BASIC, "test", env(&[("FERRY_SOURSE_URL", "x")])).unwrap_err();
    assert!(e.to_string().contains("FERRY_SOURSE_URL"), "{e}");
    let e = Config::from_parts(
        &format!("{BASIC}\n[apply]\nbatch_rowz = 3\n"),
        "f.toml",
        env(&[]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("batch_rowz"), "{e}");
}

#[test]
fn validate_reports_every_problem_at_once() {
    let text = r#"
[source]
url = "oracle://scott:tiger@db/x"
sslmode = "verify-full"
[target]
url = "mysql://u:p@h/db"
[tables]
include = ["public.[*"]
rename = { "nodot" = "a.b" }
[apply]
batch_rows = 0
[control]
listen = "0.0.0.0:7433"
[state]
schema = "Bad-Name"
[postgres]
proto_version = 3
"#;
    let c = Config::from_parts(text, "t", env(&[])).unwrap();
    let msg = c.validate().unwrap_err().to_string();
    for needle in [
        "unsupported scheme 'oracle'",
        "must be a postgres:// URL",
        "public.[*",
        "'nodot' must be schema.table",
        "batch_rows must be at least 1",
        "set control.token",
        "state.schema",
        "proto_version 3",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    assert!(!msg.contains("tiger"), "password leaked:\n{msg}");
}

#[test]
fn verify_modes_need_a_root_certificate() {
    let text = BASIC.replace("sslmode = \"disable\"", "sslmode = \"verify-full\"");
    let c = Config::from_parts(&text, "t", env(&[])).unwrap();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("sslrootcert")
    );
    let c = Config::from_parts(
        &text,
        "t",
        env(&[("FERRY_TARGET_SSLROOTCERT", "/etc/ssl/rds-global-bundle.pem")]),
    )
    .unwrap();
    c.validate().unwrap();
    let url_mode = Config::from_parts(
        &BASIC.replace("5433/app\"", "5433/app?sslmode=require\""),
        "t",
        env(&[]),
    )
    .unwrap();
    assert_eq!(url_mode.source.effective_sslmode(), SslMode::Require);
}

#[test]
fn secrets_never_show_in_debug_or_errors() {
    let text = r#"
[source]
url = "postgres://app:pw-source-123@127.0.0.1:5433/app"
[target]
url = "postgres://admin:pw-target-456@127.0.0.1:5434/app"
[control]
token = "tok-789"
listen = "0.0.0.0:1"
[apply]
batch_ms = 0
"#;
    let c = Config::from_parts(text, "t", env(&[])).unwrap();
    let shown = format!("{c:?} {}", c.validate().unwrap_err());
    for secret in ["pw-source-123", "pw-target-456", "tok-789"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    assert!(shown.contains("app:****@127.0.0.1:5433"));
}

#[test]
fn renames_map_tables() {
    let c = Config::from_parts(
        &format!("{BASIC}\n[tables.rename]\n\"public.old\" = \"archive.new\"\n"),
        "t",
        env(&[]),
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.tables.target_name(&TableId::new("public", "old")),
        TableId::new("archive", "new")
    );
    assert_eq!(
        c.tables.target_name(&TableId::new("public", "x")),
        TableId::new("public", "x")
    );
    // Names with dots, spaces and case are quoted, as ferry prints them.
    let c = Config::from_parts(
        &format!("{BASIC}\n[tables.rename]\n'public.\"v1.2_data\"' = '\"Archive\".\"V 1.2\"'\n"),
        "t",
        env(&[]),
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(
        c.tables.target_name(&TableId::new("public", "v1.2_data")),
        TableId::new("Archive", "V 1.2")
    );
    let f = c.tables.filter().unwrap();
    assert!(f.matches(&TableId::new("Sales", "Order Items")));
}

#[test]
fn target_tables_modes_from_file_and_env() {
    let c = Config::from_parts(BASIC, "test", env(&[])).unwrap();
    assert_eq!(c.target_tables.mode, SchemaMode::Create);
    c.validate().unwrap();
    let c = Config::from_parts(
        BASIC,
        "test",
        env(&[
            ("FERRY_TARGET_TABLES_MODE", "existing"),
            ("FERRY_TARGET_TABLES_EXISTING_ROWS", "truncate"),
            ("FERRY_TARGET_TABLES_SCHEMA", "app"),
        ]),
    )
    .unwrap();
    assert!(c.target_tables.existing());
    assert_eq!(c.target_tables.existing_rows, ExistingRows::Truncate);
    assert_eq!(c.target_tables.schema.as_deref(), Some("app"));
    c.validate().unwrap();
    // The existing-mode options without the mode are a mistake.
    let text = format!("{BASIC}[target_tables]\nexisting_rows = \"truncate\"\n");
    let e = Config::from_parts(&text, "test", env(&[]))
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "target_tables.schema and target_tables.existing_rows apply to mode = \"existing\""
        ),
        "{e}"
    );
    let text = format!("{BASIC}[target_tables]\nmode = \"nothing\"\n");
    assert!(Config::from_parts(&text, "test", env(&[])).is_err());
}

#[test]
fn capture_ddl_is_refused_with_existing_target_tables() {
    let text = "[source]\nurl = \"postgres://a@h/d\"\n[target]\nurl = \"postgres://a@h/e\"\n[postgres]\ncapture_ddl = true\n[target_tables]\nmode = \"existing\"\n";
    let err = Config::from_parts(text, "test", Vec::new())
        .and_then(|c| c.validate().map(|()| c))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("postgres.capture_ddl cannot be combined"),
        "{err}"
    );
    let ok = text.replace("mode = \"existing\"", "mode = \"create\"");
    Config::from_parts(&ok, "test", Vec::new())
        .unwrap()
        .validate()
        .unwrap();
}
