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
//! applied the change the source already showed. Re-checks run rounds like
//! validation's (`ferry::validate::settle`): read the source, read its WAL
//! position, wait until the pipeline applied past it, read the target, read
//! the source again ([`look`]). Equal to either source read: it was lag. A
//! difference while both source reads agree counts once seen in two rounds
//! in a row; anything else after [`ROUNDS`] rounds is `Unsettled`, neither
//! equal nor a mismatch ([`settle`]). Without a running pipeline (no
//! applied position), or when a side fails during a re-check, the first
//! difference counts.
//!
//! Under a steady write load many mirrored reads of hot rows differ at
//! first, and the wait for the applier (its batching delay plus the lag,
//! tens to hundreds of milliseconds) costs far more than the reads. So the
//! re-checks of a worker share it: a difference goes to the worker's
//! pending list and the worker takes the next job; when the queue has
//! nothing ready, or the list holds [`PENDING_JOBS`] jobs or
//! [`PENDING_BYTES`] of statements and answers, one round runs for the
//! pending jobs of one session state (the oldest job's; the others wait for
//! a round of their own, so sessions are not reopened per job): every
//! source read before, one WAL position, one wait, then every target read
//! and source read after. Jobs that settled are counted, the others stay
//! for the next round together with the differences found meanwhile. A
//! mode change away from `source` drops the pending list uncounted, like
//! the jobs still queued; when the queue closes, a worker finishes its
//! pending list and exits.

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
/// Differences a worker holds for re-checking before it stops taking jobs.
const PENDING_JOBS: usize = 64;
/// Bytes of statements and expected answers a worker holds for
/// re-checking, and of source answers a round holds across its wait.
const PENDING_BYTES: usize = 16 << 20;

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

/// Parse `X/Y` as a 64-bit LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// What one re-check round saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The target equals one of the source's reads.
    Equal,
    /// The target differs while both source reads agree; what differed
    /// (none when the answers were not comparable).
    Differs(Option<String>),
    /// The source changed between its reads, or the applier did not pass
    /// its position in time.
    Moved,
}

/// One round's reading: the source's answer before the wait, the
/// target's and the source's after it.
fn look(ordered: bool, before: &Answer, on_target: &Answer, after: &Answer) -> Seen {
    let vs_before = compare::compare(ordered, before, on_target);
    if vs_before == Diff::Equal || compare::compare(ordered, after, on_target) == Diff::Equal {
        Seen::Equal
    } else if compare::compare(ordered, before, after) == Diff::Equal {
        Seen::Differs(match vs_before {
            Diff::Differs(why) | Diff::TargetError(why) => Some(why),
            Diff::Equal | Diff::Skip => None,
        })
    } else {
        Seen::Moved
    }
}

/// The verdict on a difference after the rounds `seen` so far; `None`
/// while another round is due.
fn settle(seen: &[Seen]) -> Option<Outcome> {
    match seen {
        [.., Seen::Equal] => Some(Outcome::Lag),
        [.., Seen::Differs(_), Seen::Differs(_)] => {
            let why = seen.iter().rev().find_map(|s| match s {
                Seen::Differs(Some(why)) => Some(why.clone()),
                _ => None,
            });
            Some(Outcome::Mismatch(why.unwrap_or_default()))
        }
        _ if seen.len() >= ROUNDS => Some(Outcome::Unsettled),
        _ => None,
    }
}

