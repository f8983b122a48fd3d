//! The node host: a content-addressed store, registered workers, and jobs run on a
//! bounded pool of sandbox slots, all durable in the data directory.
//!
//! The HTTP layer (`crate::api`) only translates; every rule lives here.

pub mod address;
pub mod agent;
pub mod cas;
pub mod db;
pub mod membership;
pub mod metrics;
pub mod record;
pub mod scheduler;
pub mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use wasmesh_runtime::{
    CancellationToken, Config as SandboxConfig, FileSource, Limits, Mount, Outcome, RunObserver,
    RunSpec, RuntimeError, Sandbox,
};

use crate::coordinator::fleet::{Fleet, LeaseCancel};
use crate::coordinator::protocol::Token;
use crate::model::{
    ActionDescriptor, HashHex, JobResult, RunTiming, UsageJson, WorkerDescriptor, canonical_json,
    content_id, output_refs, substitute_refs,
};
use cas::Cas;
use db::{Db, JobRow, NewJob};
use metrics::Metrics;
use scheduler::{Cancelled, Scheduler};

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's id (reported in results and sysinfo).
    pub id: String,
    /// Where the store, the database and the module cache live.
    pub data_dir: PathBuf,
    /// Actions run at once.
    pub slots: usize,
    /// Ceilings for every action.
    pub limits: Limits,
    /// Largest blob accepted by the store.
    pub max_blob_bytes: u64,
    /// Largest request body (a package with its chunks).
    pub max_request_bytes: u64,
    /// Largest JSON body.
    pub max_json_bytes: usize,
    /// Labels placement can match.
    pub labels: BTreeMap<String, String>,
    /// Retries of a job outside any queue after a host-side failure.
    pub default_max_retries: u32,
    /// An active queue idle this long with nothing pending expires (is cancelled).
    pub queue_idle: Duration,
    /// How long an `Idempotency-Key` and its stored response are kept.
    pub idempotency_retention: Duration,
    /// How webhook deliveries are retried.
    pub webhooks: webhooks::WebhookConfig,
}

impl NodeConfig {
    /// Defaults for a node keeping its data in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            id: "node-1".into(),
            data_dir,
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: Limits::default(),
            max_blob_bytes: 1 << 30,
            max_request_bytes: 1 << 30,
            max_json_bytes: 16 << 20,
            labels: BTreeMap::new(),
            default_max_retries: 3,
            queue_idle: Duration::from_secs(15 * 60),
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            webhooks: webhooks::WebhookConfig::default(),
        }
    }
}

/// Why a request about jobs or workers was refused. The API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Malformed input; the code is the API's error code.
    #[error("{1}")]
    Invalid(&'static str, String),
    /// Not found (or another tenant's).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The module does not validate or compile.
    #[error("{0}")]
    InvalidModule(String),
    /// Something failed on the host.
    #[error("{0}")]
    Internal(String),
}

impl From<rusqlite::Error> for NodeError {
    fn from(e: rusqlite::Error) -> Self {
        NodeError::Internal(format!("database: {e}"))
    }
}

impl From<std::io::Error> for NodeError {
    fn from(e: std::io::Error) -> Self {
        NodeError::Internal(format!("store: {e}"))
    }
}

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
}

impl ActionSubmission {
    /// Parses an action descriptor as sent; the error says what is wrong with it.
    pub fn parse(mut value: serde_json::Value) -> Result<Self, String> {
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
}

/// The node.
#[derive(Debug)]
pub struct Node {
    /// Its configuration.
    pub config: NodeConfig,
    /// Durable state.
    pub db: Db,
    /// Blobs.
    pub cas: Cas,
    /// The sandbox actions run in.
    pub sandbox: Sandbox,
    /// Counters for /metrics.
    pub metrics: Metrics,
    /// Active recordings.
    pub recorder: record::Recorder,
    /// Webhook subscriptions and deliveries.
    pub webhooks: webhooks::Webhooks,
    scheduler: Mutex<Scheduler>,
    wake: Notify,
    /// Notified whenever a job's result is written (for long-polls).
    pub finished: Notify,
    slots: Arc<Semaphore>,
    workers: Mutex<HashMap<(String, HashHex), Arc<WorkerDescriptor>>>,
    shutdown: CancellationToken,
    started: Instant,
    /// On a coordinator, the fleet jobs are leased to instead of local slots.
    pub fleet: Option<Arc<Fleet>>,
}

impl Node {
    /// Opens the node's data directory, recovers pending jobs and returns the node.
    /// Call [`Node::start`] to begin executing.
    pub fn open(config: NodeConfig) -> anyhow::Result<Arc<Self>> {
        Self::open_with(config, None)
    }

