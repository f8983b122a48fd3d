//! The engine: jobs' rules, whoever runs them. It owns the journal ([`Store`]), the
//! blob files ([`Cas`]), the in-memory scheduler (a cache of the journal), the
//! sandbox that validates modules, webhooks, metrics and recordings.
//!
//! Requests reach it through entry points that take the caller's tenant (`submit`,
//! `cancel`, `set_priority`, `reschedule`, `register_worker`, ...). Drivers run its jobs
//! through a narrow seam: [`Engine::next_runnable`] (already resolved, cache answers
//! and unrunnable jobs settled inside), [`Engine::record`] / [`Engine::record_many`]
//! (a result under a [`Fence`]), [`Engine::requeue`] and [`Engine::withdraw`]. The
//! local driver is `crate::run`; a coordinator's is `crate::cluster::driver`. The
//! engine knows neither: what it needs of a driver is the [`Driver`] trait.

pub mod backlog;
mod checkpoints;
mod config;
mod deadlines;
mod error;
pub mod feed;
pub mod gc;
pub mod metrics;
pub mod quota;
pub mod record;
mod runnable;
pub mod scheduler;
mod settle;
mod shared;
pub use shared::Take;
mod submit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wasmesh_runtime::{CancellationToken, Config as SandboxConfig, Sandbox};

use crate::cas::Cas;
use crate::model::{HashHex, JobState, WorkerDescriptor, outcome};
pub use crate::store::Fence;
use crate::store::{JobRow, Journal, Store, now_ms};
use crate::webhooks::Webhooks;
pub use checkpoints::{CHECKPOINT_INTERVAL, MAX_CHECKPOINT_WRITES};
pub use config::NodeConfig;
pub use error::EngineError;
use metrics::Metrics;
pub use runnable::Runnable;
use scheduler::Scheduler;
pub use settle::Ended;
pub use submit::{ActionSubmission, QueuePolicy, Registered, Submitted};

/// The most retries a queue may ask for (`max_retries`): every attempt is billed,
/// and a job that fails each time costs its tenant that many runs.
pub const MAX_RETRIES: u32 = 25;

/// What the engine needs of whoever runs its jobs.
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// At start-up, a job the journal says was running (on `job.lease_node`, for a
    /// coordinator): true when the driver keeps it running (a coordinator restores its
    /// lease and waits for the node to renew it); false and the engine requeues it.
    fn restore(&self, job: &JobRow) -> bool;

    /// A running job was cancelled (its cancellation token is already cancelled).
    /// `Some(fence)` when it never reached a runner and ends now, under that fence.
    fn cancel(&self, lsn: u64) -> Option<Fence>;

    /// How many nodes the driver has in each state (`ready`, `busy`, `draining`,
    /// `unhealthy`), for `/metrics`; a node's own slots are no fleet.
    fn nodes_by_state(&self) -> Vec<(&'static str, usize)> {
        Vec::new()
    }
}

/// The driver of a node's own slots: nothing survives a restart, and a cancelled run
/// stops through its cancellation token.
#[derive(Debug)]
pub struct LocalDriver;

impl Driver for LocalDriver {
    fn restore(&self, _job: &JobRow) -> bool {
        false
    }

