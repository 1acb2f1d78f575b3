//! The durable load plan: chunk boundaries and post-data statements, saved
//! in the target with the schema so that a resumed load copies exactly the
//! chunks a crash left unfinished (boundaries computed again from newer
//! statistics could overlap or leave gaps) and builds each index once.

use anyhow::Context;
use ferry_apply::state::StateStore;
use std::collections::HashMap;

use ferry_core::source::{Chunk, TargetSchema};
use ferry_core::{Position, TableId};
use ferry_postgres::dump::{DeferredForeignKey, defer_foreign_key};
use tokio_postgres::Client;

/// Save the chunk plan and the post-data statements (inside the caller's transaction).
pub async fn save(
    target: &Client,
    state: &StateStore,
    chunks: &[Chunk],
    schema: &TargetSchema,
) -> anyhow::Result<()> {
    // Each list in one statement (arrays, one row per element): a
    // statement per row cost a round trip or two each, hundreds on a
    // schema like Pagila's.
    let column = |f: fn(&Chunk) -> &str| chunks.iter().map(f).collect::<Vec<_>>();
    let (table_schemas, table_names) = (column(|c| &c.table.schema), column(|c| &c.table.name));
    let (rel_schemas, rel_names) = (column(|c| &c.relation.schema), column(|c| &c.relation.name));
    let indexes: Vec<i32> = chunks.iter().map(|c| c.index as i32).collect();
    let predicates: Vec<Option<&str>> = chunks.iter().map(|c| c.predicate.as_deref()).collect();
    let only: Vec<bool> = chunks.iter().map(|c| c.only).collect();
    let totals: Vec<i32> = chunks.iter().map(|c| c.total as i32).collect();
    target
        .execute(
            &format!(
                "INSERT INTO {} SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::bool[], $8::int4[])",
                state.table("load_plan")
            ),
            &[
                &table_schemas,
                &table_names,
                &indexes,
                &rel_schemas,
                &rel_names,
                &predicates,
                &only,
                &totals,
            ],
        )
        .await
        .context("saving the chunk plan")?;
    target
        .execute(
            &format!(
                "INSERT INTO {} VALUES (1, $1)",
                state.table("post_data_preamble")
            ),
            &[&schema.post_preamble],
        )
        .await
        .context("saving the post-data preamble")?;
    let entries: Vec<_> = schema
        .post_parallel
        .iter()
        .map(|e| (e, true))
        .chain(schema.post_sequential.iter().map(|e| (e, false)))
        .collect();
    let deferred: Vec<Option<DeferredForeignKey>> = entries
        .iter()
        .map(|(e, _)| match e.kind.as_str() {
            "FK CONSTRAINT" => defer_foreign_key(&e.sql),
            _ => None,
        })
        .collect();
    let on_partitioned = partitioned_tables(
        target,
        deferred
            .iter()
            .flatten()
            .map(|d| d.table.as_str())
            .collect(),
    )
    .await?;
    // PostgreSQL before 18 cannot add a `NOT VALID` foreign key to a
    // partitioned table: that one is built as the dump says.
    let built: Vec<(String, Option<String>, Option<String>)> = entries
        .iter()
        .zip(deferred)
        .map(
            |((e, _), d)| match d.filter(|d| !on_partitioned.contains(&d.table)) {
                Some(d) => (d.sql, Some(d.table), Some(d.constraint)),
                None => (e.sql.clone(), None, None),
            },
        )
        .collect();
    let seqs: Vec<i32> = (0..entries.len() as i32).collect();
    let kinds: Vec<&str> = entries.iter().map(|(e, _)| e.kind.as_str()).collect();
    let names: Vec<&str> = entries.iter().map(|(e, _)| e.name.as_str()).collect();
    let parallel: Vec<bool> = entries.iter().map(|(_, p)| *p).collect();
    let sqls: Vec<&str> = built.iter().map(|b| b.0.as_str()).collect();
    let fk_tables: Vec<Option<&str>> = built.iter().map(|b| b.1.as_deref()).collect();
    let fk_names: Vec<Option<&str>> = built.iter().map(|b| b.2.as_deref()).collect();
    target
        .execute(
            &format!(
                "INSERT INTO {} (seq, kind, name, parallel, sql, fk_table, fk_name)
                 SELECT * FROM unnest($1::int4[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[])",
                state.table("post_data")
            ),
            &[
                &seqs,
                &kinds,
                &names,
                &parallel,
                &sqls,
                &fk_tables,
                &fk_names,
            ],
        )
        .await
        .context("saving post-data statements")?;
    Ok(())
}

/// Which of `tables` (as a dump writes them) are partitioned on the target.
async fn partitioned_tables(
    target: &Client,
    tables: Vec<&str>,
) -> anyhow::Result<std::collections::HashSet<String>> {
    if tables.is_empty() {
        return Ok(Default::default());
    }
    let rows = target
        .query(
            "SELECT t FROM unnest($1::text[]) t WHERE coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(t)), false)",
            &[&tables],
        )
        .await
        .context("looking up the tables of the foreign keys")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The saved chunks of `table`.
pub async fn chunks(
    target: &Client,
    state: &StateStore,
    table: &TableId,
) -> anyhow::Result<Vec<Chunk>> {
    let sql = format!(
        "SELECT chunk, rel_schema, rel_name, predicate, only_rel, total FROM {}
         WHERE table_schema = $1 AND table_name = $2 ORDER BY chunk",
        state.table("load_plan")
    );
    let rows = target
        .query(&sql, &[&table.schema, &table.name])
        .await
        .context("reading the chunk plan")?;
    Ok(rows
        .iter()
        .map(|r| Chunk {
            table: table.clone(),
            relation: TableId::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            index: r.get::<_, i32>(0) as usize,
            total: r.get::<_, i32>(5) as usize,
            predicate: r.get(3),
            only: r.get(4),
        })
        .collect())
}

/// The saved chunks of every table, by table, in one query.
pub async fn all_chunks(
    target: &Client,
    state: &StateStore,
) -> anyhow::Result<HashMap<TableId, Vec<Chunk>>> {
    let sql = format!(
        "SELECT chunk, rel_schema, rel_name, predicate, only_rel, total, table_schema, table_name
           FROM {} ORDER BY table_schema, table_name, chunk",
        state.table("load_plan")
    );
    let rows = target
        .query(&sql, &[])
        .await
        .context("reading the chunk plan")?;
    let mut chunks: HashMap<TableId, Vec<Chunk>> = HashMap::new();
    for r in &rows {
        let table = TableId::new(r.get::<_, String>(6), r.get::<_, String>(7));
        chunks.entry(table.clone()).or_default().push(Chunk {
            table,
            relation: TableId::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            index: r.get::<_, i32>(0) as usize,
            total: r.get::<_, i32>(5) as usize,
            predicate: r.get(3),
            only: r.get(4),
        });
    }
    Ok(chunks)
}

/// Record that `table` is (re)loaded from a snapshot taken at `at`: the
/// stream must skip its changes from transactions committed before that.
pub async fn set_table_snapshot<P: Position>(
    target: &Client,
    state: &StateStore,
    table: &TableId,
    at: &P,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO {} VALUES ($1, $2, $3)
         ON CONFLICT (table_schema, table_name) DO UPDATE SET lsn = EXCLUDED.lsn",
        state.table("table_snapshots")
    );
    target
        .execute(&sql, &[&table.schema, &table.name, &at.to_string()])
        .await
        .with_context(|| format!("recording the snapshot position of {table}"))?;
    Ok(())
}

/// Tables loaded from a snapshot later than the stream's start, with the
/// snapshot's position.
pub async fn table_snapshots<P: Position>(
    target: &Client,
    state: &StateStore,
) -> anyhow::Result<HashMap<TableId, P>> {
    let rows = target
        .query(
            &format!(
                "SELECT table_schema, table_name, lsn FROM {}",
                state.table("table_snapshots")
            ),
            &[],
        )
        .await
        .context("reading table snapshot positions")?;
    rows.iter()
        .map(|r| {
            let at: P = r.get::<_, &str>(2).parse()?;
            Ok((
                TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                at,
            ))
        })
        .collect()
}

/// A post-data statement still to run.
#[derive(Debug, Clone)]
pub struct PostStatement {
    pub seq: i32,
    pub kind: String,
    pub name: String,
    pub parallel: bool,
    pub sql: String,
    /// A foreign key built `NOT VALID`: (table as written, constraint name).
    pub deferred_fk: Option<(String, String)>,
}

/// The preamble and the post-data statements not yet done, in order.
pub async fn pending_post_data(
    target: &Client,
    state: &StateStore,
) -> anyhow::Result<(String, Vec<PostStatement>)> {
    let preamble = target
        .query_opt(
            &format!(
                "SELECT sql FROM {} WHERE id = 1",
                state.table("post_data_preamble")
            ),
            &[],
        )
        .await
        .context("reading the post-data preamble")?
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default();
    let rows = target
        .query(
            &format!(
                "SELECT seq, kind, name, parallel, sql, fk_table, fk_name FROM {}
                  WHERE done_at IS NULL ORDER BY seq",
                state.table("post_data")
            ),
            &[],
        )
        .await
        .context("reading post-data statements")?;
    let stmts = rows
        .iter()
        .map(|r| PostStatement {
            seq: r.get(0),
            kind: r.get(1),
            name: r.get(2),
            parallel: r.get(3),
            sql: r.get(4),
            deferred_fk: r
                .get::<_, Option<String>>(5)
                .zip(r.get::<_, Option<String>>(6)),
        })
        .collect();
    Ok((preamble, stmts))
}

/// Run one post-data statement and mark it done, in one transaction.
pub async fn run_post_statement(
    target: &mut Client,
    state: &StateStore,
    preamble: &str,
    stmt: &PostStatement,
) -> anyhow::Result<()> {
    run_post_statements(target, state, preamble, std::slice::from_ref(stmt)).await
}

/// Run `first`, then, while each took little time, the `CREATE INDEX`
/// statements `next` hands out, marking them done, all in one
/// transaction: small tables' index builds share one commit (and its
/// flush) instead of one each, and a crash loses at most about
/// [`GROUP_FOR`] of work. Which builds may join is the caller's to decide
/// (`next`; see `load::BuildQueue` for why a group must not overlap a key
/// being added). Returns each statement with the time it took.
pub async fn run_post_group(
    target: &mut Client,
    state: &StateStore,
    preamble: &str,
    first: PostStatement,
    mut next: impl FnMut() -> Option<PostStatement>,
) -> anyhow::Result<Vec<(PostStatement, std::time::Duration)>> {
    let mut first = Some(first);
    run_in_one_transaction(target, state, preamble, |last, elapsed| match last {
        None => first.take(),
        Some(s) if groupable(s) && elapsed < GROUP_FOR => next(),
        Some(_) => None,
    })
    .await
}

/// Run the statements `next` hands out (given the last one run and the
/// time since the first began; `None` ends) and mark them done, in one
/// transaction: `BEGIN`, the preamble and the first statement go as one
/// text, the done mark and `COMMIT` as another (a key built in a
/// transaction of its own is two round trips, not six).
async fn run_in_one_transaction(
    target: &mut Client,
    state: &StateStore,
    preamble: &str,
    mut next: impl FnMut(Option<&PostStatement>, std::time::Duration) -> Option<PostStatement>,
) -> anyhow::Result<Vec<(PostStatement, std::time::Duration)>> {
    let Some(first) = next(None, std::time::Duration::ZERO) else {
        return Ok(Vec::new());
    };
    let target: &Client = target;
    let built = async {
        let started = std::time::Instant::now();
        let mut built: Vec<(PostStatement, std::time::Duration)> = Vec::new();
        let mut stmt = Some(first);
        while let Some(s) = stmt {
            let one = std::time::Instant::now();
            let sql = match built.is_empty() {
                true => format!("BEGIN;\n{preamble}\n;\n{}", s.sql),
                false => s.sql.clone(),
            };
            target
                .batch_execute(&sql)
                .await
                .with_context(|| format!("building {} {} on the target", s.kind, s.name))?;
            if let Some((table, constraint)) = &s.deferred_fk {
                super::overrides::record_deferred_foreign_key(target, state, table, constraint)
                    .await?;
            }
            built.push((s, one.elapsed()));
            stmt = next(built.last().map(|(s, _)| s), started.elapsed());
        }
        let seqs: Vec<i32> = built.iter().map(|(s, _)| s.seq).collect();
        mark_done_and_commit(target, state, &seqs).await?;
        anyhow::Ok(built)
    }
    .await;
    if built.is_err() && !target.is_closed() {
        let _ = target.batch_execute("ROLLBACK").await;
    }
    built
}

/// Mark post-data statements `seqs` done and commit them with their
/// objects (in the caller's transaction), in one round trip.
async fn mark_done_and_commit(
    target: &Client,
    state: &StateStore,
    seqs: &[i32],
) -> anyhow::Result<()> {
    let seqs: Vec<String> = seqs.iter().map(i32::to_string).collect();
    target
        .batch_execute(&format!(
            "UPDATE {} SET done_at = now() WHERE seq IN ({});\nCOMMIT",
            state.table("post_data"),
            seqs.join(", ")
        ))
        .await
        .context("marking post-data statements done and committing them")?;
    Ok(())
}

/// How long a group of index builds ([`run_post_group`]) keeps taking
/// more: past it, the next build starts a transaction of its own.
pub const GROUP_FOR: std::time::Duration = std::time::Duration::from_millis(50);

/// A plain `CREATE INDEX` (not a key, not an attachment).
pub fn groupable(stmt: &PostStatement) -> bool {
    stmt.kind == "INDEX"
}

/// Run post-data statements in order and mark them done, all in one
/// transaction: a crash before its commit leaves every one of them to
/// build again (none is half built or marked done without its object),
/// and the statements share one commit instead of one each. They go as
/// one text (a round trip for all, not one or three each: Pagila has 58);
/// when that fails, which names no statement, they run again one at a
/// time, so that an error names the statement that failed.
pub async fn run_post_statements(
    target: &mut Client,
    state: &StateStore,
    preamble: &str,
    stmts: &[PostStatement],
) -> anyhow::Result<()> {
    if stmts.is_empty() {
        return Ok(());
    }
    match run_as_one_text(target, state, preamble, stmts).await {
        Ok(()) => return Ok(()),
        Err(e) if target.is_closed() => return Err(e),
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "post-data as one text failed; one statement at a time")
        }
    }
    let mut each = stmts.iter().cloned();
    run_in_one_transaction(target, state, preamble, |_, _| each.next()).await?;
    Ok(())
}

