//! The event loop of [`Applier`]: event handling, spilling of large
//! transactions, skipping on restart, shutdown, and the [`Intake`] that keeps
//! events flowing while the target works.

use std::collections::VecDeque;
use std::future::Future;

use futures_util::FutureExt;
use tokio::time::{Instant as TokioInstant, sleep_until};

use super::*;

/// The event channel plus events received ahead while the target executed a
/// batch ([`Intake::overlap`]). At most `cap` events wait here, so memory
/// stays bounded; they are handled in order before the channel is read again.
pub(super) struct Intake<'a, P> {
    rx: &'a mut Receiver<Event<P>>,
    queue: VecDeque<Event<P>>,
    closed: bool,
    cap: usize,
}

impl<'a, P> Intake<'a, P> {
    fn new(rx: &'a mut Receiver<Event<P>>, cap: usize) -> Self {
        Intake {
            rx,
            queue: VecDeque::new(),
            closed: false,
            cap: cap.max(1),
        }
    }

    /// Run `work` (target statements) to completion while receiving events
    /// into the queue, so the source reader and decoder keep going instead
    /// of stalling on a full channel during every target round trip.
    pub(super) async fn overlap<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            let room = !self.closed && self.queue.len() < self.cap;
            tokio::select! {
                biased;
                out = &mut work => return out,
                ev = self.rx.recv(), if room => match ev {
                    Some(ev) => self.queue.push_back(ev),
                    None => self.closed = true,
                },
            }
        }
    }
}

impl<P: Position> Applier<P> {
    /// Apply events until `shutdown` completes or the channel closes; see
    /// the module docs for the guarantees. `ack` receives each position
    /// after it is durable in the target. On error the open target
    /// transaction is rolled back; reconnect and build a new `Applier`.
    pub async fn run<A, S>(
        &mut self,
        rx: &mut Receiver<Event<P>>,
        mut ack: A,
        shutdown: S,
    ) -> Result<RunOutcome>
    where
        A: FnMut(&P),
        S: Future<Output = ()>,
    {
        let result = self.run_inner(rx, &mut ack, shutdown).await;
        if result.is_err() && self.batch.target_open {
            let _ = self.writer.rollback(&self.client).await;
        }
        if result.is_err() {
            self.batch = Batch::default();
        }
        result
    }

