//! Two more real sample databases through `ferry plan`, `ferry run` and a
//! cutover, via the CLI against real servers, with writes while ferry
//! streams, each ending with an exact comparison of every table:
//!
//! - Pagila 0.10.1, the original port: `payment` partitioned the old way,
//!   by child tables that inherit it (no key of their own) and `DO
//!   INSTEAD` rules that route inserts on the parent; a dump written with
//!   `standard_conforming_strings = off`. ferry refuses the keyless
//!   children until they have a replica identity, naming each and the fix.
//! - Northwind: `character(n)` keys, `bytea` pictures, `real` prices, a
//!   plain INSERT script.

use ferry_e2e::migration::{Migration, target_options};
use ferry_testkit::{PgOptions, PgServer, dataset_file};

/// A source holding the dataset `files` (run in order, as `psql -f`), and
/// an empty target.
fn migration_of(files: &[&str]) -> Migration {
    let source = PgServer::start(PgOptions::new()).expect("source");
    let db = source.create_database("src").expect("source database");
    // The dumps give their objects to `postgres`.
    source
        .psql(
            "postgres",
            "DO $$ BEGIN CREATE ROLE postgres; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
        )
        .expect("role postgres");
    for f in files {
        let path = dataset_file(f).expect("dataset file (../shared/datasets)");
        source.psql_file(&db, path).expect("loading the dataset");
    }
    let url = source.url(&db);
    Migration::with_source(source, db, url, target_options())
}

/// Every table of schema `public` on the source, as `schema.name`.
fn public_tables(m: &Migration) -> Vec<String> {
    let list = m
        .source
        .psql(
            &m.source_db,
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname = 'public' ORDER BY 1",
        )
        .expect("listing tables");
    list.lines().map(str::to_owned).collect()
}

/// `ferry run` until it streams, `writes` on the source meanwhile, an
/// exact comparison of every table once the target caught up, the cutover,
/// and the comparison again. Returns the tables compared.
fn migrate_with_writes(m: &Migration, writes: &str) -> Vec<String> {
    let mut ferry = m.start("run");
    m.wait_state_phase(&mut ferry, "stream");
    m.source
        .psql(&m.source_db, writes)
        .expect("writes on the source");
    let tables = public_tables(m);
    let names: Vec<&str> = tables.iter().map(String::as_str).collect();
    m.compare_caught_up(&names);
    m.cutover(ferry, &["--max-lag", "60s", "--timeout", "60s"]);
    m.compare(&names);
    tables
}

#[test]
fn pagila_0_10_1_with_inherited_partitions_and_insert_rules() {
    let m = migration_of(&[
        "pagila-0.10.1/pagila-schema.sql",
        "pagila-0.10.1/pagila-data.sql",
    ]);
    let children: Vec<String> = (1..=6).map(|i| format!("payment_p2007_0{i}")).collect();

    // The children have no key: ferry plan refuses each, with the fix.
    let plan = m.ferry(&["plan"]);
    assert_eq!(plan.code, Some(2), "{}", plan.all());
    for child in &children {
        assert!(
            plan.stdout.contains(&format!(
                "ALTER TABLE \"public\".\"{child}\" REPLICA IDENTITY FULL"
            )),
            "the refusal names {child} and the fix: {}",
            plan.all()
        );
    }
    // The fix as the refusal gives it.
    let fix: String = children
        .iter()
        .map(|c| format!("ALTER TABLE public.{c} REPLICA IDENTITY FULL;"))
        .collect();
    m.source.psql(&m.source_db, &fix).expect("replica identity");
    let plan = m.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());

    // The application's writes, as it makes them: an insert on the parent
    // that a rule routes into a child, updates and a delete of keyless
    // child rows (through the parent too), a value with a backslash and a
    // quote.
    let tables = migrate_with_writes(
        &m,
        r#"
INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date)
    VALUES (1, 1, 76, 9.99, '2007-02-15 10:00:00');
UPDATE payment SET amount = amount + 1
    WHERE payment_id IN (SELECT payment_id FROM payment_p2007_03 ORDER BY payment_id LIMIT 3);
DELETE FROM payment_p2007_04 WHERE payment_id = (SELECT min(payment_id) FROM payment_p2007_04);
UPDATE film SET rental_rate = rental_rate + 1, special_features = special_features || '{Trailers}'
    WHERE film_id < 20;
DELETE FROM film_actor WHERE actor_id = 1 AND film_id = 1;
INSERT INTO actor (first_name, last_name) VALUES ('O''BRIEN', 'BACK\SLASH');
"#,
    );
    assert!(tables.len() >= 21, "pagila 0.10.1 tables: {tables:?}");
    let routed = m
        .source
        .psql(
            &m.source_db,
            "SELECT count(*) FROM ONLY payment_p2007_02 WHERE amount = 9.99 AND rental_id = 76",
        )
        .expect("routed row");
    assert_eq!(
        routed.trim(),
        "1",
        "the rule routed the insert into the child"
    );
    // The rules are on the target, enabled as on the source: the
    // application's inserts on the parent land in the child there too.
    let rules = m.target_i64(
        "SELECT count(*) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
         WHERE c.relname = 'payment' AND r.rulename LIKE 'payment_insert_p2007_0%' \
           AND r.ev_enabled = 'O'",
    );
    assert_eq!(rules, Some(6), "the six insert rules, enabled");
    m.target
        .psql(
            &m.target_db,
            "INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date) \
             VALUES (2, 1, 320, 1.23, '2007-03-20 10:00:00')",
        )
        .expect("insert on the target's parent");
    let n = m.target_i64(
        "SELECT count(*) FROM ONLY payment_p2007_03 WHERE amount = 1.23 AND rental_id = 320",
    );
    assert_eq!(
        n,
        Some(1),
        "the insert on the target's parent went to its child"
    );
}

#[test]
fn northwind_with_character_keys_and_pictures() {
    let m = migration_of(&["northwind-postgresql/northwind.sql"]);
    let plan = m.ferry(&["plan"]);
    assert_eq!(plan.code, Some(0), "{}", plan.all());

    let tables = migrate_with_writes(
        &m,
        r#"
INSERT INTO customers (customer_id, company_name, contact_name, country)
    VALUES ('FERRY', 'Ferry Lines', 'Ann O''Neil', 'Norway');
INSERT INTO orders (order_id, customer_id, employee_id, order_date, ship_via, freight)
    VALUES (20000, 'FERRY', 1, '2024-01-01', 1, 12.5);
INSERT INTO order_details VALUES (20000, 11, 14.0, 12, 0.05);
UPDATE products SET unit_price = unit_price * 1.1 WHERE category_id = 1;
UPDATE employees SET notes = notes || ' (moved)' WHERE employee_id = 2;
DELETE FROM order_details WHERE order_id = 10248 AND product_id = 11;
UPDATE categories SET picture = decode('00ff10ab', 'hex') WHERE category_id = 1;
INSERT INTO customers (customer_id, company_name) VALUES ('FRRY2', 'Ferry Two');
UPDATE customers SET customer_id = 'FRRY3' WHERE customer_id = 'FRRY2';
"#,
    );
    assert!(tables.len() >= 14, "northwind tables: {tables:?}");
    let picture = m.target_i64(
        "SELECT count(*) FROM categories WHERE category_id = 1 AND picture = decode('00ff10ab', 'hex')",
    );
    assert_eq!(picture, Some(1), "the updated picture");
}
