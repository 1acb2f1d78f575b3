//! The applier's side of the event channel: the bounded channel plus events
//! received ahead while the target executes a batch ([`Intake::overlap`]),
//! so the source reader, decoder and walsender keep working instead of
//! stalling on a full channel during every target round trip.
//!
//! While a batch commits, events that need nothing of the target are
//! handled as they arrive (folded into the next batch: see `ahead`) until
//! the first one that does; it and every later event wait in the queue.
//! At most `cap` events and `cap_bytes` bytes of row data are received
//! ahead this way, handled or queued (one more event may pass the byte
//! cap), so memory stays bounded; queued events are handled in order
//! before the channel is read again. Nothing is received ahead while the
//! pause switch is on (the switch lives here, next to the channel it
//! stops).
//!
//! The cap counts events, not row changes, on purpose: a cap of a whole
//! batch of row changes let the applier fold all of the next batch while
//! the target committed, but on a 2-core machine with source and target
//! beside ferry the source server then spent about 8% more CPU per change
//! and ferry about 17% more (medians), for no faster drain (pgbench
//! tpcb-like backlog, three paired runs, 2026-12-07; see the README).

use std::collections::VecDeque;
use std::future::Future;

use ferry_core::Event;
use ferry_core::size::ApproxBytes;
use tokio::sync::mpsc::Receiver;
use tokio::sync::watch;

/// The event channel and the queue of events received ahead.
pub(super) struct Intake<'a, P> {
    pub(super) rx: &'a mut Receiver<Event<P>>,
    queue: VecDeque<(Event<P>, usize)>,
    queued_bytes: usize,
    /// Events, and their bytes, that the current [`Intake::overlap`]
    /// handed to its `take`: they count against the caps like queued ones.
    taken: usize,
    taken_bytes: usize,
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
            taken: 0,
            taken_bytes: 0,
            closed: false,
            pause,
            cap: cap.max(1),
            cap_bytes: cap_bytes.max(1),
        }
    }

    /// The oldest event received ahead.
    pub(super) fn pop(&mut self) -> Option<Event<P>> {
        let (ev, bytes) = self.queue.pop_front()?;
        self.queued_bytes -= bytes;
        Some(ev)
    }

    fn has_room(&self) -> bool {
        !self.closed
            && self.queue.len() + self.taken < self.cap
            && self.queued_bytes + self.taken_bytes < self.cap_bytes
            && !self.paused()
    }

    /// The pause switch reads `true`.
    pub(super) fn paused(&self) -> bool {
        self.pause.as_ref().is_some_and(|p| *p.borrow())
    }

    /// Run `work` (target statements) to completion while receiving events:
    /// each goes to `take` with its bytes while the queue is empty (it
    /// handles the event, or gives it back), else, and when given back,
    /// into the queue, so the events are handled in order.
    pub(super) async fn overlap<T>(
        &mut self,
        work: impl Future<Output = T>,
        mut take: impl FnMut(Event<P>, usize) -> Option<Event<P>>,
    ) -> T {
        tokio::pin!(work);
        let out = loop {
            let room = self.has_room();
            tokio::select! {
                biased;
                out = &mut work => break out,
                ev = self.rx.recv(), if room => match ev {
                    Some(ev) => {
                        let bytes = ev.approx_bytes();
                        let ev = match self.queue.is_empty() {
                            true => take(ev, bytes),
                            false => Some(ev),
                        };
                        match ev {
                            None => {
                                self.taken += 1;
                                self.taken_bytes += bytes;
                            }
                            Some(ev) => {
                                self.queued_bytes += bytes;
                                self.queue.push_back((ev, bytes));
                            }
                        }
                    }
                    None => self.closed = true,
                },
            }
        };
        self.taken = 0;
        self.taken_bytes = 0;
        out
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
