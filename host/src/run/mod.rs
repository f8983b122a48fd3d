//! The local driver: a node's own slots, each a blocking thread running
//! `Sandbox::run` for the engine's next runnable job. Leased work from a coordinator
//! (`crate::cluster::member`) runs on the same slots through [`Runner::run_prepared`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmesh_runtime::{
    CancellationToken, FileSource, Mount, Outcome, RunObserver, RunSpec, RuntimeError,
};

use crate::engine::{
    CHECKPOINT_INTERVAL, Engine, EngineError, Fence, MAX_CHECKPOINT_WRITES, Runnable,
};
use crate::model::{
    ActionDescriptor, HashHex, JobResult, JobState, RunTiming, UsageJson, WorkerDescriptor, outcome,
};

/// How long a slot waits before taking a job again after the journal failed.
const JOURNAL_RETRY: Duration = Duration::from_millis(250);

/// A node's slots and the dispatcher that fills them.
#[derive(Debug)]
pub struct Runner {
    engine: Arc<Engine>,
    slots: Arc<Semaphore>,
}

impl Runner {
    /// The slots of `engine`'s node (`config.slots` of them).
    pub fn new(engine: Arc<Engine>) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(engine.config().slots.max(1)));
        Arc::new(Self { engine, slots })
    }

    /// The engine it runs jobs for.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Starts the dispatcher that hands the engine's runnable jobs to free slots.
    pub fn start(self: &Arc<Self>) {
        let runner = self.clone();
        tokio::spawn(async move { runner.dispatch().await });
    }

    /// Waits up to `grace` for running jobs to finish (the engine has stopped handing
    /// out work). Jobs still running after that are requeued at the next start, their
    /// attempt counted; queued jobs simply stay queued in the journal.
    pub async fn drain(&self, grace: Duration) {
        let all = u32::try_from(self.engine.config().slots.max(1)).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("jobs still running at shutdown will be requeued at the next start");
        }
    }

    /// The slots actions run in (leased work takes them too).
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    async fn dispatch(self: Arc<Self>) {
        let stopping = self.engine.stopping().clone();
        loop {
            // Wait for work before taking a slot: an idle dispatcher holds none, so
            // leased work from a coordinator can use every slot.
            loop {
                let notified = self.engine.runnable().notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.engine.has_runnable() {
                    break;
                }
                tokio::select! {
                    () = notified => {}
                    () = stopping.cancelled() => return,
                }
            }
            let permit = tokio::select! {
                permit = self.slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
                () = stopping.cancelled() => return,
            };
            let runner = self.clone();
            tokio::task::spawn_blocking(move || {
                // Taken on the blocking thread: resolving references and reading the
                // job are journal reads.
                if let Some(runnable) = runner.engine.next_runnable() {
                    runner.execute(runnable);
                }
                drop(permit);
            });
        }
    }

    /// Runs one job on this (blocking) thread and records its result.
    ///
    /// A journal that does not answer (its database away) neither loses the job nor
    /// fails it: one not started yet stays queued, a result waits until it is taken.
    fn execute(self: &Arc<Self>, runnable: Runnable) {
        let lsn = runnable.job.lsn;
        if let Err(e) = self.try_execute(runnable) {
            tracing::error!(lsn, error = %e, "a job could not be recorded; it stays pending until restart");
        }
    }

    fn try_execute(self: &Arc<Self>, runnable: Runnable) -> Result<(), EngineError> {
        let Runnable {
            mut job,
            worker,
            action,
            cancel,
        } = runnable;
        job.attempts = match self.engine.start_attempt(&job) {
            Ok(attempt) => attempt,
            Err(EngineError::Journal(e)) => {
                // Not started: it stays queued, taken again once the journal answers.
                tracing::warn!(
                    lsn = job.lsn,
                    error = e,
                    "the journal is unavailable; the job stays queued"
                );
                self.engine.requeue(&[job.lsn]);
                std::thread::sleep(JOURNAL_RETRY);
                self.engine.runnable().notify_one();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let started = Instant::now();
        let run = self.run_job(&job, &worker, &action, cancel);
        self.engine.metrics().observe_run(started.elapsed());
        let (result, host_failure) = match run {
            Ok(result) => (result, false),
            Err(RunFailure::Host(message)) => (
                self.engine.failure(
                    &job,
                    JobState::Failed,
                    outcome::TRAPPED,
                    &format!("host error: {message}"),
                ),
                true,
            ),
            Err(RunFailure::Final(message)) => (
                self.engine
                    .failure(&job, JobState::Failed, outcome::TRAPPED, &message),
                false,
            ),
        };
        match self
            .engine
            .record(&job, result.clone(), host_failure, Fence::Local)
        {
            Err(EngineError::Journal(e)) => {
                self.record_when_the_journal_answers(&job, result, host_failure, &e)
            }
            other => other.map(|_| ()),
        }
    }

    /// Records a result the journal failed to take, again and again (backing off up
    /// to 5 s) until it answers or the node stops (the job is then requeued at the
    /// next start). Under the attempt's fence: if the failed write had in fact been
    /// committed (its answer lost), the job no longer runs that attempt and nothing is
    /// written twice.
    fn record_when_the_journal_answers(
        &self,
        job: &crate::store::JobRow,
        result: JobResult,
        host_failure: bool,
        first: &str,
    ) -> Result<(), EngineError> {
        tracing::warn!(
            lsn = job.lsn,
            error = first,
            "the journal is unavailable; the result will be recorded when it answers"
        );
        let mut pause = JOURNAL_RETRY;
        while !self.engine.stopping().is_cancelled() {
            std::thread::sleep(pause);
            let fence = Fence::Lease(job.attempts);
            match self.engine.record(job, result.clone(), host_failure, fence) {
                Err(EngineError::Journal(_)) => pause = (pause * 2).min(Duration::from_secs(5)),
                other => return other.map(|_| ()),
            }
        }
        Err(EngineError::Journal(first.to_string()))
    }

    fn run_job(
        self: &Arc<Self>,
        job: &crate::store::JobRow,
        worker: &WorkerDescriptor,
        action: &ActionDescriptor,
        cancel: CancellationToken,
    ) -> Result<JobResult, RunFailure> {
        // A retry resumes from the checkpoint an earlier attempt saved.
        let resume = match job.checkpoint {
            Some(hash) => Some(
                self.engine
                    .cas()
                    .read(&hash)
                    .map_err(|e| RunFailure::Host(format!("reading checkpoint {hash}: {e}")))?,
            ),
            None => None,
        };
        let keeper = Arc::new(LocalCheckpoints {
            engine: self.engine.clone(),
            lsn: job.lsn,
            written: Mutex::new((None, 0)),
        });
        let started_ms = RunTiming::now_ms();
        let report = self.run_prepared(
            worker,
            action,
            &HashMap::new(),
            resume,
            Some(keeper),
            cancel,
        )?;
        let timing = RunTiming {
            started_ms,
            finished_ms: RunTiming::now_ms(),
        };
        let output = self.store_output(&job.tenant, &report.stdout)?;
        let stderr = self.store_output(&job.tenant, &report.stderr)?;
        Ok(JobResult {
            lsn: job.lsn,
            action: job.action,
            worker: job.worker,
            node: self.engine.config().id.clone(),
            attempts: job.attempts,
            ..result_of(&report, output, stderr, timing)
        })
    }

    /// Runs an action of `worker` in the sandbox; every blob it names must be in this
    /// node's store.
    ///
    /// `inline` holds blobs already in memory (small inputs and files that came with a
    /// lease); the rest are read from the store.
    /// `resume` is what the guest's `checkpoint::load` returns until it saves one;
    /// `observer` sees its checkpoints as they are saved.
    pub fn run_prepared(
        &self,
        worker: &WorkerDescriptor,
        action: &ActionDescriptor,
        inline: &HashMap<HashHex, Arc<[u8]>>,
        resume: Option<Vec<u8>>,
        observer: Option<Arc<dyn RunObserver>>,
        cancel: CancellationToken,
    ) -> Result<wasmesh_runtime::RunReport, RunFailure> {
        let module_hash = worker.module;
        let module =
            self.engine
                .sandbox()
                .module(module_hash.to_blake3(), || {
                    self.engine.cas().map(&module_hash).map_err(|e| {
                        RuntimeError::Host(format!("reading module {module_hash}: {e}"))
                    })
                })
                .map_err(RunFailure::from)?;
        let stdin = match action.input {
            Some(hash) => match inline.get(&hash) {
                Some(bytes) => bytes.to_vec(),
                None => self
                    .engine
                    .cas()
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
                        None => FileSource::Path(self.engine.cas().path(hash)),
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
        self.engine
            .sandbox()
            .run(&module, spec)
            .map_err(RunFailure::from)
    }

    /// Stores a run's output as the tenant's blob.
    fn store_output(&self, tenant: &str, bytes: &[u8]) -> Result<HashHex, RunFailure> {
        let hash = self
            .engine
            .cas()
            .put_own(bytes)
            .map_err(|e| RunFailure::Host(format!("storing output: {e}")))?;
        self.engine
            .store()
            .tenant(tenant)
            .own_blob(&hash, bytes.len() as u64)
            .map_err(|e| RunFailure::Host(format!("recording output: {e}")))?;
        self.engine
            .metrics()
            .cas_bytes_written
            .add(bytes.len() as u64);
        Ok(hash)
    }
}

/// Keeps a local run's checkpoints: a save goes to the store (an internal blob, not one
/// of the tenant's) and is recorded with the job, so an attempt after a crash resumes
/// from it. Only the latest is kept; the one it replaces is deleted.
struct LocalCheckpoints {
    engine: Arc<Engine>,
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
            .engine
            .cas()
            .put_own(bytes)
            .map_err(|e| e.to_string())
            .and_then(|hash| {
                self.engine
                    .save_checkpoint(self.lsn, &hash, Fence::Local)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            tracing::warn!(lsn = self.lsn, error = %e, "a checkpoint could not be kept");
        }
    }
}

/// The result of a run whose stdout and stderr are stored as `output` and `stderr`,
/// the job's identity left for the caller (the job's on a node, the lease's at the
/// coordinator).
pub fn result_of(
    report: &wasmesh_runtime::RunReport,
    output: HashHex,
    stderr: HashHex,
    timing: RunTiming,
) -> JobResult {
    let (state, exit_code, message) = settle_outcome(&report.outcome);
    JobResult {
        outcome: report.outcome.name().into(),
        exit_code,
        message,
        output,
        output_size: report.stdout.len() as u64,
        stderr,
        events: events_json(report),
        usage: usage_json(report),
        timing: Some(timing),
        ..JobResult::without_run(state, "", "")
    }
}

/// The state, exit code and message of a result, from the run's outcome.
fn settle_outcome(outcome: &Outcome) -> (JobState, Option<i32>, Option<String>) {
    match outcome {
        Outcome::Exited(0) => (JobState::Succeeded, Some(0), None),
        Outcome::Exited(code) => (JobState::Failed, Some(*code), None),
        Outcome::Cancelled => (JobState::Cancelled, None, None),
        Outcome::Trapped(message) => (JobState::Failed, None, Some(message.clone())),
        _ => (JobState::Failed, None, None),
    }
}

/// A run's events as JSON.
fn events_json(report: &wasmesh_runtime::RunReport) -> Vec<serde_json::Value> {
    report
        .events
        .iter()
        .map(|e| serde_json::to_value(e).expect("events serialize"))
        .collect()
}

/// A run's usage as the contract reports it.
fn usage_json(report: &wasmesh_runtime::RunReport) -> UsageJson {
    let wall_ms = report.usage.wall.as_millis() as u64;
    let peak = report.usage.peak_memory_bytes;
    UsageJson {
        fuel: report.usage.fuel,
        wall_ms,
        peak_memory_bytes: peak,
        memory_byte_seconds: (u128::from(peak) * u128::from(wall_ms) / 1000)
            .try_into()
            .unwrap_or(u64::MAX),
    }
}

/// Why a run produced no result of its own.
#[derive(Debug)]
pub enum RunFailure {
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