    async fn run_inner<A, S>(
        &mut self,
        rx: &mut Receiver<Event<P>>,
        ack: &mut A,
        shutdown: S,
    ) -> Result<RunOutcome>
    where
        A: FnMut(&P),
        S: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        let mut intake = Intake::new(rx, self.cfg.batch_rows);
        loop {
            if let Some(ev) = intake.queue.pop_front() {
                // Events received ahead: handle them first, in order, but
                // still notice a shutdown between two of them.
                if shutdown.as_mut().now_or_never().is_some() {
                    self.finish(ack).await?;
                    return Ok(RunOutcome::Shutdown);
                }
                self.handle(ev, ack, &mut intake).await?;
            } else if intake.closed {
                self.finish(ack).await?;
                return Ok(RunOutcome::SourceClosed);
            } else {
                let deadline = self
                    .batch
                    .started
                    .map(|s| TokioInstant::from_std(s + Duration::from_millis(self.cfg.batch_ms)));
                let timer_armed =
                    deadline.is_some() && !self.batch.in_txn && self.batch.commits > 0;
                let deadline = deadline.unwrap_or_else(TokioInstant::now);
                tokio::select! {
                    biased;
                    () = &mut shutdown => {
                        self.finish(ack).await?;
                        return Ok(RunOutcome::Shutdown);
                    }
                    ev = intake.rx.recv() => match ev {
                        None => intake.closed = true,
                        Some(ev) => self.handle(ev, ack, &mut intake).await?,
                    },
                    () = sleep_until(deadline), if timer_armed => {}
                }
            }
            if should_flush(&self.flush_input(false)) {
                self.flush(ack, Some(&mut intake)).await?;
            }
        }
    }

    /// Shutdown: drop an incomplete source transaction, commit the rest.
    async fn finish<A: FnMut(&P)>(&mut self, ack: &mut A) -> Result<()> {
        if self.batch.in_txn {
            if self.batch.spilled {
                self.rollback_savepoint().await?;
            }
            self.batch.in_txn = false;
            self.batch.spilled = false;
            self.batch.txn.clear();
        }
        if self.batch.end.is_some() {
            self.flush(ack, None).await?;
        } else if self.batch.target_open {
            self.writer.rollback(&self.client).await?;
            self.batch = Batch::default();
        }
        if let Some((p, t)) = self.pending_heartbeat.take() {
            self.heartbeat(p, t, ack, true).await?;
        }
        Ok(())
    }

    async fn handle<A: FnMut(&P)>(
        &mut self,
        ev: Event<P>,
        ack: &mut A,
        intake: &mut Intake<'_, P>,
    ) -> Result<()> {
        match ev {
            Event::Relation(schema) => {
                self.check_relation(&schema, ack).await?;
                if self.batch.in_txn {
                    self.batch.txn.push(TxnItem::Relation(schema));
                } else {
                    self.relation(schema).await?;
                }
            }
            Event::Begin { .. } => {
                if self.batch.in_txn {
                    return Err(protocol_error("Begin inside a transaction"));
                }
                self.batch.in_txn = true;
                self.batch.started.get_or_insert_with(Instant::now);
            }
            Event::Change(change) => {
                if !self.batch.in_txn {
                    return Err(protocol_error("change outside a transaction"));
                }
                self.batch.txn.push(TxnItem::Change(change));
                if self.batch.txn.len() >= self.cfg.batch_rows {
                    self.spill(intake).await?;
                }
            }
            Event::Commit {
                position,
                commit_time,
            } => {
                if !self.batch.in_txn {
                    return Err(protocol_error("Commit without Begin"));
                }
                self.commit_txn(position, commit_time, ack, intake).await?;
            }
            Event::Heartbeat { position, time } => {
                let idle =
                    !self.batch.in_txn && self.batch.end.is_none() && !self.batch.target_open;
                if idle {
                    self.heartbeat(position, time, ack, false).await?;
                } else if !self.batch.in_txn
                    && self.batch.end.as_ref().is_some_and(|(p, _)| *p < position)
                {
                    // Nothing between the last commit and here: the batch
                    // may end at the heartbeat.
                    self.batch.end = Some((position, time));
                }
            }
        }
        Ok(())
    }

    async fn commit_txn<A: FnMut(&P)>(
        &mut self,
        position: P,
        time: Timestamp,
        ack: &mut A,
        intake: &mut Intake<'_, P>,
    ) -> Result<()> {
        let items = std::mem::take(&mut self.batch.txn);
        let was_spilled = self.batch.spilled;
        self.batch.in_txn = false;
        self.batch.spilled = false;
        if should_skip(&position, self.checkpoint.as_ref())
            || self.batch.end.as_ref().is_some_and(|(p, _)| position <= *p)
        {
            if was_spilled {
                self.rollback_savepoint_in_txn().await?;
            }
            for item in items {
                if let TxnItem::Relation(s) = item {
                    self.schemas.insert(s.id.clone(), s);
                }
            }
            if self.batch.end.is_none() && !self.batch.target_open {
                self.batch.started = None;
            }
            self.stats
                .transactions_skipped
                .fetch_add(1, Ordering::Relaxed);
            debug!(lsn = %position, "skipping transaction already applied");
            return Ok(());
        }
        self.fold_in(items).await?;
        if was_spilled {
            self.client
                .batch_execute("RELEASE SAVEPOINT ferry_txn")
                .await
                .map_err(|e| pg_error("releasing savepoint", e))?;
        }
        self.batch.commits += 1;
        self.batch.end = Some((position, time));
        if was_spilled {
            // A transaction larger than a batch: commit it now.
            self.flush(ack, Some(intake)).await?;
        }
        Ok(())
    }

    /// Fold a transaction's items into the batch, applying barriers and
    /// schema changes in order.
    async fn fold_in(&mut self, items: Vec<TxnItem>) -> Result<()> {
        for item in items {
            match item {
                TxnItem::Relation(s) => self.relation(s).await?,
                TxnItem::Change(c) => {
                    self.batch.rows += 1;
                    let schema = c.table().and_then(|t| self.schemas.get(t)).cloned();
                    let in_order = match &schema {
                        Some(s) => self.writer.source_order(&self.client, s).await?,
                        None => false,
                    };
                    if let Some(barrier) =
                        self.batch.fold.push_with(c, schema.as_ref(), in_order)?
                    {
                        self.apply_pending(None).await?;
                        self.ensure_open().await?;
                        self.writer
                            .apply_barrier(&self.client, &barrier, &self.schemas)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn relation(&mut self, schema: Arc<TableSchema>) -> Result<()> {
        let old = self.schemas.get(&schema.id).cloned();
        if old.as_deref() == Some(&*schema) {
            return Ok(());
        }
        if old.is_some() || self.cfg.apply_ddl {
            self.apply_pending(None).await?;
            self.ensure_open().await?;
            self.writer
                .apply_relation(&self.client, old.as_deref(), &schema, self.cfg.apply_ddl)
                .await?;
        }
        info!(table = %schema.id, "table schema received");
        self.schemas.insert(schema.id.clone(), schema);
        Ok(())
    }

    /// A changed Relation that the target cannot take ([`crate::relation`])
    /// stops the run as soon as it arrives: the complete transactions before
    /// it are committed and acknowledged first (as at shutdown), so after the
    /// operator fixed the target the stream resumes exactly at the change;
    /// nothing of the new shape (nor of its transaction) is applied.
    async fn check_relation<A: FnMut(&P)>(
        &mut self,
        schema: &TableSchema,
        ack: &mut A,
    ) -> Result<()> {
        let old = self.schemas.get(&schema.id);
        if old.is_some_and(|o| **o == *schema) || (old.is_none() && !self.cfg.apply_ddl) {
            return Ok(());
        }
        let target = self.writer.target_of(&schema.id);
        let shape = crate::relation::read_shape(&self.client, &target).await?;
        let drifts = crate::relation::drift(schema, &shape);
        if let Err(e) = crate::relation::check(&schema.id, &target, &drifts, self.cfg.apply_ddl) {
            self.finish(ack).await?;
            return Err(e);
        }
        Ok(())
    }

    /// The open source transaction outgrew a batch: apply what is folded,
    /// then this transaction's changes so far, behind a savepoint.
    async fn spill(&mut self, intake: &mut Intake<'_, P>) -> Result<()> {
        if !self.batch.spilled {
            self.apply_pending(None).await?;
            self.ensure_open().await?;
            self.client
                .batch_execute("SAVEPOINT ferry_txn")
                .await
                .map_err(|e| pg_error("creating savepoint", e))?;
            self.batch.spilled = true;
        }
        let items = std::mem::take(&mut self.batch.txn);
        self.fold_in(items).await?;
        self.apply_pending(Some(intake)).await
    }

    async fn rollback_savepoint(&mut self) -> Result<()> {
        self.rollback_savepoint_in_txn().await?;
        self.batch.fold = Fold::new();
        Ok(())
    }

    async fn rollback_savepoint_in_txn(&mut self) -> Result<()> {
        self.client
            .batch_execute("ROLLBACK TO SAVEPOINT ferry_txn; RELEASE SAVEPOINT ferry_txn")
            .await
            .map_err(|e| pg_error("rolling back a partly applied transaction", e))?;
        self.writer.after_savepoint_rollback(&self.client).await
    }
}
