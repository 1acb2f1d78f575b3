//! Ending the way back: `ferry finish` on the running reverse stream
//! ([`finish_now`]) or without one ([`finish_offline`]), what both and
//! `ferry rollback` do once the reverse stream has stopped ([`end`]), and
//! completing an end a crash left unrecorded ([`unrecorded_end`]).

use super::*;

/// A rollback or finish that stopped the reverse stream (the old source's
/// phase is `done`) but crashed before [`end`] recorded it: a rollback
/// when the new database is fenced, else a finish.
pub(super) async fn unrecorded_end(reverse: &Config) -> anyhow::Result<Option<FallbackEnd>> {
    let old = connect(&reverse.target, "old source").await?;
    let state = StateStore::new(reverse.state.schema.clone());
    let stopped = state.read_phase(&old).await.ok().flatten() == Some(Phase::Done);
    let open = read_row(&old, &state)
        .await
        .is_some_and(|r| r.direction == "reverse");
    if !(stopped && open) {
        return Ok(None);
    }
    let new = connect(&reverse.source, "target").await?;
    let fenced: bool = new
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
                 WHERE d.datname = current_database() AND s.setrole = 0
                   AND 'default_transaction_read_only=on' = ANY (s.setconfig))",
            &[],
        )
        .await
        .context("reading whether the new database is fenced")?
        .get(0);
    Ok(Some(match fenced {
        true => FallbackEnd::RolledBack,
        false => FallbackEnd::Finished,
    }))
}

/// `ferry finish` on the running reverse stream: stop it, drop its slot
/// and publication, lift the old source's fence, record it.
pub async fn finish_now<P: ferry_core::Position>(live: &Live<P>) -> Result<CutoverRecord, String> {
    let started_at = SystemTime::now();
    let (reply, answer) = oneshot::channel();
    live.request_finish(Finish {
        keep_slot: false,
        fallback_end: Some(FallbackEnd::Finished),
        reply,
    });
    let finished = answer
        .await
        .map_err(|_| "the pipeline stopped before finishing the fallback".to_owned())?
        .map_err(|e| format!("finishing the fallback failed: {e}"))?;
    let rec = CutoverRecord {
        dry_run: false,
        started_at,
        finished_at: Some(SystemTime::now()),
        fenced: false,
        write_freeze_seconds: None,
        final_position: live.applied_position().map(|p| p.to_string()),
        lag_seconds_at_start: live.lag().seconds,
        sequences_synced: 0,
        validation: Vec::new(),
        slot_dropped: finished.slot_dropped,
        restored: finished.restored,
        steps: vec!["stopped the reverse stream".into(), finished.release_note],
        outcome: "fallback finished".into(),
    };
    crate::pipeline::cutover::record(live, &rec).await;
    Ok(rec)
}

/// After the reverse stream's own finish (its slot and publication
/// dropped, the old source's phase `done`): lift the old source's fence
/// and record how the fallback ended on both sides. `reverse`: the
/// reversed config.
pub async fn end(reverse: &Config, how: FallbackEnd) -> anyhow::Result<String> {
    let state = StateStore::new(reverse.state.schema.clone());
    if how == FallbackEnd::Finished {
        // Rollback synced them inside its fence; finish does it now.
        sync_sequences(reverse)
            .await
            .context("setting the old source's sequences before lifting its fence")?;
    }
    let old = connect(&reverse.target, "old source").await?;
    let db = database_name(&reverse.target)?;
    pg::unfence(&old, &db).await?;
    let sql = format!(
        "UPDATE {} SET direction = $1, ended_at = now() WHERE id = 1",
        state.table("fallback")
    );
    old.execute(&sql, &[&how.as_str()]).await?;
    // The new database may be fenced now (rollback): ferry lifts it for
    // its own session only.
    let new = connect(&lifted(&reverse.source)?, "target").await?;
    new.execute(&sql, &[&how.as_str()]).await?;
    state
        .record_event(&new, "fallback", &format!("fallback {}", how.as_str()))
        .await?;
    info!(
        how = how.as_str(),
        "fallback ended; the old source takes writes again"
    );
    Ok(format!(
        "old source unfenced (ALTER DATABASE {db} RESET default_transaction_read_only); fallback {}",
        how.as_str()
    ))
}

/// `ferry finish` when no `ferry run` streams in reverse: drop the reverse
/// slot and publication on the new database, lift the old source's fence,
/// mark the old source's phase `done` and record the end on both sides.
pub async fn finish_offline(config: &Config) -> anyhow::Result<String> {
    let target = connect(&config.target, "target").await?;
    let state = StateStore::new(config.state.schema.clone());
    let Some(row) = read_row(&target, &state)
        .await
        .filter(|r| r.direction == "reverse")
    else {
        anyhow::bail!(
            "no fallback is open: the target records no cutover with fallback still streaming back"
        );
    };
    let tables = carried(&target, &state).await?;
    let reverse = reverse_config(config, &tables)?;
    pg::drop_reverse_capture(&target, &row.slot, &row.publication).await?;
    let old = connect(&reverse.target, "old source").await?;
    // As the reverse run's own finish does: what was changed on the old
    // source for applying (no-replica-role mode) is put back with `done`.
    old.batch_execute("BEGIN").await?;
    let restored = async {
        let restored = crate::pipeline::overrides::restore_all(&old, &state).await?;
        state.write_phase(&old, Phase::Done).await?;
        anyhow::Ok(restored)
    }
    .await;
    match restored {
        Ok(r) => {
            old.batch_execute("COMMIT").await?;
            for r in &r {
                info!(restored = %r, "old source schema restored");
            }
        }
        Err(e) => {
            let _ = old.batch_execute("ROLLBACK").await;
            return Err(e.context("restoring the old source's schema"));
        }
    }
    end(&reverse, FallbackEnd::Finished).await
}
