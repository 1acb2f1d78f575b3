//! Opening the way back, inside `ferry cutover --with-fallback`: which
//! requests a run takes ([`guard`]), the checks, the publications and
//! sessions prepared before the fence ([`prepare`]), and the slot and the
//! reverse state written inside it ([`open`]); [`abandon`] undoes it when
//! the cutover fails afterwards.

use super::*;

/// Why a cutover with fallback cannot run here, or `Ok`. Checked before
/// the fence: PostgreSQL source, fenced cutover, a target that allows
/// logical replication.
pub async fn check(config: &Config, fence: bool) -> Result<(), String> {
    if let Some(why) = unavailable(config) {
        return Err(why);
    }
    if !fence {
        return Err(
            "--with-fallback needs --fence: the old source must stay read-only for everyone but ferry while it follows the new database (with --via-proxy the fence follows the proxy's switch)".into(),
        );
    }
    let target = connect(&config.target, "target")
        .await
        .map_err(|e| e.to_string())?;
    if let Some(why) = pg::logical_replication_problem(&target)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err(why);
    }
    // Publishing a table without a replica identity would make the
    // application's UPDATE and DELETE fail on the new database.
    let state = StateStore::new(config.state.schema.clone());
    let filter = config.tables.filter()?;
    let published: Vec<TableId> = carried(&target, &state)
        .await
        .map_err(|e| format!("{e:#}"))?
        .into_iter()
        .filter(|(old, _)| !filter.insert_only(old))
        .map(|(_, new)| new)
        .collect();
    let lacking = pg::tables_without_identity(&target, &published)
        .await
        .map_err(|e| e.to_string())?;
    if !lacking.is_empty() {
        let names: Vec<String> = lacking.iter().map(ToString::to_string).collect();
        return Err(format!(
            "on the target, {} ha{} no primary key and no replica identity: published for the way back, the application's UPDATE and DELETE there would fail; give each a primary key or ALTER TABLE … REPLICA IDENTITY FULL on the target (or declare it insert-only in tables.insert_only)",
            names.join(", "),
            if names.len() == 1 { "s" } else { "ve" }
        ));
    }
    Ok(())
}

/// Which cutover requests this run takes: a forward run cuts over (with
/// or without fallback) and refuses rollback and finish; a reverse run
/// takes only rollback and finish. `Err` is the refusal.
pub async fn guard(config: &Config, req: &CutoverRequest) -> Result<(), String> {
    accepts(config.direction, req)?;
    if req.with_fallback {
        check(config, req.fence)
            .await
            .map_err(|why| format!("refused: --with-fallback: {why}"))?;
    }
    Ok(())
}

/// The request-kind part of [`guard`]. Pure.
fn accepts(direction: Direction, req: &CutoverRequest) -> Result<(), String> {
    let reverse = direction == Direction::Reverse;
    let ends = req.rollback || req.finish_fallback;
    if reverse && !ends {
        return Err("refused: ferry streams the new database back into the old source (fallback after a cutover): `ferry rollback` moves back to the old source, `ferry finish` ends the fallback".into());
    }
    if !reverse && ends {
        return Err("refused: no fallback is open: ferry streams forward; `ferry rollback` and `ferry finish` follow a cutover with --with-fallback".into());
    }
    if req.with_fallback && ends {
        return Err("refused: a rollback or finish has no fallback of its own".into());
    }
    Ok(())
}

/// The dry run's line for `--with-fallback`.
pub fn planned_step(config: &Config) -> String {
    format!(
        "fallback: publication {} before the fence, slot {} on the target inside it (after the drain); then ferry run streams the target back into the old source, which stays fenced for everyone but ferry; schema changes on the target are not carried back (make them after `ferry finish`)",
        pg::reverse_publication(&config.postgres.publication),
        pg::reverse_slot(&config.postgres.slot)
    )
}

/// What [`prepare`] set up before the fence, so that [`open`] spends the
/// write freeze on the slot and two small transactions only.
pub struct Prepared {
    reverse: Config,
    target: Client,
    old: Client,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("slot", &self.reverse.postgres.slot)
            .finish()
    }
}

/// Before the fence: the reverse publications on the target, the old
/// source's state schema, and a session on each side (none of it takes
/// time from the write freeze).
pub async fn prepare(config: &Config, carried: &[(TableId, TableId)]) -> Result<Prepared, Error> {
    let reverse = reverse_config(config, carried)
        .map_err(|e| Error::operator(format!("{e:#}"), "fix source.url"))?;
    let filter = config
        .tables
        .filter()
        .map_err(|e| Error::operator(e, "fix the tables section"))?;
    let (insert_only, all): (Vec<_>, Vec<_>) =
        carried.iter().partition(|(old, _)| filter.insert_only(old));
    let news =
        |v: Vec<&(TableId, TableId)>| v.into_iter().map(|(_, n)| n.clone()).collect::<Vec<_>>();
    let target = connect(&config.target, "target").await?;
    pg::ensure_reverse_publications(
        &target,
        &reverse.postgres.publication,
        &news(all),
        &news(insert_only),
    )
    .await?;
    let old = connect(&reverse.target, "old source").await?;
    StateStore::new(config.state.schema.clone())
        .ensure(&old)
        .await?;
    Ok(Prepared {
        reverse,
        target,
        old,
    })
}

