use std::collections::BTreeMap;

use ferry_core::ddl::{Before, ConstraintState, IndexState};

use super::*;

fn col(attnum: i16, name: &str, ty: &str) -> ColumnState {
    ColumnState {
        attnum,
        name: name.into(),
        type_name: ty.into(),
        ..ColumnState::default()
    }
}

fn tcol(name: &str, ty: &str) -> TargetColumn {
    TargetColumn {
        name: name.into(),
        type_name: ty.into(),
        ..TargetColumn::default()
    }
}

fn state(columns: Vec<ColumnState>, before: &[(i16, &str)]) -> TableState {
    TableState {
        schema: "public".into(),
        name: "orders".into(),
        kind: "r".into(),
        replident: "d".into(),
        columns,
        before: (!before.is_empty()).then(|| Before {
            schema: "public".into(),
            name: "orders".into(),
            parent: None,
            columns: before
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_string()))
                .collect::<BTreeMap<_, _>>(),
            objects: BTreeMap::new(),
        }),
        ..TableState::default()
    }
}

fn target(columns: Vec<TargetColumn>, has_rows: bool) -> TargetTable {
    TargetTable {
        columns,
        replident: "d".into(),
        has_rows,
        ..TargetTable::default()
    }
}

const OPTS: Options = Options { foreign_keys: true };

fn id() -> TableId {
    TableId::new("app", "Orders")
}

