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
//! The proxy, when configured, is the process's and serves through the
//! reverse run (clients on the new database); `ferry rollback --via-proxy`
//! moves them back to the old source (`super::proxy`).
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

mod ending;
mod opening;

use ending::unrecorded_end;
pub use ending::{end, finish_now, finish_offline};
pub use opening::{Prepared, abandon, guard, open, planned_step, prepare};

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
    reverse_live_on(config, &target).await
}

/// [`reverse_live`] on a target session the caller holds.
pub async fn reverse_live_on(
    config: &Config,
    target: &tokio_postgres::Client,
) -> anyhow::Result<bool> {
    let state = StateStore::new(config.state.schema.clone());
    // Read only: a first run makes the state schema later, beside the
    // checks of `ferry plan`, instead of before them.
    let done = state.phase_if_present(target).await? == Some(Phase::Done);
    Ok(done
        && read_row(target, &state)
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

/// The reverse run's control address, also in the new database's state:
/// `ferry status`, `rollback` and `finish` read it there (the forward
/// config's target) when `control.listen` asks for port 0. Best effort.
/// `reverse`: the reversed config.
pub async fn publish_address(reverse: &Config, state: &StateStore, addr: &str) {
    let published = async {
        let new = connect(&lifted(&reverse.source)?, "target").await?;
        super::live::publish_address(&new, state, addr).await
    }
    .await;
    if let Err(e) = published {
        tracing::warn!(error = %format!("{e:#}"), "could not publish the control address in the new database; `ferry status` needs control.listen with a fixed port");
    }
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
    // Schema changes on the new database are not carried back (no event
    // triggers are installed there; see the README's limits).
    r.postgres.capture_ddl = false;
    // The process's proxy (started from the forward config) serves the
    // reverse run too; the reversed config never starts one.
    r.proxy = Default::default();
    Ok(r)
}

/// The carried tables as the target's state records them: (old source
/// name, new database name).
pub async fn carried(
    target: &Client,
    state: &StateStore,
) -> anyhow::Result<Vec<(TableId, TableId)>> {
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
    info!(
        "schema changes on the new database are not carried back to the old source during the fallback: make them after `ferry finish`, or on the old source first"
    );
    let refusal = || -> super::Checked<'_> { Box::pin(std::future::ready(None)) };
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

fn database_name(endpoint: &Endpoint) -> anyhow::Result<String> {
    let url = endpoint
        .url
        .parsed()
        .map_err(|e| anyhow::anyhow!("{} is not a valid URL: {e}", endpoint.url))?;
    Ok(url.path().trim_start_matches('/').to_owned())
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