/// Inside the fence, after the drain: create the reverse slot and write
/// the reverse state on both sides. Returns the slot's consistent point
/// and a note with the time each part took.
pub async fn open(
    prepared: &Prepared,
    carried: &[(TableId, TableId)],
) -> Result<(Lsn, String), Error> {
    let reverse = &prepared.reverse;
    let started = std::time::Instant::now();
    let at = pg::create_reverse_slot(&prepared.target, &reverse.postgres.slot).await?;
    let slot_took = started.elapsed();
    let state = StateStore::new(reverse.state.schema.clone());
    let row = FallbackRow {
        direction: "reverse".into(),
        slot: reverse.postgres.slot.clone(),
        publication: reverse.postgres.publication.clone(),
        start_position: at.to_string(),
    };
    init_old_source(&prepared.old, &state, carried, at, &row)
        .await
        .map_err(|e| {
            Error::transient(format!(
                "writing the reverse state on the old source: {e:#}"
            ))
        })?;
    write_row(&prepared.target, &state, &row)
        .await
        .map_err(|e| Error::transient(format!("recording the fallback on the target: {e:#}")))?;
    let note = format!(
        "slot created in {:.0} ms, reverse state written in {:.0} ms",
        slot_took.as_secs_f64() * 1000.0,
        (started.elapsed() - slot_took).as_secs_f64() * 1000.0
    );
    info!(slot = %row.slot, at = %at, %note, "fallback opened: the old source will follow the new database");
    Ok((at, note))
}

/// The old source's state for the reverse stream, in one transaction.
async fn init_old_source(
    old: &Client,
    state: &StateStore,
    carried: &[(TableId, TableId)],
    at: Lsn,
    row: &FallbackRow,
) -> anyhow::Result<()> {
    old.batch_execute("BEGIN").await?;
    let result = async {
        // Whatever an earlier reverse stream left is replaced.
        old.batch_execute(&format!(
            "DELETE FROM {}; DELETE FROM {}; DELETE FROM {}; DELETE FROM {}; DELETE FROM {}",
            state.table("checkpoint"),
            state.table("tables"),
            state.table("chunks"),
            state.table("table_snapshots"),
            state.table("load_plan"),
        ))
        .await?;
        for (old_name, new_name) in carried {
            state
                .register_table(old, new_name, old_name, None, None)
                .await?;
            state
                .set_table_state(old, new_name, &TableState::Streaming)
                .await?;
        }
        ferry_apply::checkpoint::write_checkpoint(
            old,
            state,
            crate::pipeline::STREAM,
            &at,
            ferry_core::value::Timestamp::now(),
        )
        .await?;
        state.write_phase(old, Phase::Stream).await?;
        write_row(old, state, row).await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(old.batch_execute("COMMIT").await?),
        Err(e) => {
            let _ = old.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn write_row(client: &Client, state: &StateStore, row: &FallbackRow) -> anyhow::Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {} (id, direction, slot, publication, start_position) VALUES (1, $1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET direction = EXCLUDED.direction, slot = EXCLUDED.slot,
                    publication = EXCLUDED.publication, start_position = EXCLUDED.start_position,
                    started_at = now(), ended_at = NULL, note = NULL",
                state.table("fallback")
            ),
            &[&row.direction, &row.slot, &row.publication, &row.start_position],
        )
        .await
        .context("writing the fallback row")?;
    Ok(())
}

/// A cutover that failed after [`open`]: drop the reverse slot and
/// publication and both fallback rows. Best effort (logged).
pub async fn abandon(config: &Config, carried: &[(TableId, TableId)]) {
    let result = async {
        let reverse = reverse_config(config, carried)?;
        let state = StateStore::new(config.state.schema.clone());
        let target = connect(&config.target, "target").await?;
        pg::drop_reverse_capture(
            &target,
            &reverse.postgres.slot,
            &reverse.postgres.publication,
        )
        .await?;
        target
            .batch_execute(&format!("DELETE FROM {}", state.table("fallback")))
            .await?;
        let old = connect(&reverse.target, "old source").await?;
        old.batch_execute(&format!(
            "DELETE FROM {}; DELETE FROM {}",
            state.table("fallback"),
            state.table("pipeline")
        ))
        .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %format!("{e:#}"), "could not remove the fallback of a failed cutover; the next cutover with fallback replaces it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_each_direction_takes() {
        let req = |with_fallback, rollback, finish_fallback| CutoverRequest {
            with_fallback,
            rollback,
            finish_fallback,
            ..CutoverRequest::default()
        };
        use Direction::{Forward, Reverse};
        // (direction, request, accepted, refusal contains)
        let cases = [
            (Forward, req(false, false, false), true, ""),
            (Forward, req(true, false, false), true, ""),
            (
                Forward,
                req(false, true, false),
                false,
                "no fallback is open",
            ),
            (
                Forward,
                req(false, false, true),
                false,
                "no fallback is open",
            ),
            (Reverse, req(false, false, false), false, "`ferry rollback`"),
            (Reverse, req(true, false, false), false, "`ferry rollback`"),
            (Reverse, req(false, true, false), true, ""),
            (Reverse, req(false, false, true), true, ""),
            (
                Reverse,
                req(true, true, false),
                false,
                "no fallback of its own",
            ),
        ];
        for (direction, r, ok, why) in cases {
            let got = accepts(direction, &r);
            assert_eq!(got.is_ok(), ok, "{direction:?} {r:?}: {got:?}");
            if let Err(e) = got {
                assert!(e.contains(why), "{e}");
            }
        }
    }
}
