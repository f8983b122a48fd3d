//! Submitting work: workers registered (the needs dance, modules validated), actions
//! parsed and checked, cache answers, and jobs written and scheduled in batches.

use std::sync::Arc;

use wasmesh_runtime::RuntimeError;

use super::{Engine, EngineError, scheduler};
use crate::model::{
    ActionDescriptor, Deadlines, HashHex, JobState, QueueState, WorkerDescriptor, canonical_json,
    outcome, output_refs, substitute_refs,
};
use crate::store::{JobRow, NewJob, StoreResult};

/// The answer to a worker registration.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// Chunks are missing; send them.
    Needs(Vec<HashHex>),
    /// Newly registered.
    Created,
    /// Already known.
    Known,
}

/// The answer to a job submission.
#[derive(Debug)]
pub enum Submitted {
    /// Inputs are missing; send them.
    Needs(Vec<HashHex>),
    /// Accepted: (lsn, action id) per action.
    Jobs(Vec<(u64, HashHex)>),
}

/// One action of a submission, already parsed.
#[derive(Debug)]
pub struct ActionSubmission {
    /// The parsed descriptor.
    pub action: ActionDescriptor,
    /// Its id (canonical JSON hash of the descriptor as sent).
    pub id: HashHex,
    /// Its canonical JSON.
    pub canonical: String,
    /// LSNs of the jobs whose outputs it names (`{"output_of": LSN}`); `action` then
    /// holds the empty hash in their places until they are substituted.
    pub refs: Vec<u64>,
    /// Its `deadlines` (not part of the action: its id is the same without them).
    pub deadlines: Deadlines,
}

impl ActionSubmission {
    /// Parses an action descriptor as sent; the error says what is wrong with it.
    pub fn parse(mut value: serde_json::Value) -> Result<Self, String> {
        let deadlines = match value.as_object_mut().and_then(|o| o.remove("deadlines")) {
            Some(d) => {
                serde_json::from_value::<Deadlines>(d).map_err(|e| format!("deadlines: {e}"))?
            }
            None => Deadlines::default(),
        };
        deadlines.check()?;
        let canonical = canonical_json(&value).map_err(|e| e.0)?;
        let refs = output_refs(&value)?;
        if !refs.is_empty() {
            // Checked for shape with the empty hash standing in for each reference;
            // the stored descriptor keeps the references until the jobs they name
            // succeed.
            substitute_refs(&mut value, |_| Ok::<_, ()>(HashHex::empty()))
                .expect("the stand-in never fails");
        }
        let action =
            serde_json::from_value(value).map_err(|e| format!("action descriptor: {e}"))?;
        let canonical = String::from_utf8(canonical).expect("canonical JSON is UTF-8");
        Ok(ActionSubmission {
            id: HashHex::of(canonical.as_bytes()),
            action,
            canonical,
            refs,
            deadlines,
        })
    }
}

/// What a job's queue says about retries and priority.
#[derive(Clone, Copy, Debug)]
pub struct QueuePolicy {
    /// The queue's id.
    pub id: u64,
    /// Retries allowed.
    pub max_retries: u32,
    /// Whether guest failures are retried.
    pub retry_guest_failures: bool,
    /// The queue's default priority.
    pub priority: i64,
    /// Deadlines for its jobs that give none of their own.
    pub deadlines: Deadlines,
}

impl Engine {
    /// The subset of `hashes` that `tenant` does not hold, in order, without repeats.
    /// A blob the journal says the tenant holds but whose file is missing (a crash
    /// between the write and its reaching the disk) is asked for again.
    pub fn needs(&self, tenant: &str, hashes: &[HashHex]) -> StoreResult<Vec<HashHex>> {
        let mut missing = Vec::new();
        for hash in hashes {
            if missing.contains(hash) {
                continue;
            }
            let held = self.holds(tenant, hash)? && self.cas.contains(hash);
            if !held {
                missing.push(*hash);
            }
        }
        Ok(missing)
    }

    /// Whether `tenant` holds the blob, marking it used now (so garbage collection
    /// leaves it alone for its grace period): what every check before a blob is
    /// named (a submission, a registration, an upload found held, a node's report)
    /// goes through. Marks are written at most every quarter of the grace period (at
    /// most a minute), so a blob named often costs one write now and then.
    pub fn holds(&self, tenant: &str, hash: &HashHex) -> StoreResult<bool> {
        let every = (self.config.gc_grace / 4).min(std::time::Duration::from_secs(60));
        let refresh_before = crate::store::now_ms() - every.as_millis() as i64;
        self.store.tenant(tenant).hold_blob(hash, refresh_before)
    }

