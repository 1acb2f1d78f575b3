//! Mirror workers: run sampled read-only batches on the target and compare
//! the answers with the source's.
//!
//! Sessions hand over a [`Job`] with `try_send` on a bounded queue (a full
//! queue drops the job and counts it: the client never waits for the
//! target). Each worker keeps one target session (and, for re-checks, one
//! source session) opened with the client's startup parameters and `SET`s,
//! so values are formatted alike on both sides.
//!
//! A first difference is not yet a mismatch: the target may simply not have
//! applied the change the source already showed. [`recheck`] runs rounds
//! like validation's (`ferry::validate::settle`): read the source, read its
//! WAL position, wait until the pipeline applied past it, read the target,
//! read the source again. Equal to either source read: it was lag. A
//! difference while both source reads agree counts once seen in two rounds
//! in a row; anything else after [`ROUNDS`] rounds is `Unsettled` (neither
//! equal nor a mismatch). Without a running pipeline (no applied position)
//! the first difference counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use tracing::debug;

use crate::backend::{Backend, BackendConfig, BackendError};
use crate::compare::{self, Answer, Diff, Outcome};
use crate::{Mode, Proxy};

/// Re-check rounds before a difference is called unsettled.
const ROUNDS: usize = 4;
/// How long a round waits for the applier.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// What a session's mirrored statement needs to run elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionState {
    pub params: Vec<(String, String)>,
    pub sets: Vec<String>,
}

/// One mirrored batch.
#[derive(Debug)]
pub struct Job {
    pub fingerprint: String,
    pub normalized: String,
    pub ordered: bool,
    /// Self-contained frames ending in Sync or a Query.
    pub frames: Bytes,
    pub source: Answer,
    pub state: Arc<SessionState>,
}

/// A worker's session to one side, for one session state.
struct Mirror {
    state: Arc<SessionState>,
    backend: Backend,
}

async fn session(
    slot: &mut Option<Mirror>,
    cfg: &BackendConfig,
    state: &Arc<SessionState>,
) -> Result<(), BackendError> {
    if slot.as_ref().is_some_and(|m| m.state == *state) {
        return Ok(());
    }
    *slot = None;
    let mut backend = Backend::connect(cfg, &state.params).await?;
    for set in &state.sets {
        backend.simple(set).await?;
    }
    *slot = Some(Mirror {
        state: state.clone(),
        backend,
    });
    Ok(())
}

async fn run(
    slot: &mut Option<Mirror>,
    cfg: &BackendConfig,
    job: &Job,
) -> Result<(Answer, Duration), BackendError> {
    session(slot, cfg, &job.state).await?;
    let Some(m) = slot.as_mut() else {
        return Err(BackendError::Closed {
            side: cfg.side.as_str(),
        });
    };
    let started = Instant::now();
    match m.backend.round_trip(&job.frames).await {
        Ok(frames) => Ok((Answer::from_frames(&frames), started.elapsed())),
        Err(e) => {
            *slot = None;
            Err(e)
        }
    }
}

/// Take jobs until the queue closes.
pub async fn worker(proxy: Arc<Proxy>, jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let (mut target, mut source) = (None, None);
    loop {
        let job = {
            let mut rx = jobs.lock().await;
            rx.recv().await
        };
        let Some(job) = job else { return };
        if proxy.mode() != Mode::Source {
            continue;
        }
        let (answer, took) = match run(&mut target, &proxy.settings.target, &job).await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "mirrored statement not run on the target");
                let why = format!("the target did not answer: {e}");
                proxy
                    .stats
                    .mirrored(&job.fingerprint, &Outcome::TargetError(why), Duration::ZERO);
                continue;
            }
        };
        let outcome = match compare::compare(job.ordered, &job.source, &answer) {
            Diff::Equal => Outcome::Equal,
            Diff::Skip => continue,
            Diff::TargetError(why) => Outcome::TargetError(why),
            Diff::Differs(why) => recheck(&proxy, &job, &mut source, &mut target)
                .await
                .unwrap_or(Outcome::Mismatch(why)),
        };
        let outcome = match outcome {
            Outcome::Mismatch(why) => {
                Outcome::Mismatch(format!("{why}; statement: {}", job.normalized))
            }
            Outcome::TargetError(why) => {
                Outcome::TargetError(format!("{why}; statement: {}", job.normalized))
            }
            o => o,
        };
        if let Outcome::Mismatch(why) = &outcome {
            tracing::warn!(fingerprint = %job.fingerprint, difference = %why, "shadow read mismatch");
        }
        proxy.stats.mirrored(&job.fingerprint, &outcome, took);
    }
}

/// Parse `X/Y` as a 64-bit LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// One confirmation round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Equal,
    Differs,
    Moved,
}

/// Re-check a difference; `None` when no re-check is possible (no
/// pipeline, or a side failed), and the first difference stands.
async fn recheck(
    proxy: &Proxy,
    job: &Job,
    source: &mut Option<Mirror>,
    target: &mut Option<Mirror>,
) -> Option<Outcome> {
    proxy.replication.applied_lsn()?;
    let mut seen = Vec::new();
    let mut last_why = String::new();
    for _ in 0..ROUNDS {
        let (before, _) = run(source, &proxy.settings.source, job).await.ok()?;
        let position = {
            let m = source.as_mut()?;
            let frames = m
                .backend
                .simple("SELECT pg_current_wal_lsn()::text")
                .await
                .ok()?;
            let answer = Answer::from_frames(&frames);
            let row = answer.rows.first()?;
            // DataRow: i16 count, i32 length, text.
            let text = std::str::from_utf8(row.get(6..)?).ok()?;
            parse_lsn(text)?
        };
        let deadline = Instant::now() + APPLY_WAIT;
        let mut applied = false;
        while Instant::now() < deadline {
            if proxy
                .replication
                .applied_lsn()
                .is_some_and(|a| a >= position)
            {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !applied {
            seen.push(Seen::Moved);
            continue;
        }
        let (on_target, _) = run(target, &proxy.settings.target, job).await.ok()?;
        let (after, _) = run(source, &proxy.settings.source, job).await.ok()?;
        let vs_before = compare::compare(job.ordered, &before, &on_target);
        if vs_before == Diff::Equal
            || compare::compare(job.ordered, &after, &on_target) == Diff::Equal
        {
            seen.push(Seen::Equal);
        } else if compare::compare(job.ordered, &before, &after) == Diff::Equal {
            if let Diff::Differs(w) | Diff::TargetError(w) = vs_before {
                last_why = w;
            }
            seen.push(Seen::Differs);
        } else {
            seen.push(Seen::Moved);
        }
        match seen.as_slice() {
            [.., Seen::Equal] => return Some(Outcome::Lag),
            [.., Seen::Differs, Seen::Differs] => return Some(Outcome::Mismatch(last_why)),
            _ => {}
        }
    }
    Some(Outcome::Unsettled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("1/zz"), None);
    }
}
