//! An engine sharing its journal with other coordinators (`--shared`). Each keeps its
//! own schedule (a cache of the journal, as ever) of the jobs submitted through it and
//! of queued jobs it takes when its nodes are idle (`take_queued`); a job is leased
//! only if it is still queued at that moment (`Store::lease_jobs`), so two
//! coordinators holding one job never both hand it out, and the one that lost lets it
//! go (`lost_claim`). What others do reaches this engine as the journal's
//! notifications (`listening`): a job finished elsewhere wakes long-polls and
//! releases (or dooms) its dependents here; a cancel asked for elsewhere stops the job
//! here if this engine runs it; webhook subscriptions changed elsewhere are read again.

use std::sync::Arc;
use std::time::Instant;

use super::{Engine, EngineError};
use crate::model::JobState;

/// Which queued jobs of the shared journal `Engine::take_queued` takes.
#[derive(Clone, Copy, Debug)]
pub enum Take {
    /// Any (this coordinator's nodes are idle).
    Any,
    /// Those older than every job waiting here that have waited this long.
    Waiting(std::time::Duration),
}

impl Engine {
    /// Lets go of a job this engine took from its schedule but could not lease: it is
    /// no longer queued (another coordinator leased or ended it).
    pub fn lost_claim(&self, lsn: u64) {
        self.scheduler().forget(lsn, Instant::now());
    }

    /// Holds a job another coordinator leased, whose node now renews it here: it is
    /// running in this engine's schedule.
    pub fn adopt_running(&self, job: &crate::store::JobRow) {
        let mut scheduler = self.scheduler();
        if !scheduler.is_pending(job.lsn) {
            scheduler.add_running(job.lsn, &job.tenant, job.priority, Instant::now());
            drop(scheduler);
            self.watch_deadlines(job);
        }
    }

    /// Takes up to `limit` queued jobs this engine does not schedule yet (submitted
    /// through another coordinator, requeued by the leader, or left by a coordinator
    /// that stopped) into its schedule; how many it took. `Take::Any` when its nodes
    /// are idle; `Take::Waiting` otherwise: only jobs that have waited for `waited`
    /// and are older than every job waiting here, so a coordinator with no node (or
    /// one falling behind) does not keep its clients' jobs waiting behind this one's.
    pub fn take_queued(&self, take: Take, limit: usize) -> Result<usize, EngineError> {
        let (before, created_before_ms) = match take {
            Take::Any => (u64::MAX, i64::MAX),
            Take::Waiting(waited) => (
                self.scheduler().oldest_queued().unwrap_or(u64::MAX),
                crate::store::now_ms() - waited.as_millis() as i64,
            ),
        };
        let mut taken = 0;
        for job in self.store.queued_ready(before, created_before_ms, limit)? {
            if self.scheduler().is_pending(job.lsn) {
                continue;
            }
            if self.store.cancel_requested(job.lsn)? {
                self.end_cancelled(job.lsn)?;
                continue;
            }
            self.schedule(&job)?;
            taken += 1;
        }
        if taken > 0 {
            self.wake.notify_one();
        }
        Ok(taken)
    }

    /// Starts hearing the journal's notifications, on a shared journal.
    pub(super) fn start_listening(self: &Arc<Self>) {
        let mut heard = match self.store.listen() {
            Ok(Some(heard)) => heard,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "listening to the shared journal");
                return;
            }
        };
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    first = heard.recv() => first,
                    () = engine.shutdown.cancelled() => return,
                };
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while let Ok(next) = heard.try_recv() {
                    batch.push(next);
                }
                let e = engine.clone();
                let _ = tokio::task::spawn_blocking(move || e.hear(batch)).await;
            }
        });
    }

    /// What the journal's notifications say (see store/schema_pg.rs).
    fn hear(&self, batch: Vec<String>) {
        for notice in batch {
            let lsn = notice.get(1..).and_then(|lsn| lsn.parse::<u64>().ok());
            let done = match (notice.as_bytes().first(), lsn) {
                (Some(b's'), Some(lsn)) => self.ended_elsewhere(lsn),
                (Some(b'c'), Some(lsn)) => self.cancelled_elsewhere(lsn),
                (Some(b'w'), _) => self.webhooks.reload().map_err(Into::into),
                // Listening again after a lost connection: what was missed is
                // looked at again by the long-polls and the placement.
                _ => Ok(()),
            };
            if let Err(e) = done {
                tracing::warn!(notice, error = %e, "acting on the shared journal's notice");
            }
        }
        self.results_changed();
        self.wake.notify_one();
        // Jobs ended through other coordinators queued their webhook deliveries with
        // their results: the leader's deliverer looks at once.
        if self.store.leads() {
            self.webhooks.queued();
        }
    }

    /// A job ended (here or through another coordinator): its dependents waiting here
    /// are released, or doomed when it did not succeed.
    fn ended_elsewhere(&self, lsn: u64) -> Result<(), EngineError> {
        if !self.scheduler().awaits(lsn) {
            return Ok(());
        }
        let succeeded = self.job_any(lsn)?.map(|job| job.state) == Some(JobState::Succeeded);
        let (_, doomed) = self.scheduler().finish(lsn, succeeded, Instant::now());
        for dependent in doomed {
            let message = format!("dependency {lsn} did not succeed; this job never ran");
            self.doom(dependent, &message)?;
        }
        Ok(())
    }

    /// A cancel was asked for through another coordinator: a job this engine holds
    /// stops as it would for a cancel asked here.
    fn cancelled_elsewhere(&self, lsn: u64) -> Result<(), EngineError> {
        if !self.scheduler().is_pending(lsn) {
            return Ok(());
        }
        match self.job_any(lsn)? {
            Some(job) => self.stop_job(&job),
            None => Ok(()),
        }
    }
}
