//! The drivers' seam: the next runnable job, already concrete (references resolved,
//! cache answers and unrunnable jobs settled inside), and the ways back into the queue.

use std::sync::Arc;
use std::time::Instant;

use wasmesh_runtime::CancellationToken;

use super::{Engine, EngineError, Fence, deadlines};
use crate::model::{
    ActionDescriptor, JobState, WorkerDescriptor, canonical_json, content_id, outcome,
    substitute_refs,
};
use crate::store::{JobRow, now_ms};

/// A job taken to run: marked running in the scheduler, its action concrete. It exists
/// only once its references are resolved, so nothing downstream sees a reference.
#[derive(Debug)]
pub struct Runnable {
    /// The job as the journal has it (attempts not yet counted for this run).
    pub job: JobRow,
    /// Its worker.
    pub worker: Arc<WorkerDescriptor>,
    /// Its action, every `output_of` substituted.
    pub action: ActionDescriptor,
    /// Cancelled when the job is.
    pub cancel: CancellationToken,
}

/// How long a driver waits before taking jobs again after the journal failed.
const JOURNAL_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Why a job taken from the schedule is not run now.
enum Unready {
    /// It never can (its action does not parse, its worker is gone): it fails.
    Unrunnable(String),
    /// The journal failed: it stays queued.
    Journal(String),
}

