//! The work ahead, as the autoscaler sees it: the runnable jobs counted at their
//! workers' measured mean run times, what runs, and how long each queue's oldest
//! runnable job has waited.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Engine;
use crate::model::HashHex;

/// The run time a job of a worker that has not finished a run here yet is counted at.
pub const UNMEASURED_RUN_SECONDS: f64 = 1.0;

/// A moving average's weight of the newest run.
const GAIN: f64 = 0.2;

/// Each worker's mean run time, in seconds.
#[derive(Debug, Default)]
pub(super) struct RunTimes(std::sync::Mutex<HashMap<HashHex, f64>>);

impl RunTimes {
    /// Learns one run of `worker` that took `seconds`.
    pub(super) fn learn(&self, worker: HashHex, seconds: f64) {
        let mut means = self.0.lock().expect("run times");
        let mean = means.entry(worker).or_insert(seconds);
        *mean += GAIN * (seconds - *mean);
    }
}

/// What a coordinator adds to `/metrics` (its autoscaler's gauges), set once.
#[derive(Default)]
pub(super) struct ExtraMetrics(std::sync::OnceLock<Box<dyn Fn() -> String + Send + Sync>>);

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ExtraMetrics(set)"
        } else {
            "ExtraMetrics"
        })
    }
}

/// The work ahead at one moment.
#[derive(Debug, Default)]
pub struct WorkAhead {
    /// Runnable jobs.
    pub queued_jobs: usize,
    /// Their work in seconds: each at its worker's mean run time.
    pub work_seconds: f64,
    /// Jobs running.
    pub running_jobs: usize,
    /// The longest a runnable job of each queue (`None`: no queue) has waited.
    pub oldest_by_queue: Vec<(Option<u64>, Duration)>,
    /// The queues whose runnable jobs have deadlines: (queue, their work in seconds,
    /// the nearest deadline in Unix ms).
    pub deadlines_by_queue: Vec<(u64, f64, i64)>,
}

impl Engine {
    /// The work ahead now.
    pub fn work_ahead(&self) -> WorkAhead {
        self.work_ahead_for(|_| true)
    }

    /// The work ahead now that a node would take: only the jobs of workers `takes`
    /// accepts (a new node lacks the labels some workers require).
    pub fn work_ahead_for(&self, mut takes: impl FnMut(&HashHex) -> bool) -> WorkAhead {
        let (backlog, running_jobs) = {
            let scheduler = self.scheduler();
            (scheduler.backlog(Instant::now()), scheduler.running())
        };
        let means = self.run_times.0.lock().expect("run times");
        let mut ahead = WorkAhead {
            running_jobs,
            ..WorkAhead::default()
        };
        // Per queue: the longest wait, the work, the nearest deadline.
        let mut queues: HashMap<Option<u64>, (f64, f64, i64)> = HashMap::new();
        for (origin, waiting) in backlog.0 {
            if !takes(&origin.worker) {
                continue;
            }
            let mean = means
                .get(&origin.worker)
                .copied()
                .unwrap_or(UNMEASURED_RUN_SECONDS);
            let work = waiting.jobs as f64 * mean;
            ahead.queued_jobs += waiting.jobs;
            ahead.work_seconds += work;
            let queue = queues.entry(origin.queue).or_insert((0.0, 0.0, i64::MAX));
            queue.0 = queue.0.max(waiting.waited);
            queue.1 += work;
            queue.2 = queue.2.min(waiting.due);
        }
        for (queue, (waited, work, due)) in queues {
            ahead
                .oldest_by_queue
                .push((queue, Duration::from_secs_f64(waited)));
            if let Some(queue) = queue.filter(|_| due != i64::MAX) {
                ahead.deadlines_by_queue.push((queue, work, due));
            }
        }
        ahead
    }

    /// The labels worker `id` requires of a node, whoever registered it (a worker's id
    /// is its descriptor's hash: every tenant's copy says the same); `None` when it is
    /// not known.
    pub fn worker_requires(
        &self,
        id: &HashHex,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let text = self.store.unscoped().worker(id).ok()??;
        let descriptor: crate::model::WorkerDescriptor = serde_json::from_str(&text).ok()?;
        Some(descriptor.requires)
    }

    /// A queue's `target_wait_ms`, whoever's it is (for the autoscaler).
    pub fn queue_target_wait(&self, queue: u64) -> Option<Duration> {
        let row = self.store.unscoped().queue(queue).ok()??;
        row.target_wait_ms.map(Duration::from_millis)
    }

    /// Announces `queue.deadline_at_risk` to the queue's tenant's webhooks: its
    /// runnable jobs' work, at the slots there are, ends after the nearest deadline.
    pub fn deadline_at_risk(&self, queue: u64, data: serde_json::Value) {
        if !self.webhooks.wants_job_events() {
            return;
        }
        let Ok(Some(row)) = self.store.unscoped().queue(queue) else {
            return;
        };
        let tenant = Some(row.tenant.as_str());
        if self.webhooks.wants(tenant, "queue.deadline_at_risk") {
            self.webhooks.emit(tenant, "queue.deadline_at_risk", data);
        }
    }

    /// Text appended to `/metrics` (a coordinator's autoscaler sets it once).
    pub fn extra_metrics(&self) -> String {
        self.extra_metrics.0.get().map(|f| f()).unwrap_or_default()
    }

    /// Sets what [`Engine::extra_metrics`] appends; only the first call counts.
    pub fn set_extra_metrics(&self, render: Box<dyn Fn() -> String + Send + Sync>) {
        let _ = self.extra_metrics.0.set(render);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{engine_with, submit};
    use crate::engine::{Fence, LocalDriver, NodeConfig};
    use crate::model::JobState;

    /// Queued work counts each job at its worker's measured mean run time, learned as
    /// jobs finish and recalled from the usage ledger after a restart.
    #[test]
    fn queued_work_is_counted_at_measured_run_times_across_a_restart() {
        let (dir, engine, worker) = engine_with(std::sync::Arc::new(LocalDriver));
        submit(&engine, worker, &["noop"], None);
        let ahead = engine.work_ahead();
        assert_eq!(ahead.queued_jobs, 1);
        assert_eq!(
            ahead.work_seconds, UNMEASURED_RUN_SECONDS,
            "nothing measured yet"
        );
        // A run of 4 s finishes.
        let taken = engine.next_runnable().unwrap();
        let mut result = engine.failure(&taken.job, JobState::Succeeded, "exited", "");
        result.usage.wall_ms = 4_000;
        result.timing = Some(crate::model::RunTiming::default());
        engine.start_attempt(&taken.job).unwrap();
        engine
            .record(&taken.job, result, false, Fence::Local)
            .unwrap();
        for _ in 0..3 {
            submit(&engine, worker, &["args", "more"], None);
        }
        assert_eq!(engine.work_ahead().work_seconds, 12.0);
        drop(engine);
        // Restarted on the same journal: the ledger says 4 s a run.
        let config = NodeConfig::new(dir.path().to_path_buf());
        let engine =
            crate::engine::Engine::open_with(config, std::sync::Arc::new(LocalDriver)).unwrap();
        let ahead = engine.work_ahead();
        assert_eq!((ahead.queued_jobs, ahead.work_seconds), (3, 12.0));
    }
}