#[test]
fn renames_drops_adds_and_retypes() {
    // (case, source state, target, expected statements)
    let mut retyped = state(
        vec![col(1, "id", "bigint"), col(3, "amount", "numeric(12,2)")],
        &[],
    );
    retyped
        .type_changes
        .insert("amount".into(), Some("amount / 100.0".into()));
    let mut added = col(4, "status", "text");
    added.not_null = true;
    added.default = Some("'new'::text".into());
    added.missing = Some("new".into());
    let mut stamped = col(5, "seen", "timestamp with time zone");
    stamped.default = Some("now()".into());
    stamped.missing = Some("2026-12-02 08:00:00+00".into());
    let cases: Vec<(&str, TableState, TargetTable, Vec<&str>)> = vec![
        (
            "rename by attnum",
            state(
                vec![col(1, "id", "bigint"), col(2, "remark", "text")],
                &[(1, "id"), (2, "note")],
            ),
            target(vec![tcol("id", "bigint"), tcol("note", "text")], true),
            vec![r#"ALTER TABLE "app"."Orders" RENAME COLUMN "note" TO "remark""#],
        ),
        (
            "drop",
            state(vec![col(1, "id", "bigint")], &[(1, "id"), (2, "legacy")]),
            target(vec![tcol("id", "bigint"), tcol("legacy", "text")], true),
            vec![r#"ALTER TABLE "app"."Orders" DROP COLUMN "legacy""#],
        ),
        (
            "retype with USING",
            retyped,
            target(vec![tcol("id", "bigint"), tcol("amount", "integer")], true),
            vec![
                r#"ALTER TABLE "app"."Orders" ALTER COLUMN "amount" TYPE numeric(12,2) USING amount / 100.0"#,
            ],
        ),
        (
            "NOT NULL with a default: existing rows get the source's value",
            state(vec![col(1, "id", "bigint"), added, stamped], &[]),
            target(vec![tcol("id", "bigint")], true),
            vec![
                r#"ALTER TABLE "app"."Orders" ADD COLUMN "status" text DEFAULT 'new'::text NOT NULL"#,
                r#"ALTER TABLE "app"."Orders" ALTER COLUMN "status" SET DEFAULT 'new'::text"#,
                r#"ALTER TABLE "app"."Orders" ADD COLUMN "seen" timestamp with time zone DEFAULT '2026-12-02 08:00:00+00'::timestamp with time zone"#,
                r#"ALTER TABLE "app"."Orders" ALTER COLUMN "seen" SET DEFAULT now()"#,
            ],
        ),
    ];
    for (name, src, tgt, want) in cases {
        let got = alter_table(&src, &id(), &tgt, OPTS).unwrap();
        assert_eq!(got.statements, want, "{name}");
    }
}

#[test]
fn unknown_conversions_and_volatile_defaults_stop() {
    let src = state(
        vec![col(1, "id", "bigint"), col(2, "amount", "numeric")],
        &[],
    );
    let tgt = target(vec![tcol("id", "bigint"), tcol("amount", "integer")], true);
    let e = alter_table(&src, &id(), &tgt, OPTS).unwrap_err();
    assert!(
        e.what.contains("changed type from integer to numeric"),
        "{e:?}"
    );
    assert!(e.fix.contains("USING"), "{e:?}");

    let mut v = col(2, "token", "uuid");
    v.default = Some("gen_random_uuid()".into());
    let src = state(vec![col(1, "id", "bigint"), v.clone()], &[]);
    let e = alter_table(&src, &id(), &target(vec![tcol("id", "bigint")], true), OPTS).unwrap_err();
    assert!(e.what.contains("volatile DEFAULT"), "{e:?}");
    // On an empty table nothing had to be computed.
    let ok = alter_table(
        &src,
        &id(),
        &target(vec![tcol("id", "bigint")], false),
        OPTS,
    )
    .unwrap();
    assert_eq!(
        ok.statements,
        vec![r#"ALTER TABLE "app"."Orders" ADD COLUMN "token" uuid DEFAULT gen_random_uuid()"#]
    );
}

#[test]
fn constraints_and_indexes_by_name() {
    let mut src = state(vec![col(1, "id", "bigint")], &[]);
    src.constraints = vec![
        ConstraintState {
            oid: 1,
            name: "orders_pkey".into(),
            kind: "p".into(),
            def: "PRIMARY KEY (id)".into(),
            references: None,
        },
        ConstraintState {
            oid: 2,
            name: "orders_fk".into(),
            kind: "f".into(),
            def: "FOREIGN KEY (id) REFERENCES public.x(id)".into(),
            references: None,
        },
    ];
    src.indexes = vec![IndexState {
        oid: 3,
        name: "orders_id_idx".into(),
        def: "CREATE INDEX orders_id_idx ON public.orders USING btree (id) WHERE (id > 0)".into(),
        comment: None,
    }];
    let mut tgt = target(vec![tcol("id", "bigint")], true);
    tgt.constraints = vec![("orders_pkey".into(), "PRIMARY KEY (id)".into())];
    let got = alter_table(&src, &id(), &tgt, OPTS).unwrap();
    assert_eq!(
        got.statements,
        vec![
            r#"ALTER TABLE "app"."Orders" ADD CONSTRAINT "orders_fk" FOREIGN KEY (id) REFERENCES public.x(id)"#,
            r#"CREATE INDEX "orders_id_idx" ON "app"."Orders" USING btree (id) WHERE (id > 0)"#,
        ]
    );
    // No-replica-role mode: the foreign key is recorded, not created.
    let got = alter_table(
        &src,
        &id(),
        &tgt,
        Options {
            foreign_keys: false,
        },
    )
    .unwrap();
    assert_eq!(got.statements.len(), 1);
    assert!(
        got.not_carried[0].contains("orders_fk"),
        "{:?}",
        got.not_carried
    );
    // Present with the same definition: nothing.
    tgt.constraints.push((
        "orders_fk".into(),
        "FOREIGN KEY (id) REFERENCES public.x(id) NOT VALID".into(),
    ));
    tgt.indexes.push((
        "orders_id_idx".into(),
        "USING btree (id) WHERE (id > 0)".into(),
    ));
    assert!(
        alter_table(&src, &id(), &tgt, OPTS)
            .unwrap()
            .statements
            .is_empty()
    );
}

#[test]
fn index_definitions_move_to_the_target_name() {
    let t = TableId::new("archive", "Old Orders");
    assert_eq!(
        index_sql(
            "CREATE UNIQUE INDEX \"Idx\" ON ONLY public.orders USING btree (lower(customer))",
            "Idx",
            &t
        )
        .as_deref(),
        Some(
            r#"CREATE UNIQUE INDEX "Idx" ON ONLY "archive"."Old Orders" USING btree (lower(customer))"#
        )
    );
    assert_eq!(
        index_sql("CREATE INDEX other ON public.t USING btree (a)", "idx", &t),
        None
    );
}

#[test]
fn new_tables_and_partitions() {
    let mut src = state(vec![col(1, "id", "bigint"), col(2, "at", "date")], &[]);
    src.partkey = Some("RANGE (at)".into());
    src.kind = "p".into();
    src.comment = Some("it's".into());
    let plan = create_table(&src, &id(), None, OPTS);
    assert_eq!(
        plan.statements,
        vec![
            r#"CREATE SCHEMA IF NOT EXISTS "app""#.to_owned(),
            "CREATE TABLE \"app\".\"Orders\" (\n    \"id\" bigint,\n    \"at\" date\n) PARTITION BY RANGE (at)".to_owned(),
            r#"COMMENT ON TABLE "app"."Orders" IS 'it''s'"#.to_owned(),
        ]
    );
    let mut child = state(vec![col(1, "id", "bigint")], &[]);
    child.parent = Some(ferry_core::ddl::PartitionRef {
        schema: "public".into(),
        name: "orders".into(),
        bound: "FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')".into(),
    });
    let parent = TableId::new("app", "Orders");
    let plan = create_table(&child, &TableId::new("app", "o27"), Some(&parent), OPTS);
    assert_eq!(
        plan.statements[1],
        r#"CREATE TABLE "app"."o27" PARTITION OF "app"."Orders" FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')"#
    );
}

#[test]
fn without_the_names_before_a_rename_is_not_guessed() {
    let src = state(vec![col(1, "id", "bigint"), col(2, "remark", "text")], &[]);
    let tgt = target(vec![tcol("id", "bigint"), tcol("note", "text")], true);
    let e = alter_table(&src, &id(), &tgt, OPTS).unwrap_err();
    assert!(
        e.what.contains("cannot be told from a drop and an add"),
        "{e:?}"
    );
}

#[test]
fn names_quoted_as_the_server_prints_them() {
    assert_eq!(
        server_quoted(&TableId::new("public", "orders")),
        "public.orders"
    );
    assert_eq!(
        server_quoted(&TableId::new("Sales", "order items")),
        r#""Sales"."order items""#
    );
}

#[test]
fn identity_and_generated_expression_changes() {
    let t = r#""app"."Orders""#;
    // ADD GENERATED ALWAYS AS IDENTITY on a column that was nullable.
    let mut id_col = col(1, "id", "bigint");
    id_col.not_null = true;
    id_col.identity = Some("a".into());
    let got = alter_table(
        &state(vec![id_col], &[]),
        &id(),
        &target(vec![tcol("id", "bigint")], true),
        OPTS,
    )
    .unwrap();
    assert_eq!(
        got.statements,
        vec![
            format!(r#"ALTER TABLE {t} ALTER COLUMN "id" SET NOT NULL"#),
            format!(r#"ALTER TABLE {t} ALTER COLUMN "id" ADD GENERATED BY DEFAULT AS IDENTITY"#),
        ]
    );
    assert!(got.not_carried.is_empty(), "{got:?}");
    // DROP IDENTITY, then DROP NOT NULL (an identity column keeps NOT NULL).
    let mut with_identity = tcol("id", "bigint");
    with_identity.not_null = true;
    with_identity.identity = Some("d".into());
    let got = alter_table(
        &state(vec![col(1, "id", "bigint")], &[]),
        &id(),
        &target(vec![with_identity.clone()], true),
        OPTS,
    )
    .unwrap();
    assert_eq!(
        got.statements,
        vec![
            format!(r#"ALTER TABLE {t} ALTER COLUMN "id" DROP IDENTITY IF EXISTS"#),
            format!(r#"ALTER TABLE {t} ALTER COLUMN "id" DROP NOT NULL"#),
        ]
    );
    // ALWAYS on the source, BY DEFAULT on the target: the steady state.
    let mut always = col(1, "id", "bigint");
    always.not_null = true;
    always.identity = Some("a".into());
    let got = alter_table(
        &state(vec![always], &[]),
        &id(),
        &target(vec![with_identity], true),
        OPTS,
    )
    .unwrap();
    assert!(
        got.statements.is_empty() && got.not_carried.is_empty(),
        "{got:?}"
    );
    // DROP EXPRESSION and SET EXPRESSION.
    let mut generated = tcol("total", "numeric");
    generated.generated = Some("(price * 2::numeric)".into());
    let got = alter_table(
        &state(vec![col(1, "total", "numeric")], &[]),
        &id(),
        &target(vec![generated.clone()], true),
        OPTS,
    )
    .unwrap();
    assert_eq!(
        got.statements,
        vec![format!(
            r#"ALTER TABLE {t} ALTER COLUMN "total" DROP EXPRESSION"#
        )]
    );
    let mut changed = col(1, "total", "numeric");
    changed.generated = Some("(price * 3::numeric)".into());
    let got = alter_table(
        &state(vec![changed], &[]),
        &id(),
        &target(vec![generated], true),
        OPTS,
    )
    .unwrap();
    assert_eq!(got.statements.len(), 1, "{got:?}");
    let sql = &got.statements[0];
    assert!(sql.starts_with("DO $ferry$"), "{sql}");
    assert!(
        sql.contains(r#"ALTER TABLE "app"."Orders" ALTER COLUMN "total" SET EXPRESSION AS ((price * 3::numeric))"#),
        "{sql}"
    );
    assert!(sql.contains("PostgreSQL before 17"), "{sql}");
}

#[test]
fn identity_records_follow_the_source_kind() {
    // (case, source columns (name, identity), recorded, to record, to remove)
    type Case = (
        &'static str,
        Vec<(&'static str, Option<&'static str>)>,
        Vec<&'static str>,
        Vec<&'static str>,
        Vec<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "steady ALWAYS",
            vec![("id", Some("a"))],
            vec!["id"],
            vec![],
            vec![],
        ),
        (
            "SET GENERATED ALWAYS",
            vec![("id", Some("a"))],
            vec![],
            vec!["id"],
            vec![],
        ),
        (
            "SET GENERATED BY DEFAULT",
            vec![("id", Some("d"))],
            vec!["id"],
            vec![],
            vec!["id"],
        ),
        (
            "DROP IDENTITY",
            vec![("id", None)],
            vec!["id"],
            vec![],
            vec!["id"],
        ),
        (
            "renamed",
            vec![("ident", Some("a"))],
            vec!["id"],
            vec!["ident"],
            vec!["id"],
        ),
        (
            "two columns, one changed",
            vec![("a", Some("a")), ("b", Some("d")), ("c", None)],
            vec!["a", "b"],
            vec![],
            vec!["b"],
        ),
    ];
    for (case, cols, recorded, add, remove) in cases {
        let columns = cols
            .iter()
            .enumerate()
            .map(|(i, (n, k))| {
                let mut c = col(i as i16 + 1, n, "bigint");
                c.identity = k.map(str::to_owned);
                c
            })
            .collect();
        let recorded: Vec<String> = recorded.iter().map(|s| s.to_string()).collect();
        let (a, r) = identity_records(&state(columns, &[]), &recorded);
        assert_eq!(a, add, "{case}: to record");
        assert_eq!(r, remove, "{case}: to remove");
    }
    // A partition's identity follows its parent's.
    let mut part = state(vec![col(1, "id", "bigint")], &[]);
    part.columns[0].identity = Some("a".into());
    part.parent = Some(ferry_core::ddl::PartitionRef::default());
    assert_eq!(
        identity_records(&part, &["x".into()]),
        (Vec::new(), Vec::new())
    );
}

#[test]
fn not_null_constraint_names_follow_the_source() {
    let t = r#""app"."Orders""#;
    let named = |name: &str, nn: Option<&str>| {
        let mut c = col(1, name, "bigint");
        c.not_null = true;
        c.not_null_name = nn.map(str::to_owned);
        c
    };
    let tnamed = |nn: Option<&str>, inherited: bool| {
        let mut c = tcol("id", "bigint");
        c.not_null = nn.is_some();
        c.not_null_name = nn.map(str::to_owned);
        c.not_null_inherited = inherited;
        c
    };
    let target18 = |c: TargetColumn| TargetTable {
        named_not_null: true,
        ..target(vec![c], true)
    };
    // (case, source column, target, statements, a not-carried note)
    let cases: Vec<(&str, ColumnState, TargetTable, Vec<String>, bool)> = vec![
        (
            "SET NOT NULL on 18: the source's name",
            named("id", Some("events_id_not_null")),
            target18(tnamed(None, false)),
            vec![format!(
                r#"ALTER TABLE {t} ADD CONSTRAINT "events_id_not_null" NOT NULL "id""#
            )],
            false,
        ),
        (
            "SET NOT NULL from a source before 18",
            named("id", None),
            target18(tnamed(None, false)),
            vec![format!(r#"ALTER TABLE {t} ALTER COLUMN "id" SET NOT NULL"#)],
            false,
        ),
        (
            "a target before 18 has no names",
            named("id", Some("events_id_not_null")),
            target(vec![tnamed(None, false)], true),
            vec![format!(r#"ALTER TABLE {t} ALTER COLUMN "id" SET NOT NULL"#)],
            false,
        ),
        (
            "another name on the target: renamed",
            named("id", Some("events_id_not_null")),
            target18(tnamed(Some("orders_id_not_null"), false)),
            vec![format!(
                r#"ALTER TABLE {t} RENAME CONSTRAINT "orders_id_not_null" TO "events_id_not_null""#
            )],
            false,
        ),
        (
            "another name, inherited on the target: noted",
            named("id", Some("events_id_not_null")),
            target18(tnamed(Some("orders_id_not_null"), true)),
            vec![],
            true,
        ),
        (
            "same name",
            named("id", Some("events_id_not_null")),
            target18(tnamed(Some("events_id_not_null"), true)),
            vec![],
            false,
        ),
        (
            "added NOT VALID",
            ColumnState {
                not_null_not_valid: true,
                ..named("id", Some("id_nn"))
            },
            target18(tnamed(None, false)),
            vec![format!(
                r#"ALTER TABLE {t} ADD CONSTRAINT "id_nn" NOT NULL "id" NOT VALID"#
            )],
            false,
        ),
        (
            "validated",
            named("id", Some("id_nn")),
            target18(TargetColumn {
                not_null_not_valid: true,
                ..tnamed(Some("id_nn"), false)
            }),
            vec![format!(r#"ALTER TABLE {t} VALIDATE CONSTRAINT "id_nn""#)],
            false,
        ),
        (
            "DROP NOT NULL",
            col(1, "id", "bigint"),
            target18(tnamed(Some("events_id_not_null"), false)),
            vec![format!(
                r#"ALTER TABLE {t} ALTER COLUMN "id" DROP NOT NULL"#
            )],
            false,
        ),
    ];
    for (case, c, tgt, want, noted) in cases {
        let got = alter_table(&state(vec![c], &[]), &id(), &tgt, OPTS).unwrap();
        assert_eq!(got.statements, want, "{case}");
        assert_eq!(!got.not_carried.is_empty(), noted, "{case}: {got:?}");
    }
    // Added and created columns carry the name.
    let mut added = named("seen", Some("events_seen_not_null"));
    added.attnum = 2;
    added.default = Some("0".into());
    added.missing = Some("0".into());
    let got = alter_table(
        &state(vec![named("id", Some("x")), added], &[]),
        &id(),
        &target18(tnamed(Some("x"), false)),
        OPTS,
    );
    let got = got.unwrap().statements;
    assert!(
        got[0].contains(r#"DEFAULT '0'::bigint CONSTRAINT "events_seen_not_null" NOT NULL"#),
        "{got:?}"
    );
    let mut created = state(vec![named("id", Some("events_id_not_null"))], &[]);
    created.columns.push(named("at", None));
    let got = create_table(&created, &id(), None, OPTS).statements;
    assert!(
        got[1].contains(r#""id" bigint CONSTRAINT "events_id_not_null" NOT NULL,"#)
            && got[1].contains(r#""at" bigint NOT NULL"#),
        "{got:?}"
    );
}
