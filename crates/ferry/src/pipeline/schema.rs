//! The schema stage (first run only): publication, slot with an exported
//! snapshot, the source's pre-data DDL on the target, and the load plan.
//!
//! Consumes the selected source tables; emits an open replication
//! connection holding the exported snapshot (the load imports it) and, in
//! ONE target transaction, the pre-data DDL, the registered tables, the chunk
//! plan, the stream checkpoint at the slot's consistent point and
//! `phase = load`. A crash before that commit leaves the target untouched;
//! the `schema` phase is written before the slot is created, so the next run
//! knows a slot of that name is its own leftover and recreates it.

use anyhow::{Context, bail};
use ferry_apply::state::{Phase, StateStore};
use ferry_core::config::Config;
use ferry_core::schema::quote_ident;
use ferry_core::value::Timestamp;
use ferry_postgres::catalog::SourceCatalog;
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::slot::{CreatedSlot, Publish};
use ferry_postgres::snapshot::{Chunk, plan_chunks};
use tokio_postgres::Client;
use tracing::info;

use super::plan_store;

/// Run the schema stage. `previous` is the phase found in the target.
/// Returns the slot with the connection holding its exported snapshot.
pub async fn run(
    config: &Config,
    state: &StateStore,
    target: &Client,
    source: &Client,
    catalog: &SourceCatalog,
    previous: Option<Phase>,
) -> anyhow::Result<CreatedSlot> {
    if catalog.tables.is_empty() {
        bail!(
            "no source table matches tables.include/tables.exclude; check the config with `ferry plan`"
        );
    }
    let slot = &config.postgres.slot;
    let slot_exists = source
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .context("looking up the replication slot")?
        .is_some();
    if slot_exists {
        if previous != Some(Phase::Schema) {
            bail!(ferry_core::Error::operator(
                format!(
                    "replication slot '{slot}' already exists on the source but this target has no record of creating it"
                ),
                format!(
                    "if it is left over from an earlier ferry attempt, drop it: SELECT pg_drop_replication_slot('{slot}'); otherwise set postgres.slot to another name"
                ),
            ));
        }
        info!(slot = %slot, "dropping the slot left over by an interrupted first run");
        source
            .execute("SELECT pg_drop_replication_slot($1)", &[slot])
            .await
            .context("dropping the leftover replication slot")?;
    }
    state.write_phase(target, Phase::Schema).await?;

    // Insert-only tables go into their own publication, published for
    // inserts alone: a keyless table there keeps accepting UPDATE/DELETE.
    let filter = config.tables.filter().map_err(anyhow::Error::msg)?;
    let (insert_only, tables): (Vec<_>, Vec<_>) = catalog
        .tables
        .iter()
        .map(|t| t.schema.id.clone())
        .partition(|id| filter.insert_only(id));
    let publication = &config.postgres.publication;
    ferry_postgres::slot::ensure_publication(source, publication, Some(&tables), Publish::All)
        .await?;
    if !insert_only.is_empty() {
        ferry_postgres::slot::ensure_publication(
            source,
            &ferry_postgres::slot::insert_only_publication(publication),
            Some(&insert_only),
            Publish::InsertOnly,
        )
        .await?;
    }
    let conn = ReplicationConnection::connect(&config.source).await?;
    let created = ferry_postgres::slot::create_slot(conn, slot).await?;
    let snapshot_name = created
        .snapshot_name()
        .context("the server did not export a snapshot with the new slot")?
        .to_owned();
    let consistent_point = created.consistent_point();
    info!(slot = %slot, consistent_point = %consistent_point, snapshot = %snapshot_name, "slot created");

    let dump = ferry_postgres::dump::dump_schema(
        &config.source,
        source,
        &catalog.schemas(),
        &config.state.schema,
    )
    .await?;
    let chunks: Vec<Chunk> = catalog
        .tables
        .iter()
        .flat_map(|t| plan_chunks(t, config.load.chunk_rows))
        .collect();

    // Everything the load needs commits at once, with phase = load.
    target
        .batch_execute("BEGIN")
        .await
        .context("starting the schema transaction")?;
    let result = async {
        ensure_target_schemas(target, catalog, config).await?;
        ferry_postgres::dump::apply_sql(target, &dump.pre_data, "pre-data schema").await?;
        apply_renames(target, catalog, config).await?;
        for t in &catalog.tables {
            let chunks_total = chunks.iter().filter(|c| c.table == t.schema.id).count() as i32;
            let estimate = t.row_estimate.map(|r| r as i64);
            state
                .register_table(
                    target,
                    &t.schema.id,
                    &config.tables.target_name(&t.schema.id),
                    estimate,
                    Some(chunks_total),
                )
                .await?;
        }
        plan_store::save(target, state, &chunks, &dump.post_data).await?;
        ferry_apply::checkpoint::write_checkpoint(
            target,
            state,
            super::STREAM,
            &consistent_point,
            Timestamp::now(),
        )
        .await?;
        state.write_phase(target, Phase::Load).await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => target
            .batch_execute("COMMIT")
            .await
            .context("committing the schema")?,
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    info!(
        tables = catalog.tables.len(),
        chunks = chunks.len(),
        "schema created on the target"
    );
    Ok(created)
}

/// Renamed tables may live in schemas the dump does not create.
async fn ensure_target_schemas(
    target: &Client,
    catalog: &SourceCatalog,
    config: &Config,
) -> anyhow::Result<()> {
    for t in &catalog.tables {
        let to = config.tables.target_name(&t.schema.id);
        if to.schema != t.schema.id.schema {
            target
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    quote_ident(&to.schema)
                ))
                .await?;
        }
    }
    Ok(())
}

/// Move renamed tables to their target names after the pre-data DDL
/// created them under their source names.
async fn apply_renames(
    target: &Client,
    catalog: &SourceCatalog,
    config: &Config,
) -> anyhow::Result<()> {
    for t in &catalog.tables {
        let from = &t.schema.id;
        let to = config.tables.target_name(from);
        if &to == from {
            continue;
        }
        let mut sql = String::new();
        if to.name != from.name {
            sql.push_str(&format!(
                "ALTER TABLE {} RENAME TO {};",
                from.quoted(),
                quote_ident(&to.name)
            ));
        }
        if to.schema != from.schema {
            let renamed = ferry_core::TableId::new(from.schema.clone(), to.name.clone());
            sql.push_str(&format!(
                "ALTER TABLE {} SET SCHEMA {};",
                renamed.quoted(),
                quote_ident(&to.schema)
            ));
        }
        target
            .batch_execute(&sql)
            .await
            .with_context(|| format!("renaming {from} to {to} on the target"))?;
    }
    Ok(())
}
