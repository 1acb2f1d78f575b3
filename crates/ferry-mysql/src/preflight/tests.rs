use ferry_core::plan::CheckStatus;

use super::*;

/// Variable overrides (`""` removes the variable).
type Vars = &'static [(&'static str, &'static str)];

fn facts(vars: &[(&str, &str)]) -> ServerFacts {
    let mut variables: BTreeMap<String, String> = [
        ("log_bin", "ON"),
        ("binlog_format", "ROW"),
        ("binlog_row_image", "FULL"),
        ("server_id", "1"),
        ("binlog_expire_logs_seconds", "0"),
        ("expire_logs_days", "0.000000"),
        ("gtid_strict_mode", "ON"),
        ("gtid_current_pos", "0-1-5"),
        ("basedir", "/usr"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in vars {
        if v.is_empty() {
            variables.remove(*k);
        } else {
            variables.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    ServerFacts {
        version: "10.11.19-MariaDB-0+deb12u1".into(),
        version_comment: "Debian 12".into(),
        variables,
        rds_retention_hours: None,
        current_user: "ferry@%".into(),
        privileges: Privileges::parse(["GRANT ALL PRIVILEGES ON *.* TO `ferry`@`%`"]),
    }
}

fn status_of(checks: &[Check], name: &str) -> (CheckStatus, Option<String>) {
    let c = checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}"));
    (c.status, c.fix.clone())
}

#[test]
fn healthy_server_passes_everything() {
    let checks = server_checks(&facts(&[]), 8_470_001);
    for c in &checks {
        assert_eq!(c.status, CheckStatus::Pass, "{c:?}");
        assert_eq!(c.side, "source");
    }
    assert_eq!(checks.len(), 7);
}

#[test]
fn binlog_settings_table() {
    let cases: &[(Vars, &str, CheckStatus, &str)] = &[
        (
            &[("log_bin", "OFF")],
            "log_bin",
            CheckStatus::Fail,
            "log_bin=mysql-bin",
        ),
        (&[("log_bin", "")], "log_bin", CheckStatus::Fail, "my.cnf"),
        (
            &[("binlog_format", "STATEMENT")],
            "binlog_format",
            CheckStatus::Fail,
            "SET GLOBAL binlog_format=ROW",
        ),
        (
            &[("binlog_format", "MIXED")],
            "binlog_format",
            CheckStatus::Fail,
            "binlog_format=ROW under [mysqld]",
        ),
        (
            &[("binlog_format", "row")],
            "binlog_format",
            CheckStatus::Pass,
            "",
        ),
        (
            &[("binlog_row_image", "MINIMAL")],
            "binlog_row_image",
            CheckStatus::Fail,
            "SET GLOBAL binlog_row_image=FULL",
        ),
        (
            &[("binlog_row_image", "")],
            "binlog_row_image",
            CheckStatus::Pass,
            "",
        ),
        (
            &[("server_id", "0")],
            "server_id",
            CheckStatus::Fail,
            "non-zero",
        ),
        (
            &[("server_id", "8470001")],
            "server_id",
            CheckStatus::Fail,
            "mysql.server_id",
        ),
        (
            &[("gtid_strict_mode", "OFF")],
            "gtid",
            CheckStatus::Warn,
            "gtid_strict_mode=ON",
        ),
        (
            &[("server_id", "0"), ("basedir", "/rdsdbbin/mysql")],
            "server_id",
            CheckStatus::Fail,
            "non-zero",
        ),
        (
            &[("binlog_format", "MIXED"), ("basedir", "/rdsdbbin/mysql")],
            "binlog_format",
            CheckStatus::Fail,
            "parameter group",
        ),
    ];
    for (vars, name, want, fix_part) in cases {
        let checks = server_checks(&facts(vars), 8_470_001);
        let (status, fix) = status_of(&checks, name);
        assert_eq!(status, *want, "{vars:?}");
        if *want != CheckStatus::Pass {
            let fix = fix.expect("failures carry a fix");
            assert!(fix.contains(fix_part), "{vars:?}: {fix}");
        }
    }
}

#[test]
fn retention_table() {
    let cases: &[(Vars, Option<Option<u64>>, CheckStatus)] = &[
        (&[], None, CheckStatus::Pass), // 0 = never
        (
            &[("binlog_expire_logs_seconds", "2592000")],
            None,
            CheckStatus::Pass,
        ), // 30 days
        (
            &[("binlog_expire_logs_seconds", "3600")],
            None,
            CheckStatus::Warn,
        ),
        (
            &[
                ("binlog_expire_logs_seconds", ""),
                ("expire_logs_days", "7.000000"),
            ],
            None,
            CheckStatus::Pass,
        ),
        (
            &[
                ("binlog_expire_logs_seconds", ""),
                ("expire_logs_days", "0.5"),
            ],
            None,
            CheckStatus::Warn,
        ),
        (
            &[("binlog_expire_logs_seconds", ""), ("expire_logs_days", "")],
            None,
            CheckStatus::Warn,
        ),
        (
            &[("basedir", "/rdsdbbin/mysql")],
            Some(Some(72)),
            CheckStatus::Pass,
        ),
        (
            &[("basedir", "/rdsdbbin/mysql")],
            Some(Some(12)),
            CheckStatus::Warn,
        ),
        (
            &[("basedir", "/rdsdbbin/mysql")],
            Some(None),
            CheckStatus::Warn,
        ),
        (&[("basedir", "/rdsdbbin/mysql")], None, CheckStatus::Warn),
    ];
    for (vars, rds, want) in cases {
        let mut f = facts(vars);
        f.rds_retention_hours = *rds;
        let c = retention_check(&f);
        assert_eq!(c.status, *want, "{vars:?} {rds:?}: {c:?}");
        if f.is_rds() && *want != CheckStatus::Pass {
            assert!(c.fix.unwrap().contains("rds_set_configuration"));
        }
    }
}

#[test]
fn mysql_flavor_checks() {
    let mut f = facts(&[("gtid_mode", "OFF")]);
    f.version = "8.0.36".into();
    f.version_comment = "MySQL Community Server - GPL".into();
    assert_eq!(f.flavor(), Flavor::MySql);
    let checks = server_checks(&f, 1234);
    assert_eq!(status_of(&checks, "gtid").0, CheckStatus::Warn);
    assert_eq!(status_of(&checks, "server version").0, CheckStatus::Pass);
    // Partial JSON updates: applied with a FULL row image, refused otherwise.
    f.variables
        .insert("binlog_row_value_options".into(), "PARTIAL_JSON".into());
    assert_eq!(
        status_of(&server_checks(&f, 1234), "binlog_row_value_options").0,
        CheckStatus::Pass
    );
    f.variables
        .insert("binlog_row_image".into(), "MINIMAL".into());
    let (status, fix) = status_of(&server_checks(&f, 1234), "binlog_row_value_options");
    assert_eq!(status, CheckStatus::Fail);
    assert!(fix.unwrap().contains("binlog_row_image=FULL"));
    f.variables.insert("binlog_row_image".into(), "FULL".into());
    f.variables.remove("binlog_row_value_options");
    f.version = "5.6.51".into();
    assert_eq!(
        status_of(&server_checks(&f, 1234), "server version").0,
        CheckStatus::Fail
    );
}

#[test]
fn versions_parse() {
    assert_eq!(
        numeric_version("10.11.19-MariaDB-0+deb12u1"),
        Some((10, 11, 19))
    );
    assert_eq!(numeric_version("5.5.5-10.6.14-MariaDB"), Some((10, 6, 14)));
    assert_eq!(numeric_version("8.0.mysql_aurora.3.05.2"), Some((8, 0, 0)));
    assert_eq!(numeric_version("garbage"), None);
}

fn table(db: &str, name: &str, key: bool, engine: &str) -> SourceTable {
    use ferry_core::{Column, ReplicaIdentity, TableId, TableSchema};
    SourceTable {
        schema: TableSchema {
            id: TableId::new(db, name),
            columns: vec![Column {
                name: "id".into(),
                source_type: "int(11)".into(),
                pg_type: "integer".into(),
                type_oid: None,
                nullable: false,
            }],
            key: if key { vec![0] } else { vec![] },
            replica_identity: ReplicaIdentity::Full,
        },
        engine: Some(engine.into()),
        row_estimate: Some(3),
        unknown_types: vec![],
    }
}

#[test]
fn privileges_missing_fail_with_grant_fix() {
    let mut f = facts(&[]);
    f.privileges = Privileges::parse(["GRANT SELECT ON `shop`.* TO `f`@`%`"]);
    f.current_user = "f@%".into();
    let tables = [
        table("shop", "a", true, "InnoDB"),
        table("crm", "b", true, "InnoDB"),
    ];
    let checks = privilege_checks(&f, &tables);
    let (status, fix) = status_of(&checks, "replication privileges");
    assert_eq!(status, CheckStatus::Fail);
    assert_eq!(
        fix.unwrap(),
        "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'f'@'%'"
    );
    let sel = checks
        .iter()
        .find(|c| c.name == "select privilege")
        .unwrap();
    assert_eq!(sel.status, CheckStatus::Fail);
    assert!(
        sel.detail.contains("crm.b") && !sel.detail.contains("shop.a"),
        "{}",
        sel.detail
    );
    assert_eq!(
        sel.fix.as_deref(),
        Some("GRANT SELECT ON `crm`.* TO 'f'@'%'")
    );
}

#[test]
fn roles_turn_failures_into_warnings() {
    let mut f = facts(&[]);
    f.privileges = Privileges::parse(["GRANT USAGE ON *.* TO `f`@`%`", "GRANT `r`@`%` TO `f`@`%`"]);
    let checks = privilege_checks(&f, &[table("shop", "a", true, "InnoDB")]);
    assert!(
        checks.iter().all(|c| c.status == CheckStatus::Warn),
        "{checks:?}"
    );
}

#[test]
fn table_warnings() {
    let checks = table_checks(
        &[
            table("shop", "a", false, "MyISAM"),
            table("shop", "b", true, "InnoDB"),
        ],
        &["shop".into()],
    );
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert!(checks.iter().all(|c| c.status == CheckStatus::Warn));
    assert!(checks.iter().any(|c| c.name == "primary key shop.a"));
    assert!(checks.iter().any(|c| c.name == "engine shop.a"));
    let none = table_checks(&[], &["shop".into()]);
    assert_eq!(none[0].status, CheckStatus::Fail);
}

#[test]
fn the_plan_names_the_snapshot_method() {
    use ferry_core::config::SnapshotMethod;
    let maria = snapshot_check(Flavor::MariaDb, SnapshotMethod::Auto);
    assert_eq!(maria.status, CheckStatus::Pass);
    assert!(
        maria
            .detail
            .starts_with("consistent (mysql.snapshot = \"auto\")"),
        "{}",
        maria.detail
    );
    assert!(maria.detail.contains("binlog_snapshot_file"));
    let forced = snapshot_check(Flavor::MariaDb, SnapshotMethod::Watermark);
    assert_eq!(forced.status, CheckStatus::Pass);
    assert!(
        forced
            .detail
            .starts_with("watermark (mysql.snapshot = \"watermark\")"),
        "{}",
        forced.detail
    );
    let mysql = snapshot_check(Flavor::MySql, SnapshotMethod::Auto);
    assert_eq!(mysql.status, CheckStatus::Warn);
    assert!(
        mysql
            .detail
            .starts_with("watermark (mysql.snapshot = \"auto\")"),
        "{}",
        mysql.detail
    );
    assert!(mysql.detail.contains("refuses"));
}

#[test]
fn the_watermark_load_needs_a_primary_key() {
    let checks = watermark_key_checks(&[
        table("shop", "a", true, "InnoDB"),
        table("shop", "log", false, "InnoDB"),
    ]);
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].status, CheckStatus::Fail);
    assert!(
        checks[0].detail.starts_with("shop.log has no primary key"),
        "{}",
        checks[0].detail
    );
}