    /// A worker's descriptor (cached in memory once read).
    pub fn worker(
        &self,
        tenant: &str,
        id: &HashHex,
    ) -> Result<Option<Arc<WorkerDescriptor>>, EngineError> {
        let key = (tenant.to_string(), *id);
        if let Some(found) = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(found.clone()));
        }
        let Some(json) = self.store.tenant(tenant).worker(id)? else {
            return Ok(None);
        };
        let descriptor: WorkerDescriptor = serde_json::from_str(&json)
            .map_err(|e| EngineError::Internal(format!("stored worker {id}: {e}")))?;
        let descriptor = Arc::new(descriptor);
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, descriptor.clone());
        Ok(Some(descriptor))
    }

    /// Registers a worker (the descriptor as sent, already parsed and hashed).
    pub fn register_worker(
        &self,
        tenant: &str,
        id: HashHex,
        descriptor: &WorkerDescriptor,
        canonical: &str,
    ) -> Result<Registered, EngineError> {
        if self.store.tenant(tenant).worker(&id)?.is_some() {
            return Ok(Registered::Known);
        }
        for name in descriptor.files.keys() {
            wasmesh_runtime::check_file_name(name)
                .map_err(|e| EngineError::Invalid("invalid_descriptor", format!("files: {e}")))?;
        }
        let needs = self.needs(tenant, &descriptor.chunks())?;
        if !needs.is_empty() {
            return Ok(Registered::Needs(needs));
        }
        let module = descriptor.module;
        self.sandbox
            .module(module.to_blake3(), || {
                self.cas
                    .map(&module)
                    .map_err(|e| RuntimeError::Host(format!("reading module {module}: {e}")))
            })
            .map_err(|e| match e {
                RuntimeError::InvalidModule(message) => EngineError::InvalidModule(message),
                other => EngineError::Internal(other.to_string()),
            })?;
        let created = self.store.tenant(tenant).put_worker(
            &id,
            &descriptor.name,
            descriptor.version.as_deref(),
            canonical,
        )?;
        Ok(if created {
            Registered::Created
        } else {
            Registered::Known
        })
    }

    /// Submits actions as jobs: checks workers, inputs and dependencies, answers
    /// cached actions from the result cache, and queues the rest.
    pub fn submit(
        &self,
        tenant: &str,
        actions: Vec<ActionSubmission>,
        priority: Option<i64>,
        queue: Option<QueuePolicy>,
    ) -> Result<Submitted, EngineError> {
        if actions.is_empty() {
            return Err(EngineError::Invalid(
                "invalid_descriptor",
                "a batch needs at least one action".into(),
            ));
        }
        let mut chunks = Vec::new();
        for submission in &actions {
            let action = &submission.action;
            if self.worker(tenant, &action.worker)?.is_none() {
                return Err(EngineError::NotFound(format!(
                    "worker {} is not registered",
                    action.worker
                )));
            }
            for name in action.files.keys() {
                wasmesh_runtime::check_file_name(name).map_err(|e| {
                    EngineError::Invalid("invalid_descriptor", format!("files: {e}"))
                })?;
            }
            let named = (action.after.iter().map(|lsn| ("after", lsn)))
                .chain(submission.refs.iter().map(|lsn| ("output_of", lsn)));
            for (field, lsn) in named {
                if self.store.tenant(tenant).job(*lsn)?.is_none() {
                    return Err(EngineError::Invalid(
                        "invalid_dependency",
                        format!("`{field}` names job {lsn}, which does not exist"),
                    ));
                }
            }
            let empty = HashHex::empty();
            chunks.extend(
                action
                    .chunks()
                    .into_iter()
                    .filter(|hash| submission.refs.is_empty() || *hash != empty),
            );
        }
        let needs = self.needs(tenant, &chunks)?;
        if !needs.is_empty() {
            return Ok(Submitted::Needs(needs));
        }
        if let Some(q) = queue
            && let Some(row) = self.store.tenant(tenant).queue(q.id)?
            && row.state != QueueState::Active
        {
            return Err(EngineError::Conflict(
                "queue_not_active",
                format!("queue {} is {}", q.id, row.state),
            ));
        }
        // Quotas last: a request that needs chunks or is invalid uses none.
        self.admit_jobs(tenant, actions.len() as u64)?;
        let priority =
            scheduler::clamp_priority(priority.or(queue.map(|q| q.priority)).unwrap_or(0));
        let mut rows = Vec::with_capacity(actions.len());
        // A job waits for the jobs whose outputs it names as for its `after` ones.
        let afters: Vec<Vec<u64>> = actions
            .iter()
            .map(|submission| {
                let mut after = submission.action.after.clone();
                for lsn in &submission.refs {
                    if !after.contains(lsn) {
                        after.push(*lsn);
                    }
                }
                after
            })
            .collect();
        for (submission, after) in actions.iter().zip(&afters) {
            let cached = if after.is_empty() {
                self.store
                    .tenant(tenant)
                    .cached_result(&submission.id)?
                    .map(|mut result| {
                        result.cached = true;
                        result.attempts = 0;
                        result.timing = None;
                        result
                    })
            } else {
                None
            };
            rows.push((
                NewJob {
                    tenant,
                    queue_id: queue.map(|q| q.id),
                    action: submission.id,
                    worker: submission.action.worker,
                    descriptor: &submission.canonical,
                    priority,
                    max_retries: queue.map_or(self.config.default_max_retries, |q| q.max_retries),
                    retry_guest_failures: queue.is_some_and(|q| q.retry_guest_failures),
                    after,
                    deadlines: submission
                        .deadlines
                        .or(queue.map(|q| q.deadlines).unwrap_or_default()),
                },
                cached,
            ));
        }
        // A cache answer's webhook deliveries go in with it, as a result's do.
        let queue_id = queue.map(|q| q.id);
        let lsns = self.store.insert_jobs_with(&rows, &|lsn, result| {
            self.job_events_of(tenant, lsn, queue_id, result)
        })?;
        if self.recorder.is_recording(tenant) {
            let mut workers = Vec::with_capacity(actions.len());
            for submission in &actions {
                workers.push(
                    self.worker(tenant, &submission.action.worker)?
                        .ok_or_else(|| EngineError::Internal("worker vanished".into()))?,
                );
            }
            let entries: Vec<_> = actions
                .iter()
                .zip(&workers)
                .map(|(submission, worker)| {
                    (
                        worker.as_ref(),
                        &submission.action,
                        submission.canonical.as_str(),
                    )
                })
                .collect();
            // A recording's bytes count against the tenant's store quota.
            let room = self.store_room(tenant)?;
            self.recorder.append(&self.cas, tenant, &entries, room)?;
        }
        self.metrics.jobs_submitted.add(lsns.len() as u64);
        let mut queued = Vec::with_capacity(lsns.len());
        for (lsn, (new, cached)) in lsns.iter().zip(&rows) {
            if let Some(result) = cached {
                self.metrics.cache_answers.add(1);
                self.job_answered(*lsn, new, result);
                self.announce(*lsn);
                continue;
            }
            let job = self
                .store
                .tenant(tenant)
                .job(*lsn)?
                .ok_or_else(|| EngineError::Internal("job vanished".into()))?;
            self.job_queued(&job, None);
            queued.push(job);
        }
        // The batch enters the schedule at once: nothing looks between its jobs.
        self.schedule_all(&queued)?;
        Ok(Submitted::Jobs(
            lsns.into_iter().zip(actions.iter().map(|a| a.id)).collect(),
        ))
    }

    /// Adds a queued job to the scheduler, or fails it at once when a dependency
    /// already failed.
    pub(super) fn schedule(&self, job: &JobRow) -> Result<(), EngineError> {
        self.schedule_all(std::slice::from_ref(job))
    }

    /// Adds queued jobs to the scheduler under one hold of its lock, so whoever looks
    /// at the schedule (the placement loop, the autoscaler's backlog) sees all of a
    /// batch or none of it; a job whose dependency already failed is failed after.
    pub(super) fn schedule_all(&self, jobs: &[JobRow]) -> Result<(), EngineError> {
        let mut doomed = Vec::new();
        let mut added = Vec::with_capacity(jobs.len());
        let mut scheduler = self.scheduler();
        'jobs: for job in jobs {
            if scheduler.is_pending(job.lsn) {
                // Scheduled already (a job taken from a shared journal that this
                // engine took meanwhile, or a lease a node brought here).
                continue;
            }
            let mut waiting = Vec::new();
            for after in &job.after {
                // A dependency leaves the scheduler only after its result is written,
                // so one not pending here has its final state in the database.
                if scheduler.is_pending(*after) {
                    waiting.push(*after);
                    continue;
                }
                let state = self.store.tenant(&job.tenant).job(*after)?.map(|j| j.state);
                if self.store.is_shared()
                    && matches!(state, Some(JobState::Queued | JobState::Running))
                {
                    // Pending through another coordinator: its end is announced here.
                    waiting.push(*after);
                    continue;
                }
                if state != Some(JobState::Succeeded) {
                    let message = format!(
                        "dependency {after} {}; this job never ran",
                        match state {
                            Some(state) => state.to_string(),
                            None => "is unknown".into(),
                        }
                    );
                    doomed.push((job.lsn, message));
                    continue 'jobs;
                }
            }
            let due = [job.start_by_ms, job.finish_by_ms]
                .into_iter()
                .flatten()
                .min();
            let origin = scheduler::Origin {
                worker: job.worker,
                queue: job.queue_id,
            };
            scheduler.add_due(job.lsn, &job.tenant, job.priority, due, origin, waiting);
            added.push(job);
        }
        drop(scheduler);
        for job in added {
            self.watch_deadlines(job);
        }
        self.wake.notify_one();
        for (lsn, message) in doomed {
            self.doom(lsn, &message)?;
        }
        Ok(())
    }

    /// Fails a job that can never run.
    pub(super) fn doom(&self, lsn: u64, message: &str) -> Result<(), EngineError> {
        let Some(job) = self.job_any(lsn)? else {
            return Ok(());
        };
        let result = self.failure(&job, JobState::Failed, outcome::CANCELLED, message);
        if !self.finish_now(&job, &result)? {
            // It ended already (through another coordinator sharing the journal).
            self.scheduler().forget(lsn, std::time::Instant::now());
            return Ok(());
        }
        self.job_ended(&job, &result, false);
        self.metrics.finished(result.state);
        self.settle(lsn, false);
        Ok(())
    }
}
