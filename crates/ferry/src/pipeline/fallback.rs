//! The way back after a cutover (DESIGN.md §9): `cutover --with-fallback`,
//! the reverse stream, `ferry rollback` and `ferry finish`.
//!
//! ```text
//!  forward:  old source ──slot──▶ applier ──▶ new database (target)
//!  cutover --with-fallback (fenced): drain, then a slot on the new database
//!  reverse:  new database ──reverse slot──▶ applier ──▶ old source (fenced)
//!  rollback: the reverse stream's own cutover (fence the new database,
//!            drain, sequences, counts), then the old source is unfenced
//!  finish:   the reverse stream stops, its slot and publication are
//!            dropped, the old source is unfenced
//! ```
//!
//! The reverse stream is the same generic pipeline (`run_source`) with a
//! reversed config ([`reverse_config`]): a `PgSource` on the new database
//! reading the reverse slot, the applier on the old source, whose own
//! `ferry` state schema holds the reverse checkpoint, phase and runs. Its
//! lag figures, status (`direction: reverse`), metrics, console and
//! cutover record are the forward ones. The old source stays fenced
//! (`default_transaction_read_only` for every new session): ferry's own
//! sessions there start with `default_transaction_read_only=off`
//! ([`ferry_postgres::fallback::LIFT_FENCE_OPTION`]).
//!
//! Opening ([`open`], inside the fence, after the forward drain): the
//! reverse slot's consistent point follows every change ferry applied
//! to the new database and precedes every write the application makes
//! there (the cutover has not returned yet). The old source's state is
//! written in one transaction: phase `stream`, the carried tables
//! `streaming`, checkpoint = the slot's consistent point, fallback row
//! `reverse`; then the target's fallback row. Nothing is loaded: both
//! sides hold the same rows at that point.
//!
//! Which direction is live: the target's phase is `done` and its fallback
//! row says `reverse` ([`reverse_live`]); the old source's row says the
//! same. Rollback and finish write `rolled_back` / `finished` on both sides
//! ([`end`]). A cutover that fails after opening drops the reverse slot and
//! both rows again ([`abandon`]); a crash in between leaves a slot that the
//! next cutover with fallback replaces.
//!
//! Echo: nothing ferry applied forward is decoded by the reverse slot (it
//! is created after the drain), and ferry's apply sessions carry a
//! replication origin that the reverse stream skips
//! (`ferry_postgres::fallback`).

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use ferry_apply::state::{Phase, StateStore, TableState};
use ferry_core::config::{Config, Direction, Endpoint, TablesConfig, TargetTablesConfig};
use ferry_core::{Error, Lsn, RedactedUrl, TableId};
use ferry_monitor::CutoverRecord;
use ferry_postgres::connect::connect;
use ferry_postgres::fallback as pg;
use ferry_postgres::source::PgSource;
use tokio::sync::oneshot;
use tokio_postgres::Client;
use tracing::info;

use super::live::{Finish, Live};
use crate::Outcome;
use crate::control::CutoverRequest;
use crate::shutdown::Shutdown;

/// How a fallback period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackEnd {
    /// `ferry rollback`: the old source is live again.
    RolledBack,
    /// `ferry finish`: the new database stays, the way back is gone.
    Finished,
}

impl FallbackEnd {
    fn as_str(self) -> &'static str {
        match self {
            FallbackEnd::RolledBack => "rolled_back",
            FallbackEnd::Finished => "finished",
        }
    }
}

/// The fallback row of a state schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRow {
    /// `reverse`, `rolled_back` or `finished`.
    pub direction: String,
    pub slot: String,
    pub publication: String,
    pub start_position: String,
}

/// The fallback row of `state` on `client`, if any (and if the state
/// schema has the table).
pub async fn read_row(client: &Client, state: &StateStore) -> Option<FallbackRow> {
    let sql = format!(
        "SELECT direction, slot, publication, start_position FROM {} WHERE id = 1",
        state.table("fallback")
    );
    let row = client.query_opt(&sql, &[]).await.ok()??;
    Some(FallbackRow {
        direction: row.get(0),
        slot: row.get(1),
        publication: row.get(2),
        start_position: row.get(3),
    })
}

