//! The applier's side of the event channel: the bounded channel plus events
//! received ahead while the target executes a batch ([`Intake::overlap`]),
//! so the source reader, decoder and walsender keep working instead of
//! stalling on a full channel during every target round trip.
//!
//! At most `cap` events and `cap_bytes` bytes of row data wait in the queue
//! (one more event may pass the byte cap), so memory stays bounded; they
//! are handled in order before the channel is read again, the first of
//! them during the flush itself when the applier folds ahead
//! ([`super::ahead`]): those count against the byte cap until the flush
//! is done. Nothing is
//! received ahead while the pause switch is on (the switch lives here, next
//! to the channel it stops).

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use ferry_core::Event;
use ferry_core::size::ApproxBytes;
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::watch;
use tokio::time::Instant as TokioInstant;

use super::ahead::Ahead;

/// Events taken from the channel, and handed to [`Ahead`], between two
/// polls of the target work.
const AHEAD_STEP: usize = 64;

/// How long folding ahead waits for more events once the channel and the
/// queue are empty (the timer's resolution).
const AHEAD_NAP: Duration = Duration::from_millis(1);

/// The event channel and the queue of events received ahead.
pub(super) struct Intake<'a, P> {
    pub(super) rx: &'a mut Receiver<Event<P>>,
    queue: VecDeque<(Event<P>, usize)>,
    queued_bytes: usize,
    /// The channel closed (the source side is gone).
    pub(super) closed: bool,
    /// The operator's pause switch (see [`super::ApplierConfig::pause`]).
    pub(super) pause: Option<watch::Receiver<bool>>,
    cap: usize,
    cap_bytes: usize,
}

impl<'a, P> Intake<'a, P> {
    pub(super) fn new(
        rx: &'a mut Receiver<Event<P>>,
        cap: usize,
        cap_bytes: usize,
        pause: Option<watch::Receiver<bool>>,
    ) -> Self {
        Intake {
            rx,
            queue: VecDeque::new(),
            queued_bytes: 0,
            closed: false,
            pause,
            cap: cap.max(1),
            cap_bytes: cap_bytes.max(1),
        }
    }

    /// The oldest event received ahead.
    pub(super) fn pop(&mut self) -> Option<Event<P>> {
        self.pop_with_bytes().map(|(ev, _)| ev)
    }

    fn has_room(&self) -> bool {
        !self.closed
            && self.queue.len() < self.cap
            && self.queued_bytes < self.cap_bytes
            && !self.paused()
    }

    /// The pause switch reads `true`.
    pub(super) fn paused(&self) -> bool {
        self.pause.as_ref().is_some_and(|p| *p.borrow())
    }

    /// Run `work` (target statements) to completion while receiving events
    /// into the queue and, with `ahead`, handing the queue's events to it
    /// in order for as long as it accepts them. The events it took count
    /// against the byte cap until `work` is done, so the queue and what
    /// was folded ahead together stay within `cap_bytes`.
    ///
    /// While folding ahead the channel is read without waiting (what it
    /// holds, then a nap of [`AHEAD_NAP`] unless `work` finishes first):
    /// woken for each event, the applier would cost the decoder a wake-up
    /// per event for the whole flush.
    pub(super) async fn overlap<T>(
        &mut self,
        work: impl Future<Output = T>,
        mut ahead: Option<&mut (dyn Ahead<P> + Send)>,
    ) -> T {
        tokio::pin!(work);
        let mut ahead_bytes = 0;
        let nap = tokio::time::sleep(AHEAD_NAP);
        tokio::pin!(nap);
        loop {
            let room = self.has_room() && self.queued_bytes + ahead_bytes < self.cap_bytes;
            if self.paused() {
                ahead = None;
            }
            let Some(a) = ahead.as_deref_mut() else {
                tokio::select! {
                    biased;
                    out = &mut work => return out,
                    ev = self.rx.recv(), if room => match ev {
                        Some(ev) => self.push(ev),
                        None => self.closed = true,
                    },
                }
                continue;
            };
            let mut moved = false;
            if room {
                for _ in 0..AHEAD_STEP {
                    if self.queue.len() >= self.cap
                        || self.queued_bytes + ahead_bytes >= self.cap_bytes
                    {
                        break;
                    }
                    match self.rx.try_recv() {
                        Ok(ev) => {
                            self.push(ev);
                            moved = true;
                        }
                        Err(TryRecvError::Disconnected) => {
                            self.closed = true;
                            break;
                        }
                        Err(TryRecvError::Empty) => break,
                    }
                }
            }
            for _ in 0..AHEAD_STEP {
                let Some((ev, bytes)) = self.queue.front() else {
                    break;
                };
                if !a.accepts(ev, *bytes) {
                    ahead = None;
                    break;
                }
                let Some((ev, bytes)) = self.pop_with_bytes() else {
                    break;
                };
                ahead_bytes += bytes;
                a.handle(ev, bytes);
                moved = true;
            }
            if moved {
                // Other tasks of this worker (the decoder, the target
                // connection) get their turn when the budget runs out.
                tokio::select! {
                    biased;
                    out = &mut work => return out,
                    () = tokio::task::consume_budget() => {}
                }
                continue;
            }
            if ahead.is_none() {
                continue;
            }
            if !room {
                // Full: nothing more to receive until the batch is done.
                return work.await;
            }
            nap.as_mut().reset(TokioInstant::now() + AHEAD_NAP);
            tokio::select! {
                biased;
                out = &mut work => return out,
                () = &mut nap => {}
            }
        }
    }

    fn push(&mut self, ev: Event<P>) {
        let bytes = ev.approx_bytes();
        self.queued_bytes += bytes;
        self.queue.push_back((ev, bytes));
    }

    fn pop_with_bytes(&mut self) -> Option<(Event<P>, usize)> {
        let (ev, bytes) = self.queue.pop_front()?;
        self.queued_bytes -= bytes;
        Some((ev, bytes))
    }
}

/// Resolves when the pause switch changes (never without one); a switch
/// whose sender is gone is dropped (not paused).
pub(super) async fn switched(pause: &mut Option<watch::Receiver<bool>>) {
    let gone = match pause {
        Some(p) => p.changed().await.is_err(),
        None => std::future::pending().await,
    };
    if gone {
        *pause = None;
    }
}