    fn cancel(&self, _lsn: u64) -> Option<Fence> {
        None
    }
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    config: NodeConfig,
    store: Arc<Store>,
    cas: Cas,
    sandbox: Sandbox,
    metrics: Metrics,
    recorder: record::Recorder,
    webhooks: Arc<Webhooks>,
    /// Every change, for `GET /compute/events` (shared with the webhooks' deliverer).
    feed: Arc<feed::Feed>,
    scheduler: Mutex<Scheduler>,
    /// Notified when a job becomes runnable.
    wake: Notify,
    /// Notified whenever a job's result is written (for long-polls).
    finished: Notify,
    workers: Mutex<HashMap<(String, HashHex), Arc<WorkerDescriptor>>>,
    /// The submit rate limit's buckets.
    limiter: quota::RateLimiter,
    /// What each tenant is uploading now (`admit_staging`).
    staging: Arc<quota::Places>,
    /// Event streams open per tenant (`admit_stream`).
    streams: Arc<quota::Places>,
    /// Results written (here, or through another coordinator sharing the journal):
    /// with the change feed's latest id, the generation of what a long-poll sees.
    results: std::sync::atomic::AtomicU64,
    /// Each queue's status as last computed, and the generation it was computed at,
    /// shared by every stream and long-poll watching that queue.
    queue_status: Mutex<HashMap<u64, (u64, serde_json::Value)>>,
    /// Held by the one garbage collection running.
    gc: Mutex<()>,
    /// When storage-time was last charged (Unix ms).
    storage_charged: Mutex<Option<i64>>,
    driver: Arc<dyn Driver>,
    /// The pending jobs' deadlines.
    deadlines: deadlines::Watch,
    /// Each worker's mean run time (the autoscaler's measure of queued work).
    run_times: backlog::RunTimes,
    /// What a coordinator adds to `/metrics`.
    extra_metrics: backlog::ExtraMetrics,
    shutdown: CancellationToken,
    started: Instant,
}

impl Engine {
    /// Opens the data directory, recovers pending jobs and returns the engine of a
    /// node running its jobs on its own slots. Call [`Engine::start`] to begin.
    pub fn open(config: NodeConfig) -> anyhow::Result<Arc<Self>> {
        Self::open_with(config, Arc::new(LocalDriver))
    }

    /// Nodes by state, as the driver counts them (none on a lone node).
    pub fn nodes_by_state(&self) -> Vec<(&'static str, usize)> {
        self.driver.nodes_by_state()
    }

    /// Opens the engine for `driver` (a coordinator passes its fleet).
    pub fn open_with(config: NodeConfig, driver: Arc<dyn Driver>) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let journal = config
            .journal
            .clone()
            .unwrap_or_else(|| Journal::Sqlite(config.data_dir.join("wasmesh.db")));
        let store =
            Arc::new(Store::open_journal(&journal, config.holding).context("opening the journal")?);
        let cas_dir = (config.cas_dir.clone()).unwrap_or_else(|| config.data_dir.join("cas"));
        let cas = Cas::open(&cas_dir, config.max_blob_bytes).context("opening the store")?;
        let sandbox = Sandbox::new(SandboxConfig {
            limits: config.limits,
            max_instances: (config.slots as u32 * 2).max(8),
            cache_dir: Some(config.data_dir.join("modules")),
            scratch_dir: Some(config.data_dir.join("scratch")),
            ..SandboxConfig::default()
        })
        .context("starting the sandbox")?;
        let webhooks = Arc::new(
            Webhooks::open(store.clone(), config.webhooks.clone()).context("loading webhooks")?,
        );
        let scheduler = Scheduler::new(config.quotas.clone(), config.fair_share_half_life);
        let recorder = record::Recorder::open(config.data_dir.join("recordings"));
        let feed = Arc::new(feed::Feed::starting_now());
        let deliveries = feed.clone();
        webhooks.on_change(crate::webhooks::ChangeSink(Box::new(
            move |tenant, change| deliveries.publish(Some(tenant), &change),
        )));
        let engine = Arc::new(Self {
            config,
            store,
            cas,
            sandbox,
            metrics: Metrics::default(),
            recorder,
            webhooks,
            feed,
            scheduler: Mutex::new(scheduler),
            wake: Notify::new(),
            finished: Notify::new(),
            workers: Mutex::new(HashMap::new()),
            limiter: quota::RateLimiter::default(),
            staging: Arc::default(),
            streams: Arc::default(),
            results: Default::default(),
            queue_status: Mutex::default(),
            gc: Mutex::new(()),
            storage_charged: Mutex::new(None),
            driver,
            deadlines: deadlines::Watch::default(),
            run_times: backlog::RunTimes::default(),
            extra_metrics: backlog::ExtraMetrics::default(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
        });
        engine.recover().context("recovering pending jobs")?;
        Ok(engine)
    }