/// [`run_post_statements`]' first try: the preamble and every statement
/// in one simple query, the keys built `NOT VALID` recorded in one
/// statement, one transaction.
async fn run_as_one_text(
    target: &mut Client,
    state: &StateStore,
    preamble: &str,
    stmts: &[PostStatement],
) -> anyhow::Result<()> {
    // A newline ends a trailing comment, a semicolon the statement; an
    // empty statement between two is nothing to the server.
    let mut sql = String::new();
    for text in std::iter::once(preamble).chain(stmts.iter().map(|s| s.sql.as_str())) {
        sql.push_str(text);
        sql.push_str("\n;\n");
    }
    let target: &Client = target;
    let done = async {
        target.batch_execute(&format!("BEGIN;\n{sql}")).await?;
        let keys: Vec<(&str, &str)> = stmts
            .iter()
            .filter_map(|s| s.deferred_fk.as_ref())
            .map(|(table, name)| (table.as_str(), name.as_str()))
            .collect();
        if !keys.is_empty() {
            let recorded =
                super::overrides::record_deferred_foreign_keys(target, state, &keys).await?;
            anyhow::ensure!(
                recorded == keys.len() as u64,
                "{} of {} foreign keys built NOT VALID were not found on the target",
                keys.len() as u64 - recorded.min(keys.len() as u64),
                keys.len()
            );
        }
        let seqs: Vec<i32> = stmts.iter().map(|s| s.seq).collect();
        mark_done_and_commit(target, state, &seqs).await
    }
    .await;
    if done.is_err() && !target.is_closed() {
        let _ = target.batch_execute("ROLLBACK").await;
    }
    done
}
