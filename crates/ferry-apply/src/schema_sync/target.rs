//! Reads of the target catalog for [`super::SchemaSync`]: whether objects
//! exist, a table's shape ([`read_target`]) as text comparable with the
//! source's (read under `search_path = pg_catalog`, pinned for the
//! transaction by [`pin_search_path`] and put back after).

use ferry_core::config::TablesConfig;
use ferry_core::{Result, TableId};
use tokio_postgres::Client;

use super::plan::{self, TargetColumn, TargetTable};
use crate::error::pg_error;

/// Pin `search_path` to `pg_catalog` for the catalog reads (deparsed text
/// then matches the source's); returns the value to restore.
pub(super) async fn pin_search_path(client: &Client) -> Result<String> {
    let row = client
        .query_one(
            "SELECT current_setting('search_path'), set_config('search_path', 'pg_catalog, pg_temp', true)",
            &[],
        )
        .await
        .map_err(|e| pg_error("pinning search_path for a schema change", e))?;
    Ok(row.get(0))
}

pub(super) async fn restore_search_path(client: &Client, saved: &str) -> Result<()> {
    client
        .execute("SELECT set_config('search_path', $1, true)", &[&saved])
        .await
        .map_err(|e| pg_error("restoring search_path after a schema change", e))?;
    Ok(())
}

pub(super) async fn exists(client: &Client, quoted: &str) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&quoted])
        .await
        .map_err(|e| pg_error(format!("looking up {quoted}"), e))?;
    Ok(row.get(0))
}

/// The target table `table` has a constraint `name` inherited from a
/// parent (a partition's copy of its parent's).
pub(super) async fn inherited_constraint(
    client: &Client,
    table: &TableId,
    name: &str,
) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1::text::regclass AND conname = $2 AND coninhcount > 0)",
            &[&table.quoted(), &name],
        )
        .await
        .map_err(|e| pg_error(format!("looking up constraint {name} of {table}"), e))?;
    Ok(row.get(0))
}

pub(super) async fn schema_exists(client: &Client, schema: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(|e| pg_error(format!("looking up schema {schema}"), e))?;
    Ok(row.get(0))
}

/// The target index `name` of source schema `schema`: in that schema, or
/// in a schema `tables.rename` moves its tables to.
pub(super) async fn find_index(
    client: &Client,
    schema: &str,
    name: &str,
    tables: &TablesConfig,
) -> Result<Option<String>> {
    let mut schemas = vec![schema.to_owned()];
    for (from, to) in &tables.rename {
        if let (Some(f), Some(t)) = (TableId::parse(from), TableId::parse(to))
            && f.schema == schema
            && !schemas.contains(&t.schema)
        {
            schemas.push(t.schema);
        }
    }
    let row = client
        .query_opt(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = $1 AND c.relkind IN ('i', 'I') AND n.nspname = ANY($2)
              ORDER BY array_position($2, n.nspname::text) LIMIT 1",
            &[&name, &schemas],
        )
        .await
        .map_err(|e| pg_error(format!("looking up index {name}"), e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Read the target table's shape (under the pinned search_path).
pub(super) async fn read_target(client: &Client, target: &TableId) -> Result<TargetTable> {
    let name = target.quoted();
    let err = |e| pg_error(format!("reading the shape of {target}"), e);
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                    CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                    col_description(a.attrelid, a.attnum), nullif(a.attidentity::text, ''),
                    nn.conname::text, coalesce(nn.coninhcount > 0, false), coalesce(NOT nn.convalidated, false)
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
               LEFT JOIN pg_constraint nn ON nn.conrelid = a.attrelid AND nn.contype = 'n' AND nn.conkey[1] = a.attnum
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&name],
        )
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| TargetColumn {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            default: r.get(3),
            generated: r.get(4),
            comment: r.get(5),
            identity: r.get(6),
            not_null_name: r.get(7),
            not_null_inherited: r.get(8),
            not_null_not_valid: r.get(9),
        })
        .collect();
    let constraints = client
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = $1::text::regclass AND contype IN ('p', 'u', 'f', 'c', 'x') AND conislocal",
            &[&name],
        )
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let indexes = client
        .query(
            "SELECT ic.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = $1::text::regclass AND NOT ic.relispartition
                AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = i.indexrelid
                                  AND co.conrelid = i.indrelid AND co.contype IN ('p', 'u', 'x'))",
            &[&name],
        )
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| {
            let def: String = r.get(1);
            (r.get(0), plan::index_tail(&def).to_owned())
        })
        .collect();
    let row = client
        .query_one(
            "SELECT obj_description(c.oid, 'pg_class'), c.relreplident::text,
                    current_setting('server_version_num')::int >= 180000
               FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&name],
        )
        .await
        .map_err(err)?;
    let partitions = client
        .query(
            "SELECT n.nspname::text, p.relname::text FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhrelid
               JOIN pg_namespace n ON n.oid = p.relnamespace WHERE h.inhparent = $1::text::regclass AND p.relispartition",
            &[&name],
        )
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let has_rows: bool = client
        .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {name})"), &[])
        .await
        .map_err(err)?
        .get(0);
    Ok(TargetTable {
        columns,
        constraints,
        indexes,
        comment: row.get(0),
        replident: row.get(1),
        partitions,
        has_rows,
        named_not_null: row.get(2),
    })
}