    /// Charges the fair share with the run time the usage ledger holds for the last
    /// ten half-lives (older counts less than 0.1 %), each minute decayed by its age.
    fn recall_usage(&self) -> Result<(), EngineError> {
        let half_life_ms = self.config.fair_share_half_life.as_millis().max(1) as f64;
        let now_ms = now_ms();
        let since = now_ms.saturating_sub((half_life_ms * 10.0) as i64);
        let now = Instant::now();
        let mut scheduler = self.scheduler();
        for (tenant, minute_ms, wall_ms) in self.store.unscoped().run_time_by_minute(since)? {
            // The minute's middle stands for its jobs.
            let age = (now_ms - minute_ms - 30_000).max(0) as f64;
            let seconds = wall_ms as f64 / 1000.0 * 0.5f64.powf(age / half_life_ms);
            scheduler.charge_history(&tenant, seconds, now);
        }
        drop(scheduler);
        // Each worker's mean run time over the last hour, so the autoscaler measures
        // queued work from the start.
        for (worker, mean_ms) in self
            .store
            .unscoped()
            .mean_run_by_worker(now_ms - 3_600_000)?
        {
            if let Ok(worker) = worker.parse() {
                self.run_times.learn(worker, mean_ms / 1000.0);
            }
        }
        Ok(())
    }

    fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the scheduler from the journal. A job that was running when the
    /// process stopped had its attempt counted when it started; it is queued again, or
    /// failed as `node_lost` once its retries are used up, unless the driver keeps it
    /// running (a coordinator's restored lease).
    /// On a shared journal the running jobs are other coordinators' leases as much as
    /// this one's: a node renewing one with this coordinator hands it over
    /// (`cluster::driver::adopt`), and the leader requeues those of nodes nobody hears.
    fn recover(&self) -> Result<(), EngineError> {
        let mut requeued = 0;
        for job in self.store.unscoped().pending_jobs()? {
            if job.state != JobState::Running || self.store.is_shared() {
                continue;
            }
            if self.driver.restore(&job) {
                self.scheduler()
                    .add_running(job.lsn, &job.tenant, job.priority, Instant::now());
                self.watch_deadlines(&job);
                if self.store.cancel_requested(job.lsn)? {
                    // Cancelled before the restart: the runner is told again.
                    self.scheduler().cancel(job.lsn);
                    self.driver.cancel(job.lsn);
                }
                continue;
            }
            if self.store.cancel_requested(job.lsn)? {
                self.end_cancelled(job.lsn)?;
            } else if job.attempts > job.max_retries {
                let message = "the node stopped while running it and no retries are left";
                let result = self.failure(&job, JobState::Failed, outcome::NODE_LOST, message);
                self.finish_now(&job, &result)?;
            } else {
                self.store.requeue_job(job.lsn)?;
                requeued += 1;
            }
        }
        // In LSN order, so every dependency is scheduled before its dependents.
        for job in self.store.unscoped().pending_jobs()? {
            if job.state != JobState::Queued {
                continue;
            }
            if self.store.cancel_requested(job.lsn)? {
                // Cancelled while it was being placed or retried: it never runs.
                self.end_cancelled(job.lsn)?;
            } else {
                self.schedule(&job)?;
            }
        }
        self.recall_usage()?;
        if requeued > 0 {
            tracing::info!(
                requeued,
                "requeued jobs that were running when the node stopped"
            );
        }
        Ok(())
    }