    /// Opens a node that, given a fleet, is a coordinator: the same store, journal and
    /// API, with jobs leased to the fleet's nodes instead of run on local slots.
    pub fn open_with(config: NodeConfig, fleet: Option<Arc<Fleet>>) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let db = Db::open(&config.data_dir.join("wasmesh.db")).context("opening the database")?;
        let cas = Cas::open(&config.data_dir.join("cas"), config.max_blob_bytes)
            .context("opening the store")?;
        let sandbox = Sandbox::new(SandboxConfig {
            limits: config.limits,
            max_instances: (config.slots as u32 * 2).max(8),
            cache_dir: Some(config.data_dir.join("modules")),
            scratch_dir: Some(config.data_dir.join("scratch")),
            ..SandboxConfig::default()
        })
        .context("starting the sandbox")?;
        let webhooks =
            webhooks::Webhooks::open(&db, config.webhooks.clone()).context("loading webhooks")?;
        let node = Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.slots.max(1))),
            config,
            db,
            cas,
            sandbox,
            metrics: Metrics::default(),
            recorder: record::Recorder::default(),
            webhooks,
            scheduler: Mutex::new(Scheduler::default()),
            wake: Notify::new(),
            finished: Notify::new(),
            workers: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            fleet,
        });
        node.recover().context("recovering pending jobs")?;
        Ok(node)
    }

    fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the scheduler from the database. A job that was running when the node
    /// stopped had its attempt counted when it started; it is queued again, or failed
    /// as `node_lost` once its retries are used up.
    ///
    /// On a coordinator a running job's lease is restored instead: the node running it
    /// gets one more lease period (twice over) to register again and renew it.
    fn recover(&self) -> Result<(), NodeError> {
        let mut requeued = 0;
        for job in self.db.pending_jobs()? {
            if job.state != "running" {
                continue;
            }
            if let (Some(fleet), Some(node)) = (&self.fleet, &job.lease_node) {
                let token = Token {
                    lsn: job.lsn,
                    attempt: job.attempts,
                };
                fleet.restore(token, node, fleet.config.lease * 2);
                self.scheduler()
                    .add_running(job.lsn, &job.tenant, job.priority);
                if self.db.cancel_requested(job.lsn)? {
                    // Cancelled before the restart: the node is told again.
                    self.scheduler().cancel(job.lsn);
                    fleet.cancel(job.lsn);
                }
                continue;
            }
            if self.db.cancel_requested(job.lsn)? {
                self.end_cancelled(job.lsn)?;
            } else if job.attempts > job.max_retries {
                let message = "the node stopped while running it and no retries are left";
                self.db
                    .finish_job(&self.failure(&job, "failed", "node_lost", message))?;
            } else {
                self.db.requeue_job(job.lsn)?;
                requeued += 1;
            }
        }
        // In LSN order, so every dependency is scheduled before its dependents.
        for job in self.db.pending_jobs()? {
            if job.state != "queued" {
                continue;
            }
            if self.db.cancel_requested(job.lsn)? {
                // Cancelled while it was being placed or retried: it never runs.
                self.end_cancelled(job.lsn)?;
            } else {
                self.schedule(&job)?;
            }
        }
        if requeued > 0 {
            tracing::info!(
                requeued,
                "requeued jobs that were running when the node stopped"
            );
        }
        Ok(())
    }

    /// Starts the dispatcher that hands queued jobs to free slots.
    pub fn start(self: &Arc<Self>) {
        let node = self.clone();
        match self.fleet.clone() {
            Some(fleet) => {
                tokio::spawn(crate::coordinator::place_loop(node, fleet.clone()));
                tokio::spawn(crate::coordinator::expiry_loop(self.clone(), fleet));
            }
            None => {
                tokio::spawn(async move { node.dispatch().await });
            }
        }
        let node = self.clone();
        tokio::spawn(async move { node.expire_idle_queues().await });
        tokio::spawn(webhooks::deliver_loop(self.clone()));
    }

    /// Stops handing out work and waits up to `grace` for running jobs to finish.
    /// Jobs still running after that are requeued at the next start, their attempt
    /// counted; queued jobs simply stay queued in the database.
    pub async fn stop(&self, grace: Duration) {
        self.shutdown.cancel();
        let all = u32::try_from(self.config.slots.max(1)).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("jobs still running at shutdown will be requeued at the next start");
        }
    }

    /// Seconds since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// (queued, running) job counts.
    pub fn load(&self) -> (usize, usize) {
        let s = self.scheduler();
        (s.queued(), s.running())
    }

    /// Whether the node accepts work.
    pub fn ready(&self) -> bool {
        !self.shutdown.is_cancelled()
    }

    /// Cancelled when the node stops.
    pub fn stopping(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The slots actions run in (leased work takes them too).
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    /// Notified when a job becomes runnable.
    pub(crate) fn runnable(&self) -> &Notify {
        &self.wake
    }

    /// The next runnable job (now marked running), if any.
    pub(crate) fn pop_runnable(&self) -> Option<(u64, CancellationToken)> {
        self.scheduler().pop()
    }

    /// Puts popped jobs back in the queue (no node could take them now); those
    /// cancelled meanwhile end as cancelled instead.
    pub(crate) fn unpop(&self, lsns: &[u64]) {
        let cancelled: Vec<u64> = {
            let mut scheduler = self.scheduler();
            lsns.iter()
                .copied()
                .filter(|lsn| !scheduler.requeue(*lsn))
                .collect()
        };
        for lsn in cancelled {
            if let Err(e) = self.end_cancelled(lsn) {
                tracing::error!(lsn, error = %e, "ending a cancelled job");
            }
        }
    }

    /// Queues again a job whose lease was withdrawn before its node received it.
    pub(crate) fn withdraw(&self, token: Token) -> Result<(), NodeError> {
        if self.db.unlease_job(token.lsn, token.attempt)? {
            if !self.scheduler().requeue(token.lsn) {
                return self.end_cancelled(token.lsn);
            }
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Ends a job that was cancelled before (another attempt of) it ran.
    fn end_cancelled(&self, lsn: u64) -> Result<(), NodeError> {
        let Some(job) = self.job_any(lsn)? else {
            return Ok(());
        };
        let result = self.failure(&job, "cancelled", "cancelled", "cancelled before it ran");
        self.db.finish_job(&result)?;
        self.metrics.finished("cancelled");
        self.settle(lsn, false);
        Ok(())
    }

    async fn dispatch(self: Arc<Self>) {
        loop {
            // Wait for work before taking a slot: an idle dispatcher holds none, so
            // leased work from a coordinator can use every slot.
            loop {
                let notified = self.wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.scheduler().has_runnable() {
                    break;
                }
                tokio::select! {
                    () = notified => {}
                    () = self.shutdown.cancelled() => return,
                }
            }
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
                () = self.shutdown.cancelled() => return,
            };
            let Some((lsn, cancel)) = self.scheduler().pop() else {
                // Cancelled meanwhile; the permit goes back.
                continue;
            };
            let node = self.clone();
            tokio::task::spawn_blocking(move || {
                node.execute(lsn, cancel);
                drop(permit);
            });
        }
    }

    async fn expire_idle_queues(self: Arc<Self>) {
        let every =
            (self.config.queue_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.shutdown.cancelled() => return,
            }
            let retention = self.config.idempotency_retention.as_millis() as i64;
            if let Err(e) = self.db.idempotency_expire(db::now_ms() - retention) {
                tracing::warn!(error = %e, "expiring idempotency keys");
            }
            let before = db::now_ms() - self.config.queue_idle.as_millis() as i64;
            match self.db.idle_queues(before) {
                Ok(ids) => {
                    for id in ids {
                        tracing::info!(queue = id, "expiring an idle queue");
                        if let Err(e) = self.db.set_queue_state(id, "cancelled") {
                            tracing::warn!(error = %e, "expiring a queue");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for idle queues"),
            }
        }
    }

    /// The subset of `hashes` that `tenant` does not hold, in order, without repeats.
    /// A blob the journal says the tenant holds but whose file is missing (a crash
    /// between the write and its reaching the disk) is asked for again.
    pub fn needs(&self, tenant: &str, hashes: &[HashHex]) -> rusqlite::Result<Vec<HashHex>> {
        let mut missing = Vec::new();
        for hash in hashes {
            if missing.contains(hash) {
                continue;
            }
            let held = self.db.owns_blob(tenant, hash)? && self.cas.contains(hash);
            if !held {
                missing.push(*hash);
            }
        }
        Ok(missing)
    }

    /// A worker's descriptor (cached in memory once read).
    pub fn worker(
        &self,
        tenant: &str,
        id: &HashHex,
    ) -> Result<Option<Arc<WorkerDescriptor>>, NodeError> {
        let key = (tenant.to_string(), *id);
        if let Some(found) = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(found.clone()));
        }
        let Some(json) = self.db.worker(tenant, id)? else {
            return Ok(None);
        };
        let descriptor: WorkerDescriptor = serde_json::from_str(&json)
            .map_err(|e| NodeError::Internal(format!("stored worker {id}: {e}")))?;
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
    ) -> Result<Registered, NodeError> {
        if self.db.worker(tenant, &id)?.is_some() {
            return Ok(Registered::Known);
        }
        for name in descriptor.files.keys() {
            wasmesh_runtime::check_file_name(name)
                .map_err(|e| NodeError::Invalid("invalid_descriptor", format!("files: {e}")))?;
        }
        let needs = self.needs(tenant, &descriptor.chunks())?;
        if !needs.is_empty() {
            return Ok(Registered::Needs(needs));
        }
        let module = descriptor.module;
        self.sandbox
            .module(module.to_blake3(), || {
                self.cas
                    .read(&module)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| RuntimeError::Host(format!("reading module {module}: {e}")))
            })
            .map_err(|e| match e {
                RuntimeError::InvalidModule(message) => NodeError::InvalidModule(message),
                other => NodeError::Internal(other.to_string()),
            })?;
        let created = self.db.put_worker(
            tenant,
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
    ) -> Result<Submitted, NodeError> {
        if actions.is_empty() {
            return Err(NodeError::Invalid(
                "invalid_descriptor",
                "a batch needs at least one action".into(),
            ));
        }
        let mut chunks = Vec::new();
        for submission in &actions {
            let action = &submission.action;
            if self.worker(tenant, &action.worker)?.is_none() {
                return Err(NodeError::NotFound(format!(
                    "worker {} is not registered",
                    action.worker
                )));
            }
            for name in action.files.keys() {
                wasmesh_runtime::check_file_name(name)
                    .map_err(|e| NodeError::Invalid("invalid_descriptor", format!("files: {e}")))?;
            }
            let named = (action.after.iter().map(|lsn| ("after", lsn)))
                .chain(submission.refs.iter().map(|lsn| ("output_of", lsn)));
            for (field, lsn) in named {
                if self.db.job(tenant, *lsn)?.is_none() {
                    return Err(NodeError::Invalid(
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
            && let Some(row) = self.db.queue(q.id)?
            && row.state != "active"
        {
            return Err(NodeError::Conflict(
                "queue_not_active",
                format!("queue {} is {}", q.id, row.state),
            ));
        }
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
                self.db
                    .cached_result(tenant, &submission.id)?
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
                },
                cached,
            ));
        }
        let lsns = self.db.insert_jobs(&rows)?;
        if self.recorder.is_recording(tenant) {
            let mut workers = Vec::with_capacity(actions.len());
            for submission in &actions {
                workers.push(
                    self.worker(tenant, &submission.action.worker)?
                        .ok_or_else(|| NodeError::Internal("worker vanished".into()))?,
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
            self.recorder.append(&self.cas, tenant, &entries)?;
        }
        self.metrics.jobs_submitted.add(lsns.len() as u64);
        for (lsn, (_, cached)) in lsns.iter().zip(&rows) {
            if cached.is_some() {
                self.metrics.cache_answers.add(1);
                self.announce(*lsn);
                continue;
            }
            let job = self
                .db
                .job(tenant, *lsn)?
                .ok_or_else(|| NodeError::Internal("job vanished".into()))?;
            self.schedule(&job)?;
        }
        Ok(Submitted::Jobs(
            lsns.into_iter().zip(actions.iter().map(|a| a.id)).collect(),
        ))
    }

    /// Adds a queued job to the scheduler, or fails it at once when a dependency
    /// already failed.
    fn schedule(&self, job: &JobRow) -> Result<(), NodeError> {
        let mut scheduler = self.scheduler();
        let mut waiting = Vec::new();
        for after in &job.after {
            // A dependency leaves the scheduler only after its result is written, so
            // one not pending here has its final state in the database.
            if scheduler.is_pending(*after) {
                waiting.push(*after);
                continue;
            }
            let state = self
                .db
                .job(&job.tenant, *after)?
                .map(|j| j.state)
                .unwrap_or_default();
            if state != "succeeded" {
                drop(scheduler);
                let message = format!(
                    "dependency {after} {}; this job never ran",
                    if state.is_empty() {
                        "is unknown".into()
                    } else {
                        state
                    }
                );
                return self.doom(job.lsn, &message);
            }
        }
        scheduler.add(job.lsn, &job.tenant, job.priority, waiting);
        drop(scheduler);
        self.wake.notify_one();
        Ok(())
    }

    /// Fails a job that can never run.
    fn doom(&self, lsn: u64, message: &str) -> Result<(), NodeError> {
        let Some(job) = self.job_any(lsn)? else {
            return Ok(());
        };
        let result = self.failure(&job, "failed", "cancelled", message);
        self.db.finish_job(&result)?;
        self.metrics.finished(&result.state);
        self.settle(lsn, false);
        Ok(())
    }

    /// Makes a runnable job's action concrete: every `{"output_of": LSN}` becomes the
    /// output hash of that (succeeded) job and `after` is dropped, since it is met; the
    /// job's action id becomes the id of that descriptor, so the result cache answers
    /// work done before. Returns `true` when the cache did: the job is then finished.
    pub(crate) fn resolve_refs(&self, job: &mut JobRow) -> Result<bool, NodeError> {
        if !job.descriptor.contains("output_of") {
            return Ok(false);
        }
        let mut value: serde_json::Value = serde_json::from_str(&job.descriptor)
            .map_err(|e| NodeError::Internal(format!("stored action does not parse: {e}")))?;
        let replaced = substitute_refs(&mut value, |lsn| {
            self.db
                .job(&job.tenant, lsn)?
                .and_then(|dependency| dependency.result)
                .filter(|result| result.state == "succeeded")
                .map(|result| result.output)
                .ok_or_else(|| {
                    NodeError::Internal(format!("job {lsn} has no output to substitute"))
                })
        })?;
        if replaced == 0 {
            // "output_of" appeared only as text (an argument, say).
            return Ok(false);
        }
        if let Some(object) = value.as_object_mut() {
            object.remove("after");
        }
        let canonical = canonical_json(&value).map_err(|e| NodeError::Internal(e.0))?;
        let action = content_id(&value).map_err(|e| NodeError::Internal(e.0))?;
        job.descriptor = String::from_utf8(canonical).expect("canonical JSON is UTF-8");
        job.action = action;
        self.db.resolve_job(job.lsn, &job.descriptor, &action)?;
        let Some(mut cached) = self.db.cached_result(&job.tenant, &action)? else {
            return Ok(false);
        };
        cached.lsn = job.lsn;
        cached.cached = true;
        cached.attempts = job.attempts;
        cached.placement = None;
        cached.timing = None;
        self.db.finish_job(&cached)?;
        self.metrics.cache_answers.add(1);
        self.metrics.finished(&cached.state);
        self.settle(job.lsn, true);
        Ok(true)
    }

    /// Looks with `look` until `ready` holds for its answer or `deadline` passes (then
    /// answers the last look), looking again whenever a result is written and, with
    /// `recheck`, at least that often (for what changes without a result, such as a
    /// queue's counts after a submission).
    pub async fn when_finished<T, E>(
        &self,
        mut look: impl FnMut() -> Result<T, E>,
        ready: impl Fn(&T) -> bool,
        deadline: Option<tokio::time::Instant>,
        recheck: Option<Duration>,
    ) -> Result<T, E> {
        loop {
            // Registered before looking, so a result written in between still wakes us.
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let answer = look()?;
            let now = tokio::time::Instant::now();
            if ready(&answer) || deadline.is_some_and(|d| now >= d) {
                return Ok(answer);
            }
            let wake = match (deadline, recheck) {
                (Some(d), Some(r)) => Some(d.min(now + r)),
                (Some(d), None) => Some(d),
                (None, Some(r)) => Some(now + r),
                (None, None) => None,
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A job by LSN, whoever owns it (internal paths: the scheduler, the coordinator).
    pub(crate) fn job_any(&self, lsn: u64) -> Result<Option<JobRow>, NodeError> {
        // Tenants are checked at the API; internal paths look jobs up by LSN alone.
        Ok(self.db.job_by_lsn(lsn)?)
    }

    /// Removes a finished job from the scheduler and settles its dependents.
    fn settle(&self, lsn: u64, succeeded: bool) {
        let (runnable, doomed) = self.scheduler().finish(lsn, succeeded);
        self.sweep_checkpoints();
        self.announce(lsn);
        // The result is in the database: wake every long-poll to look again.
        self.finished.notify_waiters();
        if !runnable.is_empty() {
            self.wake.notify_one();
        }
        for dependent in doomed {
            let message = format!("dependency {lsn} did not succeed; this job never ran");
            if let Err(e) = self.doom(dependent, &message) {
                tracing::error!(lsn = dependent, error = %e, "failing a dependent job");
            }
        }
    }

    /// Deletes the blobs of checkpoints that were replaced or whose job finished,
    /// unless a tenant holds the same bytes or another job has them as its checkpoint.
    pub(crate) fn sweep_checkpoints(&self) {
        for hash in self.db.take_garbage() {
            if hash == HashHex::empty() {
                continue;
            }
            let removed = self
                .db
                .unreferenced(&hash)
                .map_err(|e| e.to_string())
                .and_then(|free| {
                    if free {
                        self.cas.remove(&hash).map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = removed {
                tracing::warn!(%hash, error = %e, "deleting an old checkpoint");
            }
        }
    }

    /// Queues the webhook deliveries a finished job means: `job.succeeded` or
    /// `job.failed`, and `queue.completed` when it was the last pending job of its
    /// queue. Costs nothing while no webhook wants such events.
    fn announce(&self, lsn: u64) {
        if !self.webhooks.wants_job_events() {
            return;
        }
        let Ok(Some(job)) = self.db.job_by_lsn(lsn) else {
            return;
        };
        let Some(result) = &job.result else {
            return;
        };
        let tenant = Some(job.tenant.as_str());
        let event = match result.state.as_str() {
            "succeeded" => "job.succeeded",
            "failed" => "job.failed",
            _ => "",
        };
        if !event.is_empty() && self.webhooks.wants(tenant, event) {
            let data = serde_json::json!({
                "lsn": lsn,
                "queue_id": job.queue_id,
                "action": result.action,
                "worker": result.worker,
                "state": result.state,
                "outcome": result.outcome,
                "exit_code": result.exit_code,
                "output": result.output,
                "node": result.node,
                "attempts": result.attempts,
                "cached": result.cached,
            });
            self.webhooks.emit(&self.db, tenant, event, data);
        }
        if let Some(queue) = job.queue_id
            && self.webhooks.wants(tenant, "queue.completed")
            && let Ok(counts) = self.db.queue_counts(queue)
        {
            let pending = counts
                .iter()
                .any(|(state, n)| (state == "queued" || state == "running") && *n > 0);
            let total = counts.iter().map(|(_, n)| n).sum();
            if !pending && self.webhooks.queue_completed_once(queue, total) {
                let counts: serde_json::Map<String, serde_json::Value> = counts
                    .into_iter()
                    .map(|(state, n)| (state, n.into()))
                    .collect();
                let data = serde_json::json!({"queue_id": queue, "counts": counts});
                self.webhooks
                    .emit(&self.db, tenant, "queue.completed", data);
            }
        }
    }

    /// A result for a job that ended without a run.
    pub(crate) fn failure(
        &self,
        job: &JobRow,
        state: &str,
        outcome: &str,
        message: &str,
    ) -> JobResult {
        JobResult {
            lsn: job.lsn,
            action: job.action,
            worker: job.worker,
            state: state.into(),
            outcome: outcome.into(),
            exit_code: None,
            message: Some(message.into()),
            output: HashHex::empty(),
            output_size: 0,
            stderr: HashHex::empty(),
            events: Vec::new(),
            usage: UsageJson::default(),
            node: self.config.id.clone(),
            attempts: job.attempts,
            cached: false,
            placement: None,
            timing: None,
        }
    }

    /// Runs one job on this (blocking) thread and records its result.
    fn execute(self: &Arc<Self>, lsn: u64, cancel: CancellationToken) {
        if let Err(e) = self.try_execute(lsn, cancel) {
            tracing::error!(lsn, error = %e, "a job could not be recorded; it stays pending until restart");
        }
    }

    fn try_execute(self: &Arc<Self>, lsn: u64, cancel: CancellationToken) -> Result<(), NodeError> {
        if let Some(mut job) = self.job_any(lsn)?
            && self.resolve_refs(&mut job)?
        {
            return Ok(());
        }
        let attempts = self.db.start_job(lsn)?;
        let Some(mut job) = self.job_any(lsn)? else {
            return Ok(());
        };
        job.attempts = attempts;
        let started = Instant::now();
        let run = self.run_action(&job, cancel);
        self.metrics.observe_run(started.elapsed());
        let (result, host_failure) = match run {
            Ok(result) => (result, false),
            Err(RunFailure::Host(message)) => (
                self.failure(&job, "failed", "trapped", &format!("host error: {message}")),
                true,
            ),
            Err(RunFailure::Final(message)) => {
                (self.failure(&job, "failed", "trapped", &message), false)
            }
        };
        self.complete(&job, result, host_failure, None)?;
        Ok(())
    }

    /// Records how an attempt ended: a retry (host failures, and guest failures when
    /// the queue asks for it, while attempts are left) or the final result.
    ///
    /// With `fence` (a coordinator's lease token attempt) nothing is written unless the
    /// job is still running that attempt; `Ok(false)` then says the result was stale.
    pub(crate) fn complete(
        &self,
        job: &JobRow,
        result: JobResult,
        host_failure: bool,
        fence: Option<u32>,
    ) -> Result<bool, NodeError> {
        let lsn = job.lsn;
        let attempts = fence.unwrap_or(job.attempts);
        let mut result = result;
        // A cancel asked for while this attempt ran is honoured: no retry, and an
        // attempt that failed on the host ends as cancelled.
        let cancelled = self.scheduler().cancel_requested(lsn);
        if cancelled && host_failure {
            let message = result.message.take().unwrap_or_default();
            result = JobResult {
                node: result.node,
                attempts: result.attempts,
                placement: result.placement,
                timing: result.timing,
                ..self.failure(
                    job,
                    "cancelled",
                    "cancelled",
                    &format!("cancelled ({message})"),
                )
            };
        }
        let guest_failure = result.state == "failed" && !host_failure;
        let retry = (host_failure || (guest_failure && job.retry_guest_failures))
            && !cancelled
            && attempts <= job.max_retries
            && !self.shutdown.is_cancelled();
        if retry {
            tracing::info!(lsn, attempts, outcome = %result.outcome, "retrying a failed job");
            match fence {
                Some(attempt) => {
                    if !self.db.requeue_job_fenced(lsn, attempt)? {
                        return Ok(false);
                    }
                }
                None => self.db.requeue_job(lsn)?,
            }
            if !self.scheduler().requeue(lsn) {
                // Cancelled in the instant between the check above and now.
                self.end_cancelled(lsn)?;
                return Ok(true);
            }
            self.wake.notify_one();
            return Ok(true);
        }
        match fence {
            Some(attempt) => {
                if !self.db.finish_job_fenced(&result, attempt)? {
                    return Ok(false);
                }
            }
            None => self.db.finish_job(&result)?,
        }
        self.metrics.finished(&result.state);
        self.metrics.fuel.add(result.usage.fuel);
        self.settle(lsn, result.state == "succeeded");
        Ok(true)
    }

    fn run_action(
        self: &Arc<Self>,
        job: &JobRow,
        cancel: CancellationToken,
    ) -> Result<JobResult, RunFailure> {
        let action: ActionDescriptor = serde_json::from_str(&job.descriptor)
            .map_err(|e| RunFailure::Final(format!("stored action does not parse: {e}")))?;
        let worker = self
            .worker(&job.tenant, &action.worker)
            .map_err(|e| RunFailure::Host(e.to_string()))?
            .ok_or_else(|| {
                RunFailure::Final(format!("worker {} is not registered", action.worker))
            })?;
        // A retry resumes from the checkpoint an earlier attempt saved.
        let resume = match job.checkpoint {
            Some(hash) => Some(
                self.cas
                    .read(&hash)
                    .map_err(|e| RunFailure::Host(format!("reading checkpoint {hash}: {e}")))?,
            ),
            None => None,
        };
        let keeper = Arc::new(LocalCheckpoints {
            node: self.clone(),
            lsn: job.lsn,
            written: Mutex::new((None, 0)),
        });
        let started_ms = RunTiming::now_ms();
        let report = self.run_prepared(
            &worker,
            &action,
            &HashMap::new(),
            resume,
            Some(keeper),
            cancel,
        )?;
        let timing = Some(RunTiming {
            started_ms,
            finished_ms: RunTiming::now_ms(),
        });
        let output = self.store_output(&job.tenant, &report.stdout)?;
        let stderr = self.store_output(&job.tenant, &report.stderr)?;
        let (state, exit_code, message) = settle_outcome(&report.outcome);
        Ok(JobResult {
            lsn: job.lsn,
            action: job.action,
            worker: job.worker,
            state: state.into(),
            outcome: report.outcome.name().into(),
            exit_code,
            message,
            output,
            output_size: report.stdout.len() as u64,
            stderr,
            events: events_json(&report),
            usage: usage_json(&report),
            node: self.config.id.clone(),
            attempts: job.attempts,
            cached: false,
            placement: None,
            timing,
        })
    }

    /// Runs an action of `worker` in the sandbox; every blob it names must be in this
    /// node's store.
    ///
    /// `inline` holds blobs already in memory (small inputs and files that came with a
    /// lease); the rest are read from the store.
    /// `resume` is what the guest's `checkpoint::load` returns until it saves one;
    /// `observer` sees its checkpoints as they are saved.
    pub(crate) fn run_prepared(
        &self,
        worker: &WorkerDescriptor,
        action: &ActionDescriptor,
        inline: &HashMap<HashHex, Arc<[u8]>>,
        resume: Option<Vec<u8>>,
        observer: Option<Arc<dyn RunObserver>>,
        cancel: CancellationToken,
    ) -> Result<wasmesh_runtime::RunReport, RunFailure> {
        let module_hash = worker.module;
        let module = self
            .sandbox
            .module(module_hash.to_blake3(), || {
                self.cas
                    .read(&module_hash)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| RuntimeError::Host(format!("reading module {module_hash}: {e}")))
            })
            .map_err(RunFailure::from)?;
        let stdin = match action.input {
            Some(hash) => match inline.get(&hash) {
                Some(bytes) => bytes.to_vec(),
                None => self
                    .cas
                    .read(&hash)
                    .map_err(|e| RunFailure::Host(format!("reading input {hash}: {e}")))?,
            },
            None => Vec::new(),
        };
        let files = |set: &BTreeMap<String, HashHex>| {
            set.iter()
                .map(|(name, hash)| {
                    let source = match inline.get(hash) {
                        Some(bytes) => FileSource::Bytes(bytes.clone()),
                        None => FileSource::Path(self.cas.path(hash)),
                    };
                    (name.clone(), source)
                })
                .collect()
        };
        let mut env: BTreeMap<&str, &str> = worker
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend(action.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut spec = RunSpec::new()
            .program(worker.name.clone())
            .args(action.args.iter().cloned())
            .stdin(stdin)
            .limits(worker.limits.narrow(&action.limits))
            .cancel(cancel);
        for (key, value) in env {
            spec = spec.env(key, value);
        }
        if let Some(bytes) = resume {
            spec = spec.checkpoint(bytes);
        }
        if let Some(observer) = observer {
            spec = spec.observer(observer);
        }
        if !worker.files.is_empty() {
            spec = spec.mount(Mount::files("/worker", files(&worker.files)));
        }
        if !action.files.is_empty() {
            spec = spec.mount(Mount::files("/input", files(&action.files)));
        }
        self.sandbox.run(&module, spec).map_err(RunFailure::from)
    }

    pub(crate) fn store_output(&self, tenant: &str, bytes: &[u8]) -> Result<HashHex, RunFailure> {
        let hash = self
            .cas
            .put_own(bytes)
            .map_err(|e| RunFailure::Host(format!("storing output: {e}")))?;
        self.db
            .own_blob(tenant, &hash, bytes.len() as u64)
            .map_err(|e| RunFailure::Host(format!("recording output: {e}")))?;
        self.metrics.cas_bytes_written.add(bytes.len() as u64);
        Ok(hash)
    }

    /// Cancels a job: a queued one never runs, a running one stops within a tick.
    pub fn cancel(&self, tenant: &str, lsn: u64) -> Result<(), NodeError> {
        let job = self
            .db
            .job(tenant, lsn)?
            .ok_or_else(|| NodeError::NotFound(format!("job {lsn} not found")))?;
        let cancelled = self.scheduler().cancel(lsn);
        match cancelled {
            Cancelled::NotStarted => {}
            Cancelled::Running => {
                // Kept in the journal, so a requeue (a host failure, no node able to
                // take it, a restart) can never run it again.
                self.db.request_cancel(lsn)?;
                if let Some(fleet) = &self.fleet
                    && let LeaseCancel::Withdrawn(token) = fleet.cancel(lsn)
                {
                    // The node never received it: it ends here.
                    let result =
                        self.failure(&job, "cancelled", "cancelled", "cancelled before it ran");
                    self.complete(&job, result, false, Some(token.attempt))?;
                }
                return Ok(());
            }
            Cancelled::NotPending => return Ok(()),
        }
        let result = self.failure(&job, "cancelled", "cancelled", "cancelled before it ran");
        self.db.finish_job(&result)?;
        self.metrics.finished("cancelled");
        self.settle(lsn, false);
        Ok(())
    }

    /// Changes the priority of a queued job.
    /// The priority is clamped to `PRIORITY_MIN..=PRIORITY_MAX`; returns the one set.
    pub fn set_priority(&self, tenant: &str, lsn: u64, priority: i64) -> Result<i64, NodeError> {
        self.db
            .job(tenant, lsn)?
            .ok_or_else(|| NodeError::NotFound(format!("job {lsn} not found")))?;
        let priority = scheduler::clamp_priority(priority);
        let mut scheduler = self.scheduler();
        if !scheduler.set_priority(lsn, priority) {
            return Err(NodeError::Conflict(
                "not_queued",
                format!("job {lsn} is no longer queued"),
            ));
        }
        self.db.set_priority(lsn, priority)?;
        drop(scheduler);
        self.wake.notify_one();
        Ok(priority)
    }

    /// Runs a failed or cancelled job again; returns its attempts so far.
    pub fn reschedule(&self, tenant: &str, lsn: u64) -> Result<u32, NodeError> {
        let job = self
            .db
            .job(tenant, lsn)?
            .ok_or_else(|| NodeError::NotFound(format!("job {lsn} not found")))?;
        if job.state != "failed" && job.state != "cancelled" {
            return Err(NodeError::Conflict(
                "not_rescheduable",
                format!(
                    "job {lsn} is {}; only failed or cancelled jobs can be rescheduled",
                    job.state
                ),
            ));
        }
        if job.attempts > job.max_retries {
            return Err(NodeError::Conflict(
                "retry_limit",
                format!(
                    "job {lsn} has used {} attempts of {}",
                    job.attempts,
                    job.max_retries + 1
                ),
            ));
        }
        self.db.requeue_job(lsn)?;
        let job = self
            .db
            .job(tenant, lsn)?
            .ok_or_else(|| NodeError::Internal("job vanished".into()))?;
        self.schedule(&job)?;
        Ok(job.attempts)
    }

    /// Cancels every queued and running job of a queue.
    pub fn cancel_queue(&self, tenant: &str, queue: u64) -> Result<(), NodeError> {
        self.db.set_queue_state(queue, "cancelled")?;
        for lsn in self.db.queue_pending(queue)? {
            self.cancel(tenant, lsn)?;
        }
        Ok(())
    }
}

/// A run's checkpoints are written to the store at most this often; a save that comes
/// sooner is kept in the guest (its `checkpoint::load` returns it) but not stored, so a
/// guest saving in a loop cannot fill the disk or hog the journal.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Checkpoints one run writes at most (an hour of one a second); later saves are not
/// stored.
pub const MAX_CHECKPOINT_WRITES: u32 = 3600;

/// Keeps a local run's checkpoints: a save goes to the store (an internal blob, not one
/// of the tenant's) and is recorded with the job, so an attempt after a crash resumes
/// from it. Only the latest is kept; the one it replaces is deleted.
struct LocalCheckpoints {
    node: Arc<Node>,
    lsn: u64,
    /// When the last checkpoint was written, and how many were.
    written: Mutex<(Option<Instant>, u32)>,
}

impl RunObserver for LocalCheckpoints {
    fn checkpoint(&self, bytes: &[u8]) {
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let (last, count) = &mut *written;
            if *count >= MAX_CHECKPOINT_WRITES
                || last.is_some_and(|at| at.elapsed() < CHECKPOINT_INTERVAL)
            {
                return;
            }
            *last = Some(Instant::now());
            *count += 1;
        }
        let saved = self
            .node
            .cas
            .put_own(bytes)
            .map_err(|e| e.to_string())
            .and_then(|hash| {
                self.node
                    .db
                    .save_checkpoint(self.lsn, &hash, None)
                    .map_err(|e| e.to_string())
            });
        self.node.sweep_checkpoints();
        if let Err(e) = saved {
            tracing::warn!(lsn = self.lsn, error = %e, "a checkpoint could not be kept");
        }
    }
}

/// The state, exit code and message of a result, from the run's outcome.
pub(crate) fn settle_outcome(outcome: &Outcome) -> (&'static str, Option<i32>, Option<String>) {
    match outcome {
        Outcome::Exited(0) => ("succeeded", Some(0), None),
        Outcome::Exited(code) => ("failed", Some(*code), None),
        Outcome::Cancelled => ("cancelled", None, None),
        Outcome::Trapped(message) => ("failed", None, Some(message.clone())),
        _ => ("failed", None, None),
    }
}

/// A run's events as JSON.
pub(crate) fn events_json(report: &wasmesh_runtime::RunReport) -> Vec<serde_json::Value> {
    report
        .events
        .iter()
        .map(|e| serde_json::to_value(e).expect("events serialize"))
        .collect()
}

/// A run's usage as the contract reports it.
pub(crate) fn usage_json(report: &wasmesh_runtime::RunReport) -> UsageJson {
    UsageJson {
        fuel: report.usage.fuel,
        wall_ms: report.usage.wall.as_millis() as u64,
        peak_memory_bytes: report.usage.peak_memory_bytes,
    }
}

/// Why a run produced no result of its own.
pub(crate) enum RunFailure {
    /// A host-side problem: retried.
    Host(String),
    /// A problem retrying cannot fix (an invalid module).
    Final(String),
}

impl From<RuntimeError> for RunFailure {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::InvalidModule(m) => RunFailure::Final(format!("invalid module: {m}")),
            RuntimeError::InvalidMount(m) => RunFailure::Final(format!("invalid files: {m}")),
            other => RunFailure::Host(other.to_string()),
        }
    }
}