/// Whether `ferry run` streams the new database back into the old source:
/// the target's phase is `done` and its fallback row says `reverse`.
pub async fn reverse_live(config: &Config) -> anyhow::Result<bool> {
    let target = connect(&config.target, "target").await?;
    let state = StateStore::new(config.state.schema.clone());
    state.ensure(&target).await?;
    let done = state.read_phase(&target).await? == Some(Phase::Done);
    Ok(done
        && read_row(&target, &state)
            .await
            .is_some_and(|r| r.direction == "reverse"))
}

/// `endpoint` with the startup option that lifts a fence for ferry's own
/// sessions ([`pg::LIFT_FENCE_OPTION`]).
pub fn lifted(endpoint: &Endpoint) -> anyhow::Result<Endpoint> {
    let mut url = endpoint
        .url
        .parsed()
        .map_err(|e| anyhow::anyhow!("{} is not a valid URL: {e}", endpoint.url))?;
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    match pairs.iter_mut().find(|(k, _)| k == "options") {
        Some((_, v)) => *v = format!("{v} {}", pg::LIFT_FENCE_OPTION),
        None => pairs.push(("options".into(), pg::LIFT_FENCE_OPTION.into())),
    }
    url.query_pairs_mut().clear().extend_pairs(pairs);
    let mut out = endpoint.clone();
    out.url = RedactedUrl::new(url.as_str());
    Ok(out)
}

/// A table name as a glob that matches only itself.
fn literal_glob(t: &TableId) -> String {
    format!("{}.{}", t.schema, t.name)
        .chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '{' | '}' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// The config of the reverse stream: source = the new database, target =
/// the old source with the fence lifted for ferry's sessions; the tables
/// are the carried ones under their names on the new database (`carried`:
/// (old source name, new database name)), renamed back; the slot and
/// publication are the reverse ones. Pure apart from parsing the URL.
pub fn reverse_config(config: &Config, carried: &[(TableId, TableId)]) -> anyhow::Result<Config> {
    let filter = config.tables.filter().map_err(anyhow::Error::msg)?;
    let mut r = config.clone();
    r.direction = Direction::Reverse;
    r.source = config.target.clone();
    r.target = lifted(&config.source)?;
    r.tables = TablesConfig {
        include: carried.iter().map(|(_, new)| literal_glob(new)).collect(),
        exclude: Vec::new(),
        rename: carried
            .iter()
            .filter(|(old, new)| old != new)
            .map(|(old, new)| (new.to_string(), old.to_string()))
            .collect(),
        insert_only: carried
            .iter()
            .filter(|(old, _)| filter.insert_only(old))
            .map(|(_, new)| literal_glob(new))
            .collect(),
        columns: Default::default(),
    };
    r.target_tables = TargetTablesConfig::default();
    r.postgres.slot = pg::reverse_slot(&config.postgres.slot);
    r.postgres.publication = pg::reverse_publication(&config.postgres.publication);
    r.postgres.existing_slot = false;
    Ok(r)
}

/// The carried tables as the target's state records them: (old source
/// name, new database name).
async fn carried(target: &Client, state: &StateStore) -> anyhow::Result<Vec<(TableId, TableId)>> {
    Ok(state
        .tables(target)
        .await?
        .into_iter()
        .filter_map(|t| {
            Some((
                TableId::parse(&t.source_table)?,
                TableId::parse(&t.target_table)?,
            ))
        })
        .collect())
}

/// `ferry run` after a cutover with fallback: stream the new database
/// into the old source until shutdown, rollback or finish.
pub async fn run_reverse(config: &Config, shutdown: Shutdown) -> anyhow::Result<Outcome> {
    let target = connect(&config.target, "target").await?;
    let state = StateStore::new(config.state.schema.clone());
    let tables = carried(&target, &state).await?;
    drop(target);
    let reverse = reverse_config(config, &tables)?;
    if let Some(how) = unrecorded_end(&reverse).await? {
        info!(
            how = how.as_str(),
            "the reverse stream ended before its end was recorded; recording it now"
        );
        end(&reverse, how).await?;
        return Ok(Outcome::Ok);
    }
    info!(
        slot = %reverse.postgres.slot,
        tables = tables.len(),
        "cut over with fallback: streaming the new database back into the old source"
    );
    let refusal = || -> ferry_core::source::BoxFuture<'_, Option<String>> {
        Box::pin(std::future::ready(None))
    };
    let keeper = tokio::spawn(keep_sequences(reverse.clone(), shutdown.child_token()));
    let outcome = super::run_source(
        Arc::new(PgSource::skipping_origins(
            reverse.clone(),
            pg::ORIGIN_PREFIX,
        )),
        &reverse,
        &refusal,
        shutdown,
    )
    .await;
    keeper.abort();
    outcome
}