    /// Starts the engine's own loops: idle queues and idempotency keys expire, webhook
    /// deliveries go out (on a shared journal, these run on its leader only), and a
    /// shared journal's notifications are heard. Drivers start their own.
    pub fn start(self: &Arc<Self>) {
        let engine = self.clone();
        tokio::spawn(async move { engine.housekeeping().await });
        let engine = self.clone();
        tokio::spawn(async move { engine.collecting().await });
        tokio::spawn(self.clone().enforcing_deadlines());
        self.webhooks.start(self.shutdown.clone());
        self.start_listening();
    }

    /// Stops handing out work: every loop watching [`Engine::stopping`] ends.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The journal.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The blob files.
    pub fn cas(&self) -> &Cas {
        &self.cas
    }

    /// The sandbox modules are compiled and run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Counters for /metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Active recordings.
    pub fn recorder(&self) -> &record::Recorder {
        &self.recorder
    }

    /// Webhook subscriptions and deliveries.
    pub fn webhooks(&self) -> &Webhooks {
        &self.webhooks
    }

    /// The change feed.
    pub fn feed(&self) -> &feed::Feed {
        &self.feed
    }

    /// How long since the engine started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// (queued, running) job counts.
    pub fn load(&self) -> (usize, usize) {
        let s = self.scheduler();
        (s.queued(), s.running())
    }

    /// Whether it accepts work.
    pub fn ready(&self) -> bool {
        !self.shutdown.is_cancelled()
    }

