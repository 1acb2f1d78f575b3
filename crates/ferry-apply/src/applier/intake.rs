//! The applier's side of the event channel: the bounded channel plus events
//! received ahead while the target executes a batch ([`Intake::overlap`]),
//! so the source reader, decoder and walsender keep working instead of
//! stalling on a full channel during every target round trip.
//!
//! At most `cap` events and `cap_bytes` bytes of row data wait in the queue
//! (one more event may pass the byte cap), so memory stays bounded; they
//! are handled in order before the channel is read again. Nothing is
//! received ahead while the pause switch is on (the switch lives here, next
//! to the channel it stops).

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
        let (ev, bytes) = self.queue.pop_front()?;
        self.queued_bytes -= bytes;
        Some(ev)
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
    /// into the queue.
    pub(super) async fn overlap<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            let room = self.has_room();
            tokio::select! {
                biased;
                out = &mut work => return out,
                ev = self.rx.recv(), if room => match ev {
                    Some(ev) => {
                        let bytes = ev.approx_bytes();
                        self.queued_bytes += bytes;
                        self.queue.push_back((ev, bytes));
                    }
                    None => self.closed = true,
                },
            }
        }
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