/// A rollback or finish that stopped the reverse stream (the old source's
/// phase is `done`) but crashed before [`end`] recorded it: a rollback
/// when the new database is fenced, else a finish.
async fn unrecorded_end(reverse: &Config) -> anyhow::Result<Option<FallbackEnd>> {
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

/// How often the old source's sequences are set to the new database's.
const SEQUENCES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Logical decoding does not carry sequences: while the reverse stream
/// runs, set the old source's sequences to the new database's values every
/// few seconds (ahead of the rows is harmless: a sequence only has to be
/// past every value used), so they are in step whenever the old source
/// takes writes again. `ferry rollback` syncs them exactly, inside its
/// fence; `ferry finish` once more before lifting the old source's fence.
async fn keep_sequences(reverse: Config, stop: Shutdown) {
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SEQUENCES_EVERY) => {}
        }
        match sync_sequences(&reverse).await {
            Ok(n) => {
                tracing::debug!(sequences = n, "old source sequences in step");
                warned = false;
            }
            Err(e) if !warned => {
                tracing::warn!(error = %format!("{e:#}"), "could not set the old source's sequences; will retry (a rollback syncs them anyway)");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// Set every sequence of the carried tables on the old source to its value
/// on the new database. `reverse`: the reversed config.
async fn sync_sequences(reverse: &Config) -> anyhow::Result<usize> {
    use ferry_core::source::{Cutover as _, Source as _};
    let mut session = PgSource::new(reverse.clone()).cutover().await?;
    let sequences = session.sequences().await?;
    let old = connect(&reverse.target, "old source").await?;
    for seq in &sequences {
        let on_old = super::cutover::target_sequence(reverse, &old, seq)
            .await
            .map_err(anyhow::Error::msg)?;
        old.execute(
            "SELECT setval($1::text::regclass, $2, $3)",
            &[&on_old, &seq.last_value, &seq.is_called],
        )
        .await
        .with_context(|| format!("setting sequence {on_old} on the old source"))?;
    }
    Ok(sequences.len())
}

/// Why a cutover with fallback cannot run here, or `Ok`. Checked before
/// the fence: PostgreSQL source, fenced cutover, a target that allows
/// logical replication.
pub async fn check(config: &Config, fence: bool) -> Result<(), String> {
    if let Some(why) = unavailable(config) {
        return Err(why);
    }
    if !fence {
        return Err(
            "--with-fallback needs --fence: the old source must stay read-only for everyone but ferry while it follows the new database".into(),
        );
    }
    let target = connect(&config.target, "target")
        .await
        .map_err(|e| e.to_string())?;
    match pg::logical_replication_problem(&target).await {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    }
}

/// Why this kind of source has no way back yet (`ferry plan` says it too).
pub fn unavailable(config: &Config) -> Option<String> {
    use ferry_core::config::EndpointKind;
    match config.source.kind() {
        Ok(EndpointKind::Postgres) => None,
        Ok(EndpointKind::MySql) => Some(
            "fallback is not available yet for MySQL/MariaDB sources: the reverse stream applies with ferry's PostgreSQL applier, and no applier writes MySQL/MariaDB".into(),
        ),
        Ok(EndpointKind::Sqlite(_)) => Some(
            "fallback is not available yet for SQLite sources: the reverse stream applies with ferry's PostgreSQL applier, and no applier writes SQLite files".into(),
        ),
        Err(e) => Some(e),
    }
}

/// Which cutover requests this run takes: a forward run cuts over (with
/// or without fallback) and refuses rollback and finish; a reverse run
/// takes only rollback and finish. `Err` is the refusal.
pub async fn guard(config: &Config, req: &CutoverRequest) -> Result<(), String> {
    let reverse = config.direction == Direction::Reverse;
    if reverse && !(req.rollback || req.finish_fallback) {
        return Err("refused: ferry streams the new database back into the old source (fallback after a cutover): `ferry rollback` moves back to the old source, `ferry finish` ends the fallback".into());
    }
    if !reverse && (req.rollback || req.finish_fallback) {
        return Err("refused: no fallback is open: ferry streams forward; `ferry rollback` and `ferry finish` follow a cutover with --with-fallback".into());
    }
    if req.with_fallback {
        if req.rollback {
            return Err("refused: a rollback has no fallback of its own".into());
        }
        check(config, req.fence)
            .await
            .map_err(|why| format!("refused: --with-fallback: {why}"))?;
    }
    Ok(())
}

/// The dry run's line for `--with-fallback`.
pub fn planned_step(config: &Config) -> String {
    format!(
        "fallback: publication {} before the fence, slot {} on the target inside it (after the drain); then ferry run streams the target back into the old source, which stays fenced for everyone but ferry",
        pg::reverse_publication(&config.postgres.publication),
        pg::reverse_slot(&config.postgres.slot)
    )
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
    super::cutover::record(live, &rec).await;
    Ok(rec)
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
            super::STREAM,
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

fn database_name(endpoint: &Endpoint) -> anyhow::Result<String> {
    let url = endpoint
        .url
        .parsed()
        .map_err(|e| anyhow::anyhow!("{} is not a valid URL: {e}", endpoint.url))?;
    Ok(url.path().trim_start_matches('/').to_owned())
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
        let restored = super::overrides::restore_all(&old, &state).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(source: &str) -> Config {
        let toml = format!(
            "[source]\nurl = \"{source}\"\n[target]\nurl = \"postgres://u:pw@new/app\"\n[tables]\ninsert_only = [\"public.log\"]\n[tables.rename]\n\"public.a\" = \"app.a2\"\n"
        );
        Config::from_parts(&toml, "test", std::iter::empty()).expect("config")
    }

    #[test]
    fn the_reverse_config_swaps_the_ends_and_renames_back() {
        let c = config("postgres://u:pw@old/app?sslmode=disable");
        let carried = vec![
            (TableId::new("public", "a"), TableId::new("app", "a2")),
            (TableId::new("public", "log"), TableId::new("public", "log")),
            (
                TableId::new("public", "we*ird"),
                TableId::new("public", "we*ird"),
            ),
        ];
        let r = reverse_config(&c, &carried).unwrap();
        assert_eq!(r.direction, Direction::Reverse);
        assert_eq!(r.source.url.expose(), "postgres://u:pw@new/app");
        let old = r.target.url.expose();
        assert!(
            old.starts_with("postgres://u:pw@old/app?sslmode=disable&options="),
            "{old}"
        );
        assert!(old.contains("default_transaction_read_only%3Doff"), "{old}");
        assert_eq!(r.postgres.slot, "ferry_reverse");
        assert_eq!(r.postgres.publication, "ferry_reverse");
        let f = r.tables.filter().unwrap();
        assert!(f.matches(&TableId::new("app", "a2")));
        assert!(f.matches(&TableId::new("public", "we*ird")));
        assert!(
            !f.matches(&TableId::new("public", "a")),
            "old names are not read"
        );
        assert!(
            !f.matches(&TableId::new("public", "weXird")),
            "names are literal"
        );
        assert!(f.insert_only(&TableId::new("public", "log")));
        assert!(!f.insert_only(&TableId::new("app", "a2")));
        assert_eq!(
            r.tables.target_name(&TableId::new("app", "a2")),
            TableId::new("public", "a")
        );
        assert_eq!(
            r.tables.target_name(&TableId::new("public", "log")),
            TableId::new("public", "log")
        );
    }

    #[test]
    fn the_fence_lift_joins_the_urls_own_options() {
        let c = config("postgres://u:pw@old/app?options=-c%20work_mem%3D64MB");
        let l = lifted(&c.source).unwrap();
        let pairs: Vec<(String, String)> = l
            .url
            .parsed()
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            pairs,
            vec![(
                "options".to_owned(),
                "-c work_mem=64MB -c default_transaction_read_only=off".to_owned()
            )]
        );
        assert!(!l.url.to_string().contains("pw"), "redacted: {}", l.url);
    }

    #[test]
    fn only_postgres_sources_have_a_way_back() {
        assert_eq!(unavailable(&config("postgres://u@old/app")), None);
        let m = unavailable(&config("mysql://u@old/app")).unwrap();
        assert!(m.contains("not available yet for MySQL/MariaDB"), "{m}");
        let s = unavailable(&config("sqlite:///tmp/x.db")).unwrap();
        assert!(s.contains("not available yet for SQLite"), "{s}");
    }
}
