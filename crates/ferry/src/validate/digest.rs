//! The SQL that hashes and reads key ranges, the same on a PostgreSQL
//! source and on the target (so only counts and digests cross the network
//! until a range is small enough to compare row by row).
//!
//! A row's hash is the first 64 bits of `md5` of its normalized text form
//! (`ROW(c1, c2, …)::text` under the session settings of [`SESSION`]: UTC,
//! ISO dates, shortest exact floats, hex bytea, `C` money; NULL and `''`
//! differ in that form); a range's digest is its row count and the sum of its rows'
//! hashes as `numeric` — order-independent, so neither side sorts more
//! than the key index already does. Ranges are `(lo, hi]` in key order
//! (row comparison `(k1, k2) > (…)`, which a btree on the key serves);
//! bounds travel as the key columns' text form and are cast back to the
//! column types, so composite and non-integer keys work alike.

use ferry_core::TableId;
use ferry_core::schema::{TableSchema, quote_ident};

/// Run first on every validation session of either side.
pub const SESSION: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'; SET statement_timeout = 0";

/// One table as validation reads it on one side.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Quoted relation name on this side.
    pub relation: String,
    /// The relation as reads and deletes name it: `ONLY name`, since an
    /// inheritance child is a carried table of its own (validated on its
    /// own), or plainly when partitioned ([`Shape::partitioned`]).
    rows: String,
    /// Quoted key columns and their types (empty: no key).
    keys: Vec<(String, String)>,
    /// Text key columns compare in byte order (`COLLATE "C"`), the order a
    /// MySQL/MariaDB or SQLite source is read in ([`Shape::byte_ordered`]).
    byte_order: bool,
    /// Column names (unquoted), in table order.
    pub columns: Vec<String>,
}

/// Which bounds a range has (each bound is one parameter per key column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub lo: bool,
    pub hi: bool,
}

impl Shape {
    /// A partitioned table: its rows are its partitions' (`ONLY` would
    /// read none).
    pub fn partitioned(mut self, partitioned: bool) -> Shape {
        if partitioned {
            self.rows = self.relation.clone();
        }
        self
    }

    /// `schema` read as `relation` (the target may carry another name).
    pub fn new(schema: &TableSchema, relation: &TableId) -> Shape {
        Shape {
            relation: relation.quoted(),
            rows: format!("ONLY {}", relation.quoted()),
            keys: schema
                .key
                .iter()
                .map(|&i| {
                    let c = &schema.columns[i];
                    (quote_ident(&c.name), c.pg_type.clone())
                })
                .collect(),
            columns: schema.columns.iter().map(|c| c.name.clone()).collect(),
            byte_order: false,
        }
    }

    /// The same shape with text key columns in byte order (`COLLATE
    /// "C"`): the order every non-PostgreSQL source is read in. A key
    /// index in another collation cannot serve it, so such ranges sort.
    pub fn byte_ordered(mut self) -> Shape {
        self.byte_order = true;
        self
    }

    /// A key column as ranges compare and order it.
    fn key_expr(&self, column: &str, pg_type: &str) -> String {
        if self.byte_order && ferry_core::normalize::is_text(pg_type) {
            format!("{column} COLLATE \"C\"")
        } else {
            column.to_owned()
        }
    }

    pub fn key_width(&self) -> usize {
        self.keys.len()
    }

    fn key_tuple(&self) -> String {
        format!("({})", self.order_by())
    }

    fn order_by(&self) -> String {
        let cols: Vec<String> = self.keys.iter().map(|(c, t)| self.key_expr(c, t)).collect();
        cols.join(", ")
    }

