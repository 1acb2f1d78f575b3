//! What a source `TRUNCATE` becomes on the target.
//!
//! pgoutput lists every relation the source statement emptied (the children
//! of an inheritance parent too, unless it said `ONLY`; with
//! `publish_via_partition_root` a truncated partitioned table arrives as its
//! root only). So each listed table is truncated on the target with `ONLY`:
//! `TRUNCATE ONLY parent` on the source must not empty the children on the
//! target. A partitioned table cannot be truncated `ONLY` (PostgreSQL
//! refuses it); it is named plainly, which empties its partitions, as on the
//! source.
//!
//! Emptying a table before its copy (a whole-table load, a table copied
//! again) follows the same rule ([`empty_sql`]): the target's inheritance
//! children are tables of their own, loaded on their own, and a parent
//! loaded after its child must not empty the child.

use std::collections::HashSet;

use ferry_core::Result;
use tokio_postgres::Client;

use crate::error::pg_error;

/// The `TRUNCATE` list for `targets` (quoted names): `ONLY name`, except
/// for the partitioned tables among them.
pub fn targets(names: &[String], partitioned: &HashSet<String>) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            if partitioned.contains(n) {
                n.clone()
            } else {
                format!("ONLY {n}")
            }
        })
        .collect()
}

/// `TRUNCATE` of the tables `names` (quoted) before their rows are copied
/// again: `ONLY`, except for partitioned tables (see the module docs).
pub async fn empty_sql(client: &Client, names: &[String]) -> Result<String> {
    Ok(crate::writer::sql::truncate_sql(
        &own_rows(client, names).await?,
        false,
        false,
    ))
}

/// `names` (quoted) as statements on their own rows name them: `ONLY
/// name`, a partitioned table plainly (its rows are its partitions').
pub async fn own_rows(client: &Client, names: &[String]) -> Result<Vec<String>> {
    let partitioned = partitioned(client, names).await?;
    Ok(targets(names, &partitioned))
}

/// Which of `names` (quoted) are partitioned tables on the target.
pub async fn partitioned(client: &Client, names: &[String]) -> Result<HashSet<String>> {
    let rows = client
        .query(
            "SELECT n FROM unnest($1::text[]) n WHERE (SELECT relkind FROM pg_class WHERE oid = n::regclass) = 'p'",
            &[&names],
        )
        .await
        .map_err(|e| pg_error(format!("reading the kind of {}", names.join(", ")), e))?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unless_partitioned() {
        let names: Vec<String> = [
            "\"public\".\"parent\"",
            "\"public\".\"measures\"",
            "\"S\".\"a.b\"",
        ]
        .map(String::from)
        .to_vec();
        let cases: [(&[&str], &[&str]); 3] = [
            (
                &[],
                &[
                    "ONLY \"public\".\"parent\"",
                    "ONLY \"public\".\"measures\"",
                    "ONLY \"S\".\"a.b\"",
                ],
            ),
            (
                &["\"public\".\"measures\""],
                &[
                    "ONLY \"public\".\"parent\"",
                    "\"public\".\"measures\"",
                    "ONLY \"S\".\"a.b\"",
                ],
            ),
            (
                &[
                    "\"public\".\"parent\"",
                    "\"public\".\"measures\"",
                    "\"S\".\"a.b\"",
                ],
                &[
                    "\"public\".\"parent\"",
                    "\"public\".\"measures\"",
                    "\"S\".\"a.b\"",
                ],
            ),
        ];
        for (partitioned, want) in cases {
            let p: HashSet<String> = partitioned.iter().map(|s| s.to_string()).collect();
            assert_eq!(targets(&names, &p), want, "{partitioned:?}");
        }
        assert_eq!(
            crate::writer::sql::truncate_sql(&targets(&names[..1], &HashSet::new()), false, false),
            "TRUNCATE ONLY \"public\".\"parent\""
        );
    }
}