impl From<EngineError> for Unready {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Journal(m) => Unready::Journal(m),
            other => Unready::Unrunnable(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for Unready {
    fn from(e: crate::store::StoreError) -> Self {
        Unready::Journal(e.to_string())
    }
}

impl Engine {
    /// Takes the next runnable job. A job the result cache answers once its
    /// references resolve, or that cannot run (its stored action does not parse, its
    /// worker is gone), is settled here and the next one taken; `None` when nothing is
    /// runnable now.
    pub fn next_runnable(&self) -> Option<Runnable> {
        loop {
            let (lsn, cancel) = self.scheduler().pop(Instant::now())?;
            match self.prepare(lsn) {
                Ok(Some((job, worker, action))) => {
                    if let Some(why) = deadlines::late(&job, now_ms()) {
                        // Its deadline came before the watch ended it: it never runs.
                        let result = self.deadline_failure(&job, &why);
                        if let Err(e) = self.record(&job, result, false, Fence::Local) {
                            tracing::error!(lsn, error = %e, "ending a job past its deadline");
                        }
                        continue;
                    }
                    return Some(Runnable {
                        job,
                        worker,
                        action,
                        cancel,
                    });
                }
                Ok(None) => continue,
                Err(Unready::Unrunnable(message)) => self.fail_unrunnable(lsn, &message),
                Err(Unready::Journal(message)) => {
                    // Not the job's fault: it stays queued, and is taken again once
                    // the journal answers (a pause, then the drivers look again).
                    tracing::warn!(
                        lsn,
                        error = message,
                        "the journal is unavailable; the job stays queued"
                    );
                    self.requeue(&[lsn]);
                    std::thread::sleep(JOURNAL_RETRY);
                    self.wake.notify_one();
                    return None;
                }
            }
        }
    }

    /// The job with its worker and concrete action; `None` when there is nothing to
    /// run (the job is gone, or the result cache answered it once its references
    /// resolved).
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        lsn: u64,
    ) -> Result<Option<(JobRow, Arc<WorkerDescriptor>, ActionDescriptor)>, Unready> {
        let Some(mut job) = self.job_any(lsn)? else {
            return Ok(None);
        };
        if self.resolve_refs(&mut job)? {
            return Ok(None);
        }
        let action: ActionDescriptor = serde_json::from_str(&job.descriptor)
            .map_err(|e| Unready::Unrunnable(format!("stored action does not parse: {e}")))?;
        let worker = self.worker(&job.tenant, &job.worker)?.ok_or_else(|| {
            Unready::Unrunnable(format!("worker {} is not registered", job.worker))
        })?;
        Ok(Some((job, worker, action)))
    }

    /// The blobs a running job's node may fetch for it (the worker's, the action's,
    /// the checkpoint), read from the journal: for a lease restored after a restart
    /// or adopted from another coordinator, whose assignment this process never
    /// made. Empty when the job or its worker is gone.
    pub fn running_blobs(&self, lsn: u64) -> Vec<crate::model::HashHex> {
        let Ok(Some(job)) = self.job_any(lsn) else {
            return Vec::new();
        };
        let Ok(action) = serde_json::from_str::<ActionDescriptor>(&job.descriptor) else {
            return Vec::new();
        };
        let Ok(Some(worker)) = self.worker(&job.tenant, &job.worker) else {
            return Vec::new();
        };
        let mut blobs = worker.chunks();
        blobs.extend(action.chunks());
        blobs.extend(job.checkpoint);
        blobs
    }

    fn fail_unrunnable(&self, lsn: u64, message: &str) {
        tracing::error!(lsn, message, "a job cannot run");
        if let Ok(Some(job)) = self.job_any(lsn) {
            let result = self.failure(&job, JobState::Failed, outcome::TRAPPED, message);
            if let Err(e) = self.record(&job, result, false, Fence::Local) {
                tracing::error!(lsn, error = %e, "failing an unrunnable job");
            }
        }
    }

    /// Counts the attempt of a job a local runner is about to run (marked running in
    /// the journal); returns the attempt number.
    pub fn start_attempt(&self, job: &JobRow) -> Result<u32, EngineError> {
        let attempt = self.store.start_job(job.lsn, &self.config.id)?;
        self.job_started(job, &self.config.id, attempt);
        Ok(attempt)
    }

    /// Writes the leases of a batch of runnable jobs in one transaction: each is
    /// marked running on its node with its attempt counted. Returns the attempt
    /// numbers (the fencing tokens), in order; `None` for a job that was no longer
    /// queued (another coordinator sharing the journal took or ended it), which this
    /// engine lets go of.
    pub fn lease(&self, leases: &[(u64, &str)]) -> Result<Vec<Option<u32>>, EngineError> {
        let attempts = self.store.lease_jobs(leases)?;
        let granted = attempts.iter().filter(|a| a.is_some()).count();
        self.metrics.leases_granted.add(granted as u64);
        for ((lsn, _), attempt) in leases.iter().zip(&attempts) {
            if attempt.is_none() {
                self.lost_claim(*lsn);
            }
        }
        Ok(attempts)
    }

    /// Puts taken jobs back in the queue (no runner could take them now); those
    /// cancelled meanwhile end as cancelled instead.
    pub fn requeue(&self, lsns: &[u64]) {
        let cancelled: Vec<u64> = {
            let mut scheduler = self.scheduler();
            let now = Instant::now();
            lsns.iter()
                .copied()
                .filter(|lsn| !scheduler.requeue(*lsn, now))
                .collect()
        };
        for lsn in cancelled {
            if let Err(e) = self.end_cancelled(lsn) {
                tracing::error!(lsn, error = %e, "ending a cancelled job");
            }
        }
    }

    /// Queues again a job whose lease (attempt `attempt`) was withdrawn before its
    /// node received it; the attempt is uncounted.
    pub fn withdraw(&self, lsn: u64, attempt: u32) -> Result<(), EngineError> {
        if self.store.unlease_job(lsn, attempt)? {
            if !self.scheduler().requeue(lsn, Instant::now()) {
                return self.end_cancelled(lsn);
            }
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Makes a runnable job's action concrete: every `{"output_of": LSN}` becomes the
    /// output hash of that (succeeded) job and `after` is dropped, since it is met; the
    /// job's action id becomes the id of that descriptor, so the result cache answers
    /// work done before. Returns `true` when the cache did: the job is then finished.
    pub(super) fn resolve_refs(&self, job: &mut JobRow) -> Result<bool, EngineError> {
        if !job.descriptor.contains("output_of") {
            return Ok(false);
        }
        let mut value: serde_json::Value = serde_json::from_str(&job.descriptor)
            .map_err(|e| EngineError::Internal(format!("stored action does not parse: {e}")))?;
        let replaced = substitute_refs(&mut value, |lsn| {
            self.store
                .tenant(&job.tenant)
                .result(lsn)?
                .filter(|result| result.state == JobState::Succeeded)
                .map(|result| result.output)
                .ok_or_else(|| {
                    EngineError::Internal(format!("job {lsn} has no output to substitute"))
                })
        })?;
        if replaced == 0 {
            // "output_of" appeared only as text (an argument, say).
            return Ok(false);
        }
        if let Some(object) = value.as_object_mut() {
            object.remove("after");
        }
        let canonical = canonical_json(&value).map_err(|e| EngineError::Internal(e.0))?;
        let action = content_id(&value).map_err(|e| EngineError::Internal(e.0))?;
        job.descriptor = String::from_utf8(canonical).expect("canonical JSON is UTF-8");
        job.action = action;
        self.store.resolve_job(job.lsn, &job.descriptor, &action)?;
        let Some(mut cached) = self.store.tenant(&job.tenant).cached_result(&action)? else {
            return Ok(false);
        };
        cached.lsn = job.lsn;
        cached.cached = true;
        cached.attempts = job.attempts;
        cached.placement = None;
        cached.timing = None;
        self.finish_now(job, &cached)?;
        self.job_ended(job, &cached, false);
        self.metrics.cache_answers.add(1);
        self.metrics.finished(cached.state);
        self.settle(job.lsn, true);
        Ok(true)
    }
}
