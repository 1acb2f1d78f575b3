//! Operator commands against a running `ferry run` (through its control
//! API) or, when none runs, against the state recorded in the target:
//! `status`, `cutover`, `pause`, `resume`, `report`, `validate`.

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use ferry_apply::state::StateStore;
use ferry_core::config::Config;
use ferry_monitor::status::TableStatus;
use ferry_monitor::{LagSample, Phase, Status, render_table};

use crate::Outcome;
use crate::control::{self, ControlClientError, CutoverRequest};

/// Where the running `ferry run` listens: `control.listen`, or the address
/// it published in the target when that asks for port 0.
async fn control_address(config: &Config) -> anyhow::Result<String> {
    let configured = &config.control.listen;
    if !configured.ends_with(":0") {
        return Ok(configured.clone());
    }
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    let state = StateStore::new(config.state.schema.clone());
    crate::pipeline::live::published_address(&target, &state)
        .await
        .context(
            "control.listen uses port 0 and no running ferry published its address in the target",
        )
}

/// The live status, or the recorded one (saying so) when nothing runs.
pub async fn current_status(config: &Config) -> anyhow::Result<Status> {
    let addr = control_address(config).await;
    if let Ok(addr) = &addr {
        match control::get_status(addr, config.control.token.as_ref()).await {
            Ok(s) => return Ok(s),
            Err(ControlClientError::NotRunning { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    recorded_status(config).await
}

/// The recorded status; while the old source follows the new database
/// (a cutover with fallback, no rollback or finish yet), the reverse
/// stream's, as recorded in the old source's state schema.
async fn recorded_status(config: &Config) -> anyhow::Result<Status> {
    if let Some(reverse) = reverse_config(config, true).await {
        let mut s = recorded_status_in(&reverse).await?;
        s.direction = "reverse".into();
        return Ok(s);
    }
    recorded_status_in(config).await
}

/// The reversed config of a cutover with fallback recorded in the target
/// (`open_only`: only while its reverse stream is the live direction).
async fn reverse_config(config: &Config, open_only: bool) -> Option<Config> {
    use crate::pipeline::fallback;
    let target = ferry_postgres::connect::connect(&config.target, "target")
        .await
        .ok()?;
    let state = StateStore::new(config.state.schema.clone());
    let row = fallback::read_row(&target, &state).await?;
    let done = state.read_phase(&target).await.ok().flatten() == Some(Phase::Done);
    if open_only && !(done && row.direction == "reverse") {
        return None;
    }
    let carried = fallback::carried(&target, &state).await.ok()?;
    fallback::reverse_config(config, &carried).ok()
}

async fn recorded_status_in(config: &Config) -> anyhow::Result<Status> {
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    let state = StateStore::new(config.state.schema.clone());
    let phase = state.read_phase(&target).await.ok().flatten();
    // The checkpoint as stored: its source kind and position text (any
    // source; no position type to parse into).
    let checkpoint = target
        .query_opt(
            &format!(
                "SELECT source_kind, position FROM {} WHERE stream = $1",
                state.table("checkpoint")
            ),
            &[&crate::pipeline::STREAM],
        )
        .await
        .ok()
        .flatten()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)));
    let kind = match &checkpoint {
        Some((kind, _)) => kind.clone(),
        None => config.source.kind().map_or_else(
            |_| "unknown".to_owned(),
            |k| k.source_kind().as_str().to_owned(),
        ),
    };
    let mut s = Status::new(phase.unwrap_or(Phase::Plan), &kind, SystemTime::now());
    s.live = false;
    s.applied_position = checkpoint.map(|(_, position)| position);
    if let Ok(tables) = state.tables(&target).await {
        s.tables = tables
            .into_iter()
            .map(|r| TableStatus {
                name: r.source_table,
                state: r.state.as_str().to_owned(),
                rows_copied: r.rows_copied.max(0) as u64,
                rows_estimated: r.row_estimate.map(|e| e.max(0) as u64),
                chunks_done: 0,
                chunks_total: r.chunks_total.unwrap_or(0).max(0) as u32,
                changes_applied: 0,
            })
            .collect();
        s.insert_only = crate::pipeline::live::insert_only_tables(
            config,
            s.tables.iter().map(|t| t.name.clone()),
        );
    }
    let cutover = target
        .query_opt(
            &format!(
                "SELECT cutover::text FROM {} WHERE cutover IS NOT NULL ORDER BY id DESC LIMIT 1",
                state.table("runs")
            ),
            &[],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| serde_json::from_str(r.get::<_, &str>(0)).ok());
    s.cutover = cutover;
    s.validation = crate::validate::store::latest(&target, &state)
        .await
        .unwrap_or_default();
    s.schema_changes = crate::pipeline::live::schema_changes(&target, &state).await;
    s.zero_dates = state.replaced_counts(&target).await.unwrap_or_default();
    Ok(s)
}

#[allow(clippy::print_stdout)]
pub async fn status(
    config: &Config,
    json: bool,
    watch: bool,
    history: bool,
) -> anyhow::Result<Outcome> {
    loop {
        let s = current_status(config).await?;
        let mut out = String::new();
        if watch {
            out.push_str("\x1b[2J\x1b[H");
        }
        if json {
            out.push_str(&serde_json::to_string_pretty(&s)?);
            out.push('\n');
        } else {
            if !s.live {
                out.push_str(
                    "ferry run is not running: showing the state recorded in the target\n\n",
                );
            }
            out.push_str(&render_table(&s));
        }
        if history {
            out.push_str(&render_history(
                &lag_history(config, Duration::from_secs(14 * 86_400)).await?,
            ));
        }
        print!("{out}");
        std::io::stdout().flush().ok();
        if !watch {
            return Ok(Outcome::Ok);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Ok),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn lag_history(config: &Config, span: Duration) -> anyhow::Result<Vec<LagSample>> {
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    let since = SystemTime::now() - span;
    Ok(ferry_monitor::read_history(&target, &config.state.schema, since).await?)
}

fn render_history(samples: &[LagSample]) -> String {
    let mut out = format!("\nlag history ({} samples, oldest first)\n", samples.len());
    // One line per hour at most: the maximum of each hour.
    let mut last_hour = None;
    for s in samples {
        let hour =
            s.at.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() / 3600)
                .unwrap_or(0);
        if last_hour == Some(hour) {
            continue;
        }
        last_hour = Some(hour);
        let peak = samples
            .iter()
            .filter(|x| {
                x.at.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() / 3600)
                    .unwrap_or(0)
                    == hour
            })
            .fold((0.0f64, 0u64), |(a, b), x| {
                (a.max(x.lag_seconds), b.max(x.lag_bytes))
            });
        out.push_str(&format!(
            "  {}  max lag {}  {}\n",
            ferry_monitor::timestamp::format(s.at),
            ferry_monitor::status::human_seconds(peak.0),
            ferry_monitor::status::human_bytes(peak.1)
        ));
    }
    out
}

#[allow(clippy::print_stdout)]
pub async fn cutover(config: &Config, req: CutoverRequest) -> anyhow::Result<Outcome> {
    let addr = control_address(config).await?;
    match control::post_cutover(&addr, config.control.token.as_ref(), &req).await {
        Ok(rec) => {
            println!("{}", serde_json::to_string_pretty(&rec)?);
            if let Some(f) = rec.write_freeze_seconds {
                println!("write freeze: {f:.3}s");
            }
            println!("cutover: {}", rec.outcome);
            Ok(Outcome::Ok)
        }
        Err(ControlClientError::Refused { message, .. }) => {
            println!("cutover: {message}");
            Ok(Outcome::Refused)
        }
        Err(e) => Err(e.into()),
    }
}

/// `ferry finish`: through the running reverse stream when one answers,
/// else directly on both databases.
#[allow(clippy::print_stdout)]
pub async fn finish(config: &Config) -> anyhow::Result<Outcome> {
    if let Ok(addr) = control_address(config).await {
        let req = CutoverRequest {
            finish_fallback: true,
            ..CutoverRequest::default()
        };
        match control::post_cutover(&addr, config.control.token.as_ref(), &req).await {
            Ok(rec) => {
                println!("{}", serde_json::to_string_pretty(&rec)?);
                println!("finish: {}", rec.outcome);
                return Ok(Outcome::Ok);
            }
            Err(ControlClientError::Refused { message, .. }) => {
                println!("finish: {message}");
                return Ok(Outcome::Refused);
            }
            Err(ControlClientError::NotRunning { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match crate::pipeline::fallback::finish_offline(config).await {
        Ok(note) => {
            println!("finish: {note}");
            Ok(Outcome::Ok)
        }
        Err(e) => {
            println!("finish: refused: {e:#}");
            Ok(Outcome::Refused)
        }
    }
}

#[allow(clippy::print_stdout)]
pub async fn pause(config: &Config, paused: bool) -> anyhow::Result<Outcome> {
    let addr = control_address(config).await?;
    if paused {
        control::post_pause(&addr, config.control.token.as_ref()).await?;
        println!("applier paused; lag will grow until `ferry resume`");
    } else {
        control::post_resume(&addr, config.control.token.as_ref()).await?;
        println!("applier resumed");
    }
    Ok(Outcome::Ok)
}

/// `ferry proxy mode`: change the running proxy's mode, recorded with who.
#[allow(clippy::print_stdout)]
pub async fn proxy_mode(
    config: &Config,
    mode: String,
    by: Option<String>,
) -> anyhow::Result<Outcome> {
    let addr = control_address(config).await?;
    let by = by.unwrap_or_else(|| {
        format!(
            "cli ({})",
            std::env::var("USER").unwrap_or_else(|_| "unknown user".into())
        )
    });
    let req = control::ProxyModeRequest { mode, by: Some(by) };
    let change = control::post_proxy_mode(&addr, config.control.token.as_ref(), &req).await?;
    println!(
        "proxy mode is now {} (by {}, at {})",
        change.mode,
        change.by,
        ferry_monitor::timestamp::format(change.at)
    );
    Ok(Outcome::Ok)
}

/// The pause switch of a `ferry run` reached through its control API.
struct ControlPause {
    addr: String,
    token: Option<ferry_core::Secret>,
}

impl crate::validate::PauseSwitch for ControlPause {
    fn pause(&self) -> ferry_core::source::BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async move {
            let s = control::get_status(&self.addr, self.token.as_ref()).await?;
            if s.paused {
                return Ok(false);
            }
            control::post_pause(&self.addr, self.token.as_ref()).await?;
            Ok(true)
        })
    }

    fn resume(&self) -> ferry_core::source::BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            control::post_resume(&self.addr, self.token.as_ref()).await?;
            Ok(())
        })
    }
}

