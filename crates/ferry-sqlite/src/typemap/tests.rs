use super::*;

fn s(rowid: i64, value: Sampled) -> Sample {
    Sample {
        rowid: Some(rowid),
        value,
    }
}

fn text(rowid: i64, t: &str) -> Sample {
    s(rowid, Sampled::Text(t.to_owned()))
}

#[test]
fn declared_types_table() {
    use Sampled::*;
    let ints = [s(1, Integer(1)), s(2, Null), s(3, Integer(-7))];
    let mixed = [s(1, Integer(1)), s(2, Real(1.5))];
    let strings = [text(1, "a"), text(2, "b")];
    let cases: &[(&str, bool, &[Sample], &str)] = &[
        ("INTEGER", true, &ints, "bigint"),
        ("INTEGER", false, &ints, "bigint"),
        ("INT", false, &ints, "bigint"),
        ("MEDIUMINT UNSIGNED", false, &ints, "bigint"),
        (
            "BOOLEAN",
            false,
            &[s(1, Integer(0)), s(2, Integer(1)), s(3, Null)],
            "boolean",
        ),
        (
            "BOOLEAN",
            false,
            &[s(1, Integer(0)), s(2, Integer(2))],
            "bigint",
        ),
        ("REAL", false, &mixed, "double precision"),
        ("DOUBLE", false, &mixed, "double precision"),
        ("FLOAT", false, &ints, "double precision"),
        ("NUMERIC(10,2)", false, &mixed, "numeric(10,2)"),
        ("DECIMAL(4,2)", false, &[s(1, Real(99.99))], "numeric(4,2)"),
        ("NUMERIC", false, &mixed, "numeric"),
        ("TEXT", false, &strings, "text"),
        ("VARCHAR(45)", false, &strings, "text"),
        ("NVARCHAR(120)", false, &strings, "text"),
        ("CHAR(20)", false, &strings, "text"),
        ("BLOB", false, &[s(1, Blob), s(2, Null)], "bytea"),
        ("DATE", false, &[text(1, "2024-02-29"), s(2, Null)], "date"),
        (
            "DATE",
            false,
            &[text(1, "2024-02-29"), text(2, "2024-03-01 10:00:00")],
            "timestamp",
        ),
        (
            "DATETIME",
            false,
            &[
                text(1, "2009-01-01 00:00:00"),
                text(2, "2009-01-02T03:04:05.123"),
            ],
            "timestamp",
        ),
        (
            "TIMESTAMP",
            false,
            &[text(1, "2006-02-15 04:34:33")],
            "timestamp",
        ),
        (
            "TIMESTAMP",
            false,
            &[
                text(1, "2006-02-15 04:34:33Z"),
                text(2, "2006-02-15T04:34:33+02:00"),
            ],
            "timestamptz",
        ),
        (
            "TIME",
            false,
            &[text(1, "12:30"), text(2, "23:59:59.5")],
            "time",
        ),
        ("", false, &ints, "bigint"),
        ("", false, &mixed, "double precision"),
        ("", false, &strings, "text"),
        ("", false, &[s(1, Blob)], "bytea"),
        ("", false, &[], "text"),
        ("YEAR", false, &ints, "bigint"),
        ("ENUM", false, &strings, "text"),
    ];
    for (declared, alias, samples, want) in cases {
        let inf = infer(declared, *alias, samples);
        assert_eq!(inf.pg_type, *want, "{declared} {samples:?}");
        assert!(inf.misfits.is_empty(), "{declared}: {:?}", inf.misfits);
    }
}

#[test]
fn misfits_name_their_rows() {
    use Sampled::*;
    let inf = infer(
        "INTEGER",
        false,
        &[s(1, Integer(1)), text(2, "abc"), s(3, Real(0.5))],
    );
    assert_eq!(inf.pg_type, "bigint");
    assert_eq!(
        inf.misfits.iter().map(|m| m.rowid).collect::<Vec<_>>(),
        [Some(2), Some(3)]
    );

    let inf = infer(
        "DATETIME",
        false,
        &[
            text(1, "2009-01-01 00:00:00"),
            text(7, "yesterday"),
            s(9, Integer(5)),
        ],
    );
    assert_eq!(inf.pg_type, "text");
    assert_eq!(
        inf.misfits.iter().map(|m| m.rowid).collect::<Vec<_>>(),
        [Some(7), Some(9)]
    );
    assert!(inf.note.is_some());

    let inf = infer(
        "NUMERIC(4,2)",
        false,
        &[s(1, Real(99.5)), s(2, Real(123.0)), s(3, Integer(100))],
    );
    assert_eq!(
        inf.misfits.iter().map(|m| m.rowid).collect::<Vec<_>>(),
        [Some(2), Some(3)]
    );

    let inf = infer("TEXT", false, &[text(1, "x"), s(4, Blob)]);
    assert_eq!(
        inf.misfits,
        [Misfit {
            rowid: Some(4),
            reason: "blob in a text column"
        }]
    );

    let inf = infer("BOOLEAN", false, &[s(1, Integer(3))]);
    assert!(inf.note.unwrap().contains("other than 0/1"));
}

#[test]
fn temporal_parsing() {
    for ok in [
        "2024-02-29",
        "2000-02-29",
        "2023-12-31",
        "1999-12-31 23:59:59",
        "2000-01-01T00:00",
        "2000-01-01 00:00:00.123456789",
    ] {
        assert!(parse_temporal(ok).is_some(), "{ok}");
    }
    for bad in [
        "2023-02-29",
        "1900-02-29",
        "2024-04-31",
        "2024-00-10",
        "2024-01-00",
        "2024-13-01",
        "2024-1-1",
        "24:00",
        "2024-01-01 10:00:00+",
        "2024-01-01 10:00:00 UTC",
        "",
        "2024-01-01x",
        "१२३४-01-01",
    ] {
        assert_eq!(parse_temporal(bad), None, "{bad}");
    }
}