    /// `($n::text::type, …)` for the key starting at parameter `first`.
    fn bind_tuple(&self, first: usize) -> String {
        let parts: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, (_, t))| self.key_expr(&format!("${}::text::{t}", first + i), t))
            .collect();
        format!("({})", parts.join(", "))
    }

    /// The key columns as text, for reading keys back.
    fn key_texts(&self) -> String {
        let parts: Vec<String> = self
            .keys
            .iter()
            .map(|(c, _)| format!("{c}::text"))
            .collect();
        format!("ARRAY[{}]::text[]", parts.join(", "))
    }

    /// The row's 64-bit hash.
    fn row_hash(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!(
            "('x' || left(md5(ROW({})::text), 16))::bit(64)::int8",
            cols.join(", ")
        )
    }

    /// The range condition; parameters from `$1`, low bound first.
    fn range(&self, b: Bounds) -> String {
        let w = self.keys.len();
        let mut conds = Vec::new();
        if b.lo {
            conds.push(format!("{} > {}", self.key_tuple(), self.bind_tuple(1)));
        }
        if b.hi {
            let first = if b.lo { w + 1 } else { 1 };
            conds.push(format!(
                "{} <= {}",
                self.key_tuple(),
                self.bind_tuple(first)
            ));
        }
        if conds.is_empty() {
            "true".into()
        } else {
            conds.join(" AND ")
        }
    }

    /// The key `n` rows past `lo` (parameter after the bound: the offset),
    /// or no row when fewer remain.
    pub fn next_bound_sql(&self, lo: bool) -> String {
        let offset = if lo { self.keys.len() + 1 } else { 1 };
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET ${offset}::int8 LIMIT 1",
            self.key_texts(),
            self.rows,
            self.range(Bounds { lo, hi: false }),
            self.order_by()
        )
    }

    /// Row count and digest of a range.
    pub fn digest_sql(&self, b: Bounds) -> String {
        format!(
            "SELECT count(*)::int8, coalesce(sum(h::numeric), 0)::text FROM (SELECT {} AS h FROM {} WHERE {}) s",
            self.row_hash(),
            self.rows,
            self.range(b)
        )
    }

    /// Keys splitting a range into parts of `$k` rows (parameter after the
    /// bounds).
    pub fn quantiles_sql(&self, b: Bounds) -> String {
        let k = 1 + self.keys.len() * (usize::from(b.lo) + usize::from(b.hi));
        format!(
            "SELECT k FROM (SELECT {} AS k, row_number() OVER (ORDER BY {}) AS rn FROM {} WHERE {}) s \
             WHERE rn % ${k}::int8 = 0 ORDER BY rn",
            self.key_texts(),
            self.order_by(),
            self.rows,
            self.range(b)
        )
    }

    /// Every row of a range in key order: its key and its columns as text
    /// (validation of a non-PostgreSQL source hashes them on ferry's side).
    pub fn range_rows_sql(&self, b: Bounds) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        let order = if self.keys.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", self.order_by())
        };
        format!(
            "SELECT {}, ARRAY[{}]::text[] FROM {} WHERE {}{order}",
            self.key_texts(),
            cols.join(", "),
            self.rows,
            self.range(b),
        )
    }

    /// Each row's key and hash in a range.
    pub fn hashes_sql(&self, b: Bounds) -> String {
        format!(
            "SELECT {}, {} FROM {} WHERE {}",
            self.key_texts(),
            self.row_hash(),
            self.rows,
            self.range(b)
        )
    }

    /// `(k1, …) IN (…)` over one `text[]` parameter per key column.
    fn key_in(&self) -> String {
        let arrays: Vec<String> = (1..=self.keys.len())
            .map(|i| format!("${i}::text[]"))
            .collect();
        let names: Vec<String> = (0..self.keys.len()).map(|i| format!("u{i}")).collect();
        let casts: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("u.u{i}::{t}"))
            .collect();
        format!(
            "{} IN (SELECT {} FROM unnest({}) AS u({}))",
            self.key_tuple(),
            casts.join(", "),
            arrays.join(", "),
            names.join(", ")
        )
    }

    /// The rows of the given keys, each column as text (NULL stays NULL).
    /// Never locked: validation must not make the application's writers
    /// wait (see [`super::settle::settle`] for why two reads suffice).
    pub fn rows_sql(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect();
        format!(
            "SELECT {}, ARRAY[{}]::text[] FROM {} WHERE {}",
            self.key_texts(),
            cols.join(", "),
            self.rows,
            self.key_in(),
        )
    }

    /// Delete the given keys (repair of rows the source does not hold).
    pub fn delete_sql(&self) -> String {
        format!("DELETE FROM {} WHERE {}", self.rows, self.key_in())
    }

    /// Insert or overwrite one row from its columns' text forms (`$1` a
    /// `text[]` in column order).
    pub fn upsert_sql(&self, types: &[String]) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let values: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("($1::text[])[{}]::{t}", i + 1))
            .collect();
        let keys: Vec<&str> = self.keys.iter().map(|(c, _)| c.as_str()).collect();
        let set: Vec<String> = cols
            .iter()
            .filter(|c| !keys.contains(&c.as_str()))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let action = if set.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", set.join(", "))
        };
        format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({}) DO {action}",
            self.relation,
            cols.join(", "),
            values.join(", "),
            keys.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::schema::{Column, ReplicaIdentity};

    fn schema() -> TableSchema {
        let col = |name: &str, t: &str| Column {
            name: name.into(),
            source_type: t.into(),
            pg_type: t.into(),
            type_oid: None,
            nullable: true,
        };
        TableSchema {
            id: TableId::new("app", "Order Lines"),
            columns: vec![
                col("order", "bigint"),
                col("line", "integer"),
                col("note", "text"),
            ],
            key: vec![0, 1],
            replica_identity: ReplicaIdentity::Default,
        }
    }

    #[test]
    fn range_sql_binds_composite_keys_as_text() {
        let s = Shape::new(&schema(), &TableId::new("dst", "lines"));
        assert_eq!(
            s.digest_sql(Bounds { lo: true, hi: true }),
            "SELECT count(*)::int8, coalesce(sum(h::numeric), 0)::text FROM (SELECT ('x' || left(md5(ROW(\"order\", \"line\", \"note\")::text), 16))::bit(64)::int8 AS h FROM ONLY \"dst\".\"lines\" WHERE (\"order\", \"line\") > ($1::text::bigint, $2::text::integer) AND (\"order\", \"line\") <= ($3::text::bigint, $4::text::integer)) s"
        );
        assert_eq!(
            s.next_bound_sql(false),
            "SELECT ARRAY[\"order\"::text, \"line\"::text]::text[] FROM ONLY \"dst\".\"lines\" WHERE true ORDER BY \"order\", \"line\" OFFSET $1::int8 LIMIT 1"
        );
        assert!(
            s.quantiles_sql(Bounds {
                lo: false,
                hi: true
            })
            .contains("rn % $3::int8 = 0")
        );
        assert!(s.next_bound_sql(true).contains("OFFSET $3::int8"));
    }

    #[test]
    fn byte_ordered_text_keys_collate_c() {
        let mut t = schema();
        t.columns[1].pg_type = "character varying(8)".into();
        let s = Shape::new(&t, &TableId::new("dst", "lines")).byte_ordered();
        assert_eq!(
            s.next_bound_sql(true),
            "SELECT ARRAY[\"order\"::text, \"line\"::text]::text[] FROM ONLY \"dst\".\"lines\" WHERE (\"order\", \"line\" COLLATE \"C\") > ($1::text::bigint, $2::text::character varying(8) COLLATE \"C\") ORDER BY \"order\", \"line\" COLLATE \"C\" OFFSET $3::int8 LIMIT 1"
        );
        assert!(
            s.range_rows_sql(Bounds {
                lo: false,
                hi: false
            })
            .ends_with("WHERE true ORDER BY \"order\", \"line\" COLLATE \"C\"")
        );
    }

    #[test]
    fn key_lists_and_repair_sql() {
        let s = Shape::new(&schema(), &TableId::new("app", "Order Lines"));
        assert_eq!(
            s.rows_sql(),
            "SELECT ARRAY[\"order\"::text, \"line\"::text]::text[], ARRAY[\"order\"::text, \"line\"::text, \"note\"::text]::text[] FROM ONLY \"app\".\"Order Lines\" WHERE (\"order\", \"line\") IN (SELECT u.u0::bigint, u.u1::integer FROM unnest($1::text[], $2::text[]) AS u(u0, u1))"
        );
        let types: Vec<String> = ["bigint", "integer", "text"].map(String::from).to_vec();
        assert_eq!(
            s.upsert_sql(&types),
            "INSERT INTO \"app\".\"Order Lines\" (\"order\", \"line\", \"note\") OVERRIDING SYSTEM VALUE VALUES (($1::text[])[1]::bigint, ($1::text[])[2]::integer, ($1::text[])[3]::text) ON CONFLICT (\"order\", \"line\") DO UPDATE SET \"note\" = EXCLUDED.\"note\""
        );
        assert!(
            s.delete_sql()
                .starts_with("DELETE FROM ONLY \"app\".\"Order Lines\" WHERE")
        );
        let p = Shape::new(&schema(), &TableId::new("app", "Order Lines")).partitioned(true);
        assert!(
            p.delete_sql()
                .starts_with("DELETE FROM \"app\".\"Order Lines\" WHERE")
        );
        assert!(p.rows_sql().contains(" FROM \"app\".\"Order Lines\" WHERE"));
    }
}