    /// Cancelled when the engine stops.
    pub fn stopping(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Notified when a job becomes runnable (drivers wait on it).
    pub fn runnable(&self) -> &Notify {
        &self.wake
    }

    /// The fair share now by tenant label (unlisted tenants summed as `other`):
    /// (label, jobs running, charge in slot-seconds).
    pub fn shares(&self) -> Vec<(String, usize, f64)> {
        let mut by_label: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
        for (tenant, running, charge) in self.scheduler().shares(Instant::now()) {
            let entry = by_label
                .entry(self.tenant_label(&tenant).to_string())
                .or_default();
            entry.0 += running;
            entry.1 += charge;
        }
        by_label
            .into_iter()
            .map(|(label, (running, charge))| (label, running, charge))
            .collect()
    }

    /// Whether a job is waiting to run (without taking it).
    pub fn has_runnable(&self) -> bool {
        self.scheduler().has_runnable()
    }

    /// The journal's housekeeping, every quarter of the shortest retention (at most
    /// every 30 s): idle queues expire; idempotency keys, old results (retired),
    /// cancelled queues and old webhook deliveries go.
    async fn housekeeping(self: Arc<Self>) {
        let config = &self.config;
        let shortest = [
            config.queue_idle,
            config.idempotency_retention,
            config.result_retention,
            config.delivery_retention,
        ]
        .into_iter()
        .min()
        .unwrap_or(config.queue_idle);
        let every = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.shutdown.cancelled() => return,
            }
            if !self.store.leads() {
                continue;
            }
            let engine = self.clone();
            let swept = tokio::task::spawn_blocking(move || engine.sweep_journal(now_ms())).await;
            if let Ok(Err(e)) = swept {
                tracing::warn!(error = %e, "journal housekeeping");
            }
        }
    }

    /// Measures the store at start, then collects garbage every `--gc-interval`
    /// (never when it is zero).
    async fn collecting(self: Arc<Self>) {
        let engine = self.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || engine.measure_store()).await {
            tracing::warn!(error = %e, "measuring the store");
        }
        let every = self.config.gc_interval;
        if every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.shutdown.cancelled() => return,
            }
            if !self.store.leads() {
                continue;
            }
            let engine = self.clone();
            let swept = tokio::task::spawn_blocking(move || engine.collect_garbage(false)).await;
            if let Ok(Err(e)) = swept {
                tracing::warn!(error = %e, "garbage collection");
            }
        }
    }

    /// One round of housekeeping as of `now_ms`.
    fn sweep_journal(&self, now_ms: i64) -> Result<(), EngineError> {
        let before = |retention: Duration| now_ms - retention.as_millis() as i64;
        let config = &self.config;
        let unscoped = self.store.unscoped();
        self.store
            .idempotency_expire(before(config.idempotency_retention))?;
        for id in unscoped.idle_queues(before(config.queue_idle))? {
            tracing::info!(queue = id, "expiring an idle queue");
            unscoped.expire_queue(id)?;
        }
        let retired = unscoped.retire_finished(before(config.result_retention))?;
        let queues = unscoped.delete_ended_queues(before(config.result_retention))?;
        let deliveries = unscoped.delete_old_deliveries(before(config.delivery_retention))?;
        // Recordings are kept as long as results are.
        let recordings = self
            .recorder
            .expire(std::time::SystemTime::now() - config.result_retention);
        if recordings > 0 {
            tracing::info!(recordings, "recordings past their retention deleted");
        }
        if retired + queues + deliveries > 0 {
            tracing::info!(retired, queues, deliveries, "retention");
        }
        self.metrics.retired.add(retired as u64);
        self.charge_storage(now_ms)
    }

    /// Charges every tenant the storage-time of the bytes it holds now, for the time
    /// since the last charge (the first call only starts the clock).
    fn charge_storage(&self, now_ms: i64) -> Result<(), EngineError> {
        let since = {
            let mut charged = self
                .storage_charged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match charged.replace(now_ms) {
                Some(since) if now_ms > since => since,
                _ => return Ok(()),
            }
        };
        let elapsed_ms = (now_ms - since) as u128;
        let unscoped = self.store.unscoped();
        let charges: Vec<(String, u64)> = unscoped
            .held_by_tenant()?
            .into_iter()
            .map(|(tenant, bytes)| (tenant, (bytes as u128 * elapsed_ms / 1000) as u64))
            .filter(|(_, byte_seconds)| *byte_seconds > 0)
            .collect();
        unscoped.charge_storage(&charges, now_ms)?;
        Ok(())
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

    /// Wakes every long-poll and stream to look again: a result was written.
    pub(super) fn results_changed(&self) {
        self.results
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.finished.notify_waiters();
    }

    /// What changed so far: moves whenever a job's, a queue's or a node's state
    /// changes (the change feed) or a result is written.
    pub fn generation(&self) -> u64 {
        self.feed.latest() + self.results.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Queue `queue`'s status, computed by `compute` at most once a generation
    /// however many watch it (a journal scan of its jobs: run off the async workers).
    pub fn queue_status<E>(
        &self,
        queue: u64,
        compute: impl FnOnce() -> Result<serde_json::Value, E>,
    ) -> Result<serde_json::Value, E> {
        let generation = self.generation();
        if let Some((at, status)) = self.queue_status_memo().get(&queue)
            && *at == generation
        {
            return Ok(status.clone());
        }
        self.metrics.queue_counts.add(1);
        let status = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(compute)?
            }
            _ => compute()?,
        };
        let mut memo = self.queue_status_memo();
        if memo.len() >= 10_000 {
            memo.clear();
        }
        memo.insert(queue, (generation, status.clone()));
        Ok(status)
    }

    fn queue_status_memo(&self) -> MutexGuard<'_, HashMap<u64, (u64, serde_json::Value)>> {
        self.queue_status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job by LSN, whoever owns it: the engine's own loops and its drivers, which
    /// hold LSNs the scheduler or a lease gave them.
    pub fn job_any(&self, lsn: u64) -> Result<Option<JobRow>, EngineError> {
        Ok(self.store.unscoped().job(lsn)?)
    }
}