/// `ferry validate`: validate in this process (the running `ferry run`,
/// if any, is paused through its control API while a repair writes);
/// exit 2 when a table is not clean.
#[allow(clippy::print_stdout)]
pub async fn validate(
    config: &Config,
    req: &crate::validate::ValidateRequest,
    continuous: bool,
    json: bool,
) -> anyhow::Result<Outcome> {
    let running = match control_address(config).await {
        Ok(addr) => match control::get_status(&addr, config.control.token.as_ref()).await {
            Ok(_) => Some(addr),
            Err(ControlClientError::NotRunning { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        Err(_) => None,
    };
    if running.is_none() {
        tracing::warn!(
            "no ferry run answers on its control API: ranges that differ can only be confirmed once the stream applies past the position they were read at; start `ferry run`, or expect them as unsettled or a wait error"
        );
    }
    let every = Duration::from_secs(match config.validate.every_seconds {
        0 => 3600,
        s => s.max(60),
    });
    loop {
        let results = match &running {
            Some(addr) => {
                let pause = ControlPause {
                    addr: addr.clone(),
                    token: config.control.token.clone(),
                };
                crate::validate::run(config, req, &pause, None).await?
            }
            None => crate::validate::run(config, req, &crate::validate::NoApplier, None).await?,
        };
        let clean = results.iter().all(|v| v.clean);
        if json {
            println!("{}", serde_json::to_string_pretty(&results)?);
        } else {
            for v in &results {
                println!("{}", crate::validate::render(v));
            }
            println!("validation: {}", if clean { "clean" } else { "NOT CLEAN" });
        }
        std::io::stdout().flush().ok();
        if !continuous {
            return Ok(if clean { Outcome::Ok } else { Outcome::Refused });
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Ok),
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[allow(clippy::print_stdout)]
pub async fn report(config: &Config, output: &std::path::Path) -> anyhow::Result<Outcome> {
    let mut status = current_status(config).await?;
    if status.proxy.is_none() {
        // Not running: the shadow-read totals as stored in the target.
        status.proxy = crate::pipeline::proxy::stored(config).await;
    }
    let samples = lag_history(config, Duration::from_secs(90 * 86_400)).await?;
    // After a cutover with fallback: the reverse stream's lag, recorded in
    // the old source's state schema (best effort: it may be unreachable).
    let reverse = match reverse_config(config, false).await {
        Some(r) => lag_history(&r, Duration::from_secs(90 * 86_400))
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let validations = {
        let target = ferry_postgres::connect::connect(&config.target, "target").await?;
        let state = StateStore::new(config.state.schema.clone());
        crate::validate::store::history(&target, &state, 10_000)
            .await
            .unwrap_or_default()
    };
    let html = crate::report::render_report(&status, &samples, &reverse, &validations);
    std::fs::write(output, html).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "report written to {} ({} lag samples, {} of the reverse stream)",
        output.display(),
        samples.len(),
        reverse.len()
    );
    Ok(Outcome::Ok)
}

/// `ferry cleanup`: remove what ferry created on the source (PostgreSQL:
/// replication slot and publication, never a slot or publication created
/// beforehand; SQLite: the change-capture triggers and tables in the file;
/// MySQL/MariaDB: nothing) and, with `state`, its state schema in the
/// target, so the next `ferry run` starts a new migration. Never touches
/// table data.
#[allow(clippy::print_stdout)]
pub async fn cleanup(config: &Config, state: bool) -> anyhow::Result<Outcome> {
    if let Ok(addr) = control_address(config).await
        && control::get_status(&addr, config.control.token.as_ref())
            .await
            .is_ok()
    {
        println!("cleanup: a ferry run is still running on {addr}; stop it first (SIGTERM)");
        return Ok(Outcome::Refused);
    }
    match config.source.kind().map_err(anyhow::Error::msg)? {
        ferry_core::config::EndpointKind::Sqlite(_) => println!(
            "source: {}",
            ferry_sqlite::source::remove_capture(config).await?
        ),
        // MySQL/MariaDB: ferry creates nothing on the source (no slot).
        ferry_core::config::EndpointKind::MySql => {
            println!("source: nothing to drop (ferry created nothing there)");
        }
        ferry_core::config::EndpointKind::Postgres => {
            cleanup_postgres_source(config).await?;
            cleanup_reverse(config).await?;
        }
    }
    cleanup_state(config, state).await
}

/// The PostgreSQL source's part of `ferry cleanup`: ferry's slot,
/// publication and DDL capture (event triggers).
#[allow(clippy::print_stdout)]
async fn cleanup_postgres_source(config: &Config) -> anyhow::Result<()> {
    let source = ferry_postgres::connect::connect(&config.source, "source").await?;
    let slot = &config.postgres.slot;
    let slot_said = if config.postgres.existing_slot {
        ferry_postgres::slot::existing_slot_kept(slot)
    } else if ferry_postgres::slot::drop_slot(&source, slot).await? {
        format!("replication slot '{slot}' dropped")
    } else {
        format!("replication slot '{slot}' did not exist")
    };
    ferry_postgres::slot::drop_publication(&source, &config.postgres.publication).await?;
    if ferry_postgres::ddl_capture::remove(&source, config).await? {
        println!(
            "source: DDL capture removed (event triggers ferry_ddl_before, ferry_ddl_end, ferry_ddl_drop and their functions)"
        );
    }
    println!(
        "source: {slot_said}; publication '{}' dropped if ferry created it",
        config.postgres.publication
    );
    Ok(())
}

/// A way back left open (`cutover --with-fallback` never rolled back or
/// finished, or interrupted): its slot and publication on the target.
#[allow(clippy::print_stdout)]
async fn cleanup_reverse(config: &Config) -> anyhow::Result<()> {
    let target = ferry_postgres::connect::connect(&config.target, "target").await?;
    let slot = ferry_postgres::fallback::reverse_slot(&config.postgres.slot);
    let publication = ferry_postgres::fallback::reverse_publication(&config.postgres.publication);
    if ferry_postgres::fallback::drop_reverse_capture(&target, &slot, &publication).await? {
        println!("target: reverse replication slot '{slot}' dropped (the way back is gone)");
    }
    Ok(())
}

/// With `state`, drop the state schema in the target (`ferry cleanup`).
#[allow(clippy::print_stdout)]
async fn cleanup_state(config: &Config, state: bool) -> anyhow::Result<Outcome> {
    if state {
        let target = ferry_postgres::connect::connect(&config.target, "target").await?;
        target
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                ferry_core::schema::quote_ident(&config.state.schema)
            ))
            .await
            .context("dropping the state schema on the target")?;
        println!(
            "target: state schema '{}' dropped; empty or drop the migrated tables before a new `ferry run`",
            config.state.schema
        );
    }
    Ok(Outcome::Ok)
}
