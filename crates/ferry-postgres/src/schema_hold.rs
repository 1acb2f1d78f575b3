//! Whether the source schema stayed as the load snapshot has it while
//! ferry copied it.
//!
//! The slot's exported snapshot fixes which rows and catalog rows a query
//! sees, but PostgreSQL resolves names and deparses definitions
//! (`pg_get_indexdef`, `pg_get_expr`, …) against the *current* catalog, also
//! in a transaction that imported an older snapshot. A schema change
//! committed between the snapshot and `pg_dump --snapshot` taking its locks
//! would mix two schemas in the target (an index on a column renamed since,
//! a table dropped since that `pg_dump` can no longer lock).
//!
//! [`Fingerprint`] tells: the row versions (`xmin`) of the catalog rows of
//! the tables of the dumped schemas (`pg_class`, `pg_attribute`,
//! `pg_index`, `pg_constraint`, `pg_attrdef`, `pg_trigger`, and their
//! indexes' `pg_class` rows) as the snapshot sees them, compared with the
//! current ones once the dump is done. A schema change creates new row
//! versions and never brings the old ones back, so equal means no schema
//! change of those tables committed between the snapshot and the end of
//! the dump; different makes the caller take a new snapshot. ferry holds
//! no lock of its own for this (a lock held while `pg_dump` waits behind an
//! application's `ALTER TABLE` queued on it would never be granted).

use ferry_core::Error;
use tokio_postgres::Client;

use crate::connect::query_error;

/// The catalog row versions of the relations `$1` (oids) and their
/// indexes, as one text: equal texts, no DDL between the two reads.
const FINGERPRINT: &str = "SELECT coalesce(md5(string_agg(x, ',' ORDER BY x)), '') FROM (
      SELECT 'c' || c.oid || ':' || c.xmin FROM pg_class c
       WHERE c.oid = ANY($1) OR c.oid IN (SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = ANY($1))
      UNION ALL SELECT 'a' || a.attrelid || '.' || a.attnum || ':' || a.xmin FROM pg_attribute a
       WHERE a.attrelid = ANY($1) AND a.attnum > 0
      UNION ALL SELECT 'i' || i.indexrelid || ':' || i.xmin FROM pg_index i WHERE i.indrelid = ANY($1)
      UNION ALL SELECT 'k' || k.oid || ':' || k.xmin FROM pg_constraint k
       WHERE k.conrelid = ANY($1) OR k.confrelid = ANY($1)
      UNION ALL SELECT 'd' || d.oid || ':' || d.xmin FROM pg_attrdef d WHERE d.adrelid = ANY($1)
      UNION ALL SELECT 't' || t.oid || ':' || t.xmin FROM pg_trigger t WHERE t.tgrelid = ANY($1)
    ) f(x)";

/// The catalog of the tables of some schemas, as a snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    oids: Vec<u32>,
    text: String,
}

impl Fingerprint {
    /// Read in `snapshot` (a session inside the snapshot): the tables
    /// (`r`, `p`) of `schemas` it sees.
    pub async fn at(snapshot: &Client, schemas: &[String]) -> Result<Self, Error> {
        let oids: Vec<u32> = snapshot
            .query(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname::text = ANY($1) AND c.relkind IN ('r', 'p')
                    AND c.relpersistence <> 't'
                  ORDER BY c.oid",
                &[&schemas],
            )
            .await
            .map_err(|e| query_error("listing the tables of the load snapshot", e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let text = read(snapshot, &oids).await?;
        Ok(Fingerprint { oids, text })
    }

    /// Whether the current catalog of the same tables is the one read
    /// (`current`: a session outside the snapshot).
    pub async fn unchanged(&self, current: &Client) -> Result<bool, Error> {
        let now = read(current, &self.oids).await?;
        Ok(now == self.text)
    }
}

async fn read(client: &Client, oids: &[u32]) -> Result<String, Error> {
    Ok(client
        .query_one(FINGERPRINT, &[&oids])
        .await
        .map_err(|e| query_error("reading the catalog fingerprint of the carried schemas", e))?
        .get(0))
}