/// What the engine's and its drivers' unit tests share: an engine on a fresh data
/// directory with the test guest registered as a worker of tenant `t`.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{ActionSubmission, Driver, Engine, LocalDriver, NodeConfig, Submitted};
    use crate::model::{HashHex, WorkerDescriptor, canonical_json};

    /// The tenant the helpers act as.
    pub const TENANT: &str = "t";

    /// An engine (its directory lives as long as the guard) and the worker id.
    pub fn engine_with(driver: Arc<dyn Driver>) -> (tempfile::TempDir, Arc<Engine>, HashHex) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(dir.path().to_path_buf());
        config.slots = 1;
        let engine = Engine::open_with(config, driver).unwrap();
        let wasm = wasmesh_test_support::guest_bytes(wasmesh_test_support::TEST_GUEST);
        let module = engine.cas().put_own(&wasm).unwrap();
        engine
            .store()
            .tenant(TENANT)
            .own_blob(&module, wasm.len() as u64)
            .unwrap();
        let value = serde_json::json!({"name": "test-guest", "module": module});
        let canonical = String::from_utf8(canonical_json(&value).unwrap()).unwrap();
        let id = HashHex::of(canonical.as_bytes());
        let descriptor: WorkerDescriptor = serde_json::from_value(value).unwrap();
        engine
            .register_worker(TENANT, id, &descriptor, &canonical)
            .unwrap();
        (dir, engine, id)
    }

    /// [`engine_with`] the local driver.
    pub fn engine() -> (tempfile::TempDir, Arc<Engine>, HashHex) {
        engine_with(Arc::new(LocalDriver))
    }

    /// Submits one action of `worker` with these arguments; returns its LSN.
    pub fn submit(
        engine: &Engine,
        worker: HashHex,
        args: &[&str],
        queue: Option<super::QueuePolicy>,
    ) -> u64 {
        let action = serde_json::json!({"worker": worker, "args": args});
        let submission = ActionSubmission::parse(action).unwrap();
        match engine
            .submit(TENANT, vec![submission], None, queue)
            .unwrap()
        {
            Submitted::Jobs(jobs) => jobs[0].0,
            Submitted::Needs(needs) => panic!("needs {needs:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TENANT, engine, submit};
    use super::*;
    use crate::model::DeliveryState;

    #[test]
    fn housekeeping_retires_old_results_and_deletes_what_is_done() {
        let (_dir, engine, worker) = engine();
        let lsn = submit(&engine, worker, &["noop"], None);
        let taken = engine.next_runnable().unwrap();
        let done = engine.failure(&taken.job, JobState::Succeeded, "exited", "");
        engine
            .record(&taken.job, done, false, Fence::Local)
            .unwrap();
        let tenant = engine.store().tenant(TENANT);
        assert_eq!(tenant.completed(None).unwrap(), [lsn]);
        let queue = tenant
            .create_queue(None, &crate::store::QueueSpec::default())
            .unwrap();
        tenant
            .set_queue_state(queue, crate::model::QueueState::Cancelled)
            .unwrap();
        engine
            .store()
            .insert_deliveries(&[(
                "msg_1".into(),
                "wh_1".into(),
                "job.succeeded".into(),
                "{}".into(),
            )])
            .unwrap();
        engine
            .store()
            .end_attempt("msg_1", DeliveryState::Delivered, 1, 0, Some(200), None)
            .unwrap();

        // Within the retentions nothing goes.
        engine.sweep_journal(now_ms()).unwrap();
        assert_eq!(tenant.completed(None).unwrap(), [lsn]);
        assert!(tenant.queue(queue).unwrap().is_some());
        assert_eq!(engine.store().deliveries_of("wh_1", 10).unwrap().len(), 1);

        // A week and a bit later: the result is retired (still readable), the
        // cancelled queue and the finished delivery are gone.
        let later = now_ms() + engine.config().result_retention.as_millis() as i64 + 1000;
        engine.sweep_journal(later).unwrap();
        assert!(tenant.completed(None).unwrap().is_empty());
        assert!(tenant.result(lsn).unwrap().is_some());
        assert!(tenant.queue(queue).unwrap().is_none());
        assert!(engine.store().deliveries_of("wh_1", 10).unwrap().is_empty());
        assert_eq!(engine.metrics().retired.get(), 1);
    }
}