/// Count a mirrored statement's outcome; a mismatch is also logged.
fn record(proxy: &Proxy, job: &Job, outcome: Outcome, took: Duration) {
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

/// A difference waiting for re-check rounds.
struct Recheck {
    /// The job, without its source answer: rounds read the source afresh.
    job: Job,
    /// The target's time on the first run.
    took: Duration,
    /// The first difference: it stands when a re-check is not possible.
    first: String,
    seen: Vec<Seen>,
    /// The statement's bytes and its source answer's.
    weight: usize,
}

/// Take jobs until the queue closes.
pub async fn worker(proxy: Arc<Proxy>, jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut w = Worker {
        proxy,
        target: None,
        source: None,
        pending: Vec::new(),
    };
    loop {
        let job = if w.pending.is_empty() {
            let mut rx = jobs.lock().await;
            match rx.recv().await {
                Some(job) => Some(job),
                None => return,
            }
        } else if w.full() {
            None
        } else {
            // A queue locked by another worker is one waiting for a job:
            // nothing is ready.
            jobs.try_lock().ok().and_then(|mut rx| rx.try_recv().ok())
        };
        if w.proxy.mode() != Mode::Source {
            w.pending.clear();
            continue;
        }
        match job {
            Some(job) => w.first_look(job).await,
            None => w.round().await,
        }
    }
}

struct Worker {
    proxy: Arc<Proxy>,
    target: Option<Mirror>,
    source: Option<Mirror>,
    pending: Vec<Recheck>,
}

impl Worker {
    fn full(&self) -> bool {
        self.pending.len() >= PENDING_JOBS
            || self.pending.iter().map(|r| r.weight).sum::<usize>() >= PENDING_BYTES
    }

    /// Run a job on the target and compare: counted at once unless it
    /// differs and can be re-checked, then pending.
    async fn first_look(&mut self, mut job: Job) {
        let proxy = self.proxy.clone();
        let (answer, took) = match run(&mut self.target, &proxy.settings.target, &job).await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "mirrored statement not run on the target");
                let why = format!("the target did not answer: {e}");
                proxy
                    .stats
                    .mirrored(&job.fingerprint, &Outcome::TargetError(why), Duration::ZERO);
                return;
            }
        };
        let outcome = match compare::compare(job.ordered, &job.source, &answer) {
            Diff::Equal => Outcome::Equal,
            Diff::Skip => return,
            Diff::TargetError(why) => Outcome::TargetError(why),
            Diff::Differs(why) if proxy.replication.applied_lsn().is_none() => {
                Outcome::Mismatch(why)
            }
            Diff::Differs(first) => {
                let source = std::mem::take(&mut job.source);
                self.pending.push(Recheck {
                    weight: job.frames.len() + source.bytes,
                    job,
                    took,
                    first,
                    seen: Vec::new(),
                });
                return;
            }
        };
        record(&proxy, &job, outcome, took);
    }

    /// One re-check round for the pending jobs in the oldest one's session
    /// state (as many as [`PENDING_BYTES`] of source answers hold), then
    /// count those that settled.
    async fn round(&mut self) {
        let Some(state) = self.pending.first().map(|r| r.job.state.clone()) else {
            return;
        };
        let proxy = self.proxy.clone();
        // A side that fails leaves the job's first difference standing.
        let mut failed = vec![false; self.pending.len()];
        let mut before = Vec::new();
        let mut held = 0;
        for (i, r) in self.pending.iter().enumerate() {
            if r.job.state != state {
                continue;
            }
            if held >= PENDING_BYTES {
                break;
            }
            match run(&mut self.source, &proxy.settings.source, &r.job).await {
                Ok((answer, _)) => {
                    held += answer.bytes;
                    before.push((i, answer));
                }
                Err(e) => {
                    debug!(error = %e, "mirrored statement not re-read on the source");
                    failed[i] = true;
                }
            }
        }
        if !before.is_empty() {
            match self.wait_for_applier(&state).await {
                None => before.drain(..).for_each(|(i, _)| failed[i] = true),
                Some(false) => {
                    for (i, _) in before.drain(..) {
                        self.pending[i].seen.push(Seen::Moved);
                    }
                }
                Some(true) => {}
            }
        }
        for (i, before) in before {
            match self.read_after(i, &before).await {
                Ok(seen) => self.pending[i].seen.push(seen),
                Err(e) => {
                    debug!(error = %e, "mirrored statement not re-checked");
                    failed[i] = true;
                }
            }
        }
        for (r, failed) in std::mem::take(&mut self.pending).into_iter().zip(failed) {
            let verdict = if failed {
                Some(Outcome::Mismatch(r.first.clone()))
            } else {
                settle(&r.seen)
            };
            match verdict {
                Some(outcome) => record(&proxy, &r.job, outcome, r.took),
                None => self.pending.push(r),
            }
        }
    }

    /// The rest of a round for pending job `i`, once the applier passed
    /// the position read after `before`: read the target, then the source.
    async fn read_after(&mut self, i: usize, before: &Answer) -> Result<Seen, BackendError> {
        let settings = &self.proxy.settings;
        let job = &self.pending[i].job;
        let (on_target, _) = run(&mut self.target, &settings.target, job).await?;
        let (after, _) = run(&mut self.source, &settings.source, job).await?;
        Ok(look(job.ordered, before, &on_target, &after))
    }

    /// Read the source's WAL position and wait until the pipeline applied
    /// past it: `Some(false)` when it did not within [`APPLY_WAIT`], `None`
    /// when the position could not be read.
    async fn wait_for_applier(&mut self, state: &Arc<SessionState>) -> Option<bool> {
        session(&mut self.source, &self.proxy.settings.source, state)
            .await
            .ok()?;
        let m = self.source.as_mut()?;
        let frames = match m.backend.simple("SELECT pg_current_wal_lsn()::text").await {
            Ok(frames) => frames,
            Err(e) => {
                debug!(error = %e, "source position not read");
                self.source = None;
                return None;
            }
        };
        let answer = Answer::from_frames(&frames);
        let row = answer.rows.first()?;
        // DataRow: i16 count, i32 length, text.
        let position = parse_lsn(std::str::from_utf8(row.get(6..)?).ok()?)?;
        let deadline = Instant::now() + APPLY_WAIT;
        while Instant::now() < deadline {
            if self
                .proxy
                .replication
                .applied_lsn()
                .is_some_and(|a| a >= position)
            {
                return Some(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(false)
    }
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

    fn rows(values: &[&'static str]) -> Answer {
        Answer {
            rows: values
                .iter()
                .map(|v| Bytes::from_static(v.as_bytes()))
                .collect(),
            ..Answer::default()
        }
    }

    fn too_big() -> Answer {
        Answer {
            too_big: true,
            ..Answer::default()
        }
    }

    #[test]
    fn a_round_reads_lag_a_difference_or_a_moving_source() {
        let differs = |why: &str| Seen::Differs(Some(why.to_owned()));
        let rows_differ = differs("rows differ: 1 only on the source, 1 only on the target");
        let cases = [
            // (before, target, after, seen)
            (rows(&["a"]), rows(&["a"]), rows(&["a"]), Seen::Equal),
            (rows(&["a"]), rows(&["a"]), rows(&["b"]), Seen::Equal),
            (rows(&["a"]), rows(&["b"]), rows(&["b"]), Seen::Equal),
            (rows(&["a"]), rows(&["x"]), rows(&["a"]), rows_differ),
            (rows(&["a"]), rows(&["x"]), rows(&["b"]), Seen::Moved),
            (rows(&["a"]), too_big(), rows(&["a"]), Seen::Differs(None)),
            (too_big(), rows(&["a"]), too_big(), Seen::Moved),
        ];
        for (before, on_target, after, seen) in cases {
            assert_eq!(
                look(false, &before, &on_target, &after),
                seen,
                "{before:?} {on_target:?} {after:?}"
            );
        }
        let errs = Answer {
            error: Some(("42P01".into(), "gone".into())),
            ..Answer::default()
        };
        assert_eq!(
            look(false, &rows(&["a"]), &errs, &rows(&["a"])),
            differs("42P01: gone")
        );
        assert_eq!(
            look(
                true,
                &rows(&["a", "b"]),
                &rows(&["b", "a"]),
                &rows(&["a", "b"])
            ),
            differs("order differ from row 1")
        );
        assert_eq!(
            look(
                false,
                &rows(&["a", "b"]),
                &rows(&["b", "a"]),
                &rows(&["a", "b"])
            ),
            Seen::Equal
        );
    }

    #[test]
    fn rounds_settle_as_lag_mismatch_or_unsettled() {
        use Seen::{Differs, Equal, Moved};
        let d = |why: &str| Differs(Some(why.to_owned()));
        let mismatch = |why: &str| Some(Outcome::Mismatch(why.to_owned()));
        let cases: Vec<(Vec<Seen>, Option<Outcome>)> = vec![
            (vec![], None),
            (vec![Equal], Some(Outcome::Lag)),
            (vec![d("x")], None),
            (vec![Moved], None),
            (vec![d("x"), Equal], Some(Outcome::Lag)),
            (vec![d("x"), d("y")], mismatch("y")),
            (vec![Moved, d("x"), d("y")], mismatch("y")),
            (vec![d("x"), Moved, d("y")], None),
            (vec![d("x"), Moved, d("y"), Moved], Some(Outcome::Unsettled)),
            (vec![Moved, Moved, Moved, Moved], Some(Outcome::Unsettled)),
            (vec![Moved, Moved, Moved, Equal], Some(Outcome::Lag)),
            (vec![Moved, Moved, d("x"), d("y")], mismatch("y")),
            // Answers not comparable in the last round: the latest reason.
            (vec![d("x"), Differs(None)], mismatch("x")),
            (vec![Differs(None), Differs(None)], mismatch("")),
            (
                vec![d("x"), Moved, Differs(None), Differs(None)],
                mismatch("x"),
            ),
        ];
        for (seen, verdict) in cases {
            assert_eq!(settle(&seen), verdict, "{seen:?}");
        }
    }
}
