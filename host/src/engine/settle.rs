//! How jobs end: results recorded under a fence (retry or finish), cancels, priority
//! changes, reschedules, dependents settled, and the webhook deliveries an end means.

use std::time::Instant;

use super::scheduler::Cancelled;
use super::{Engine, EngineError, Fence, deadlines, scheduler};
use crate::model::{JobResult, JobState, QueueState, outcome};
use crate::store::{JobRow, NewDelivery, Settle, now_ms};

/// How one attempt ended, for [`Engine::record_many`].
#[derive(Debug)]
pub struct Ended<'a> {
    /// The job, as the journal had it when the attempt was handed out.
    pub job: &'a JobRow,
    /// Its result.
    pub result: JobResult,
    /// True when it failed on the host (not the guest's fault): retried while
    /// attempts are left.
    pub host_failure: bool,
    /// Which attempt the result is for.
    pub fence: Fence,
}

impl Engine {
    /// Records how an attempt ended: a retry (host failures, and guest failures when
    /// the queue asks for it, while attempts are left) or the final result. Under a
    /// lease fence nothing is written unless the job still runs that attempt;
    /// `Ok(false)` then says the result was stale.
    pub fn record(
        &self,
        job: &JobRow,
        result: JobResult,
        host_failure: bool,
        fence: Fence,
    ) -> Result<bool, EngineError> {
        Ok(self.record_many(vec![Ended {
            job,
            result,
            host_failure,
            fence,
        }])?[0])
    }

    /// [`Engine::record`] for a batch (a node's report of several attempts): every
    /// write in one journal transaction; answers, in order, whether each was taken.
    pub fn record_many(&self, ended: Vec<Ended<'_>>) -> Result<Vec<bool>, EngineError> {
        // Decide each: retry or finish.
        let mut decided = Vec::with_capacity(ended.len());
        // Fuel each tenant with `max_fuel_per_hour` consumed in the last hour (read
        // once a batch, counting the batch's own attempts as they are decided).
        let mut fuel_used = std::collections::HashMap::new();
        for Ended {
            job,
            mut result,
            host_failure,
            fence,
        } in ended
        {
            let lsn = job.lsn;
            // Large events leave the journal row for the store, as outputs do.
            self.shelve_events(&job.tenant, &mut result)?;
            let attempts = match fence {
                Fence::Lease(attempt) => attempt,
                Fence::Local => job.attempts,
            };
            // Past its finish deadline, an attempt that did not succeed is the job's
            // last: it ends as the deadline's (a stop for the deadline is a cancel).
            let late = (result.state != JobState::Succeeded)
                .then(|| deadlines::late_to_finish(job, now_ms()))
                .flatten();
            if let Some(why) = &late {
                result.state = JobState::Failed;
                result.outcome = outcome::DEADLINE_EXCEEDED.into();
                result.message = Some(why.clone());
            }
            // A cancel asked for while this attempt ran is honoured: no retry, and an
            // attempt that failed on the host ends as cancelled.
            let cancelled = self.scheduler().cancel_requested(lsn);
            if cancelled && host_failure && late.is_none() {
                let message = result.message.take().unwrap_or_default();
                result = JobResult {
                    node: result.node,
                    attempts: result.attempts,
                    placement: result.placement,
                    timing: result.timing,
                    ..self.failure(
                        job,
                        JobState::Cancelled,
                        outcome::CANCELLED,
                        &format!("cancelled ({message})"),
                    )
                };
            }
            let guest_failure = result.state == JobState::Failed && !host_failure;
            let mut retry = (host_failure || (guest_failure && job.retry_guest_failures))
                && !cancelled
                && late.is_none()
                && attempts <= job.max_retries
                && !self.shutdown.is_cancelled();
            // Every attempt is billed (the ledger gets a row for a retried one too), and
            // no retry starts while its tenant is over its fuel quota: it ends here.
            if !result.cached
                && let Some(why) =
                    self.retry_refused(&job.tenant, result.usage.fuel, &mut fuel_used)?
                && retry
            {
                retry = false;
                result.message = Some(match result.message.take() {
                    Some(m) if !m.is_empty() => format!("{m} ({why})"),
                    _ => why,
                });
            }
            if retry {
                tracing::info!(lsn, attempts, outcome = %result.outcome, "retrying a failed job");
            }
            decided.push((job, retry, result, fence));
        }
        // A final result's webhook deliveries are written with it.
        let events: Vec<Vec<NewDelivery>> = decided
            .iter()
            .map(|(job, retry, result, _)| {
                if *retry {
                    Vec::new()
                } else {
                    self.job_events(job, result)
                }
            })
            .collect();
        let writes: Vec<(Settle<'_>, Fence)> = decided
            .iter()
            .zip(&events)
            .map(|((_, retry, result, fence), events)| {
                let settle = if *retry {
                    Settle::Requeue(result)
                } else {
                    Settle::Finish(result, events)
                };
                (settle, *fence)
            })
            .collect();
        let written = self.store.settle_jobs(&writes)?;
        drop(writes);
        // Then the scheduler, the metrics and the dependents.
        for ((job, retry, result, _), written) in decided.iter().zip(&written) {
            if !written {
                continue;
            }
            let (lsn, tenant) = (&job.lsn, job.tenant.as_str());
            self.job_ended(job, result, *retry);
            if *retry {
                if !self.scheduler().requeue(*lsn, Instant::now()) {
                    // Cancelled in the instant between the check above and now.
                    self.end_cancelled(*lsn)?;
                    continue;
                }
                self.wake.notify_one();
                continue;
            }
            self.metrics.finished(result.state);
            self.metrics.fuel.add(result.usage.fuel);
            if result.timing.is_some() && !result.cached {
                let seconds = result.usage.wall_ms as f64 / 1000.0;
                self.run_times.learn(job.worker, seconds);
            }
            if !result.cached {
                self.metrics
                    .tenant_usage(self.tenant_label(tenant), &result.usage);
            }
            self.settle(*lsn, result.state == JobState::Succeeded);
        }
        Ok(written)
    }

    /// The label a tenant's metrics carry: its name when it is a configured tenant (or
    /// the key-less `default` and `operator`), else `other`, so labels stay bounded.
    pub(super) fn tenant_label<'t>(&self, tenant: &'t str) -> &'t str {
        use crate::model::{DEFAULT_TENANT, OPERATOR_TENANT};
        if self.config.quotas.lists(tenant) || tenant == DEFAULT_TENANT || tenant == OPERATOR_TENANT
        {
            tenant
        } else {
            "other"
        }
    }

    /// Ends a job that was cancelled, or missed its deadline, before (another
    /// attempt of) it ran.
    pub(super) fn end_cancelled(&self, lsn: u64) -> Result<(), EngineError> {
        let Some(job) = self.job_any(lsn)? else {
            return Ok(());
        };
        let result = self.ended_early(&job);
        if !self.finish_now(&job, &result)? {
            // It ended already (through another coordinator sharing the journal).
            self.scheduler().forget(lsn, Instant::now());
            return Ok(());
        }
        self.job_ended(&job, &result, false);
        self.metrics.finished(result.state);
        self.settle(lsn, false);
        Ok(())
    }

    /// Removes a finished job from the scheduler and settles its dependents.
    pub(super) fn settle(&self, lsn: u64, succeeded: bool) {
        let (_, doomed) = self.scheduler().finish(lsn, succeeded, Instant::now());
        self.sweep_checkpoints();
        self.announce(lsn);
        // The result is in the database: wake every long-poll to look again.
        self.results_changed();
        // Its dependents may be runnable now, and its tenant below its `max_running`.
        self.wake.notify_one();
        for dependent in doomed {
            let message = format!("dependency {lsn} did not succeed; this job never ran");
            if let Err(e) = self.doom(dependent, &message) {
                tracing::error!(lsn = dependent, error = %e, "failing a dependent job");
            }
        }
    }

    /// Moves a result's events to a blob of `tenant`'s when they are larger than
    /// [`crate::model::INLINE_EVENTS_BYTES`] as JSON: the journal row keeps only the
    /// hash, and the bytes count against the tenant's store (and go with the result's
    /// retention, like an output).
    pub(super) fn shelve_events(
        &self,
        tenant: &str,
        result: &mut JobResult,
    ) -> Result<(), EngineError> {
        if result.events.is_empty() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&result.events).expect("events serialize");
        if bytes.len() <= crate::model::INLINE_EVENTS_BYTES {
            return Ok(());
        }
        let hash = self.cas.put_own(&bytes)?;
        self.store
            .tenant(tenant)
            .own_blob(&hash, bytes.len() as u64)?;
        self.metrics.cas_bytes_written.add(bytes.len() as u64);
        result.events.clear();
        result.events_blob = Some(hash);
        Ok(())
    }

    /// A result's events, wherever they are kept (inline, or in its events blob).
    pub fn result_events(&self, result: &JobResult) -> Vec<serde_json::Value> {
        match result.events_blob {
            Some(hash) => self
                .cas
                .read(&hash)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default(),
            None => result.events.clone(),
        }
    }

    /// The webhook deliveries a finished job means (`job.succeeded` or `job.failed`,
    /// and `job.deadline_exceeded`), to be written with its result, so that a crash
    /// between the two loses neither. None while no webhook wants them.
    pub(super) fn job_events(&self, job: &JobRow, result: &JobResult) -> Vec<NewDelivery> {
        self.job_events_of(&job.tenant, job.lsn, job.queue_id, result)
    }

    /// [`Engine::job_events`] of job `lsn` of `tenant` in `queue_id`.
    pub(super) fn job_events_of(
        &self,
        tenant: &str,
        lsn: u64,
        queue_id: Option<u64>,
        result: &JobResult,
    ) -> Vec<NewDelivery> {
        let tenant = Some(tenant);
        let event = match result.state {
            JobState::Succeeded => "job.succeeded",
            JobState::Failed => "job.failed",
            _ => "",
        };
        let late = result.outcome == outcome::DEADLINE_EXCEEDED;
        let mut rows = Vec::new();
        for event in [event, if late { "job.deadline_exceeded" } else { "" }] {
            if event.is_empty() || !self.webhooks.wants(tenant, event) {
                continue;
            }
            let data = serde_json::json!({
                "lsn": lsn,
                "queue_id": queue_id,
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
            rows.extend(self.webhooks.rows_for(tenant, event, &data));
        }
        rows
    }

    /// Writes a job's final result under the local fence, with the webhook deliveries
    /// its end means; false when it had ended already (nothing written).
    pub(super) fn finish_now(&self, job: &JobRow, result: &JobResult) -> Result<bool, EngineError> {
        let events = self.job_events(job, result);
        Ok(self.store.finish_job(result, &events, Fence::Local)?)
    }

    /// Wakes the deliverer for the job's deliveries (written with its result, and
    /// woken only now, after its end was published, so the change feed shows the end
    /// before any delivery attempt), and queues `queue.completed` when the finished
    /// job `lsn` was the last pending job of its queue. Costs nothing while no webhook
    /// wants job or queue events.
    pub(super) fn announce(&self, lsn: u64) {
        if !self.webhooks.wants_job_events() {
            return;
        }
        self.webhooks.queued();
        let Ok(Some(job)) = self.store.unscoped().job(lsn) else {
            return;
        };
        let tenant = Some(job.tenant.as_str());
        if let Some(queue) = job.queue_id
            && self.webhooks.wants(tenant, "queue.completed")
            && let Ok(counts) = self.store.tenant(&job.tenant).queue_counts(queue)
        {
            let pending = counts
                .iter()
                .any(|(state, n)| !state.is_finished() && *n > 0);
            let total = counts.iter().map(|(_, n)| n).sum();
            if !pending && self.webhooks.queue_completed_once(queue, total) {
                let counts: serde_json::Map<String, serde_json::Value> = counts
                    .into_iter()
                    .map(|(state, n)| (state.as_str().to_string(), n.into()))
                    .collect();
                let data = serde_json::json!({"queue_id": queue, "counts": counts});
                self.webhooks.emit(tenant, "queue.completed", data);
            }
        }
    }

    /// [`JobResult::without_run`] for `job`, as this engine's node.
    pub fn failure(
        &self,
        job: &JobRow,
        state: JobState,
        outcome: &str,
        message: &str,
    ) -> JobResult {
        JobResult {
            lsn: job.lsn,
            action: job.action,
            worker: job.worker,
            node: self.config.id.clone(),
            attempts: job.attempts,
            ..JobResult::without_run(state, outcome, message)
        }
    }

    /// Cancels a job: a queued one never runs, a running one stops within a tick.
    pub fn cancel(&self, tenant: &str, lsn: u64) -> Result<(), EngineError> {
        let job = self
            .store
            .tenant(tenant)
            .job(lsn)?
            .ok_or_else(|| EngineError::NotFound(format!("job {lsn} not found")))?;
        self.stop_job(&job)
    }

    /// Stops a pending job (a cancel, or its deadline): a queued one ends now, a
    /// running one within a tick, its attempt's end written by whoever runs it. How
    /// it ends is [`Engine::ended_early`]'s.
    pub(super) fn stop_job(&self, job: &JobRow) -> Result<(), EngineError> {
        let lsn = job.lsn;
        // Bound first: the scheduler's lock must be let go before the job is ended.
        let cancelled = self.scheduler().cancel(lsn);
        match cancelled {
            Cancelled::NotStarted => self.end_cancelled(lsn),
            Cancelled::Running => {
                // Kept in the journal, so a requeue (a host failure, no node able to
                // take it, a restart) can never run it again.
                self.store.request_cancel(lsn)?;
                if let Some(fence) = self.driver.cancel(lsn) {
                    // It never reached a runner: it ends here.
                    self.record(job, self.ended_early(job), false, fence)?;
                }
                Ok(())
            }
            // Pending through another coordinator sharing the journal: the cancel is
            // kept in the journal, whose notice reaches the coordinator holding it.
            Cancelled::NotPending
                if self.store.is_shared()
                    && matches!(job.state, JobState::Queued | JobState::Running) =>
            {
                Ok(self.store.request_cancel(lsn)?)
            }
            Cancelled::NotPending => Ok(()),
        }
    }

    /// How a job stopped before (another attempt of) it ran ends: past its deadline,
    /// `deadline_exceeded`; else cancelled.
    fn ended_early(&self, job: &JobRow) -> JobResult {
        match deadlines::late(job, now_ms()) {
            Some(why) => self.deadline_failure(job, &why),
            None => self.failure(
                job,
                JobState::Cancelled,
                outcome::CANCELLED,
                "cancelled before it ran",
            ),
        }
    }

    /// Changes the priority of a queued job.
    /// The priority is clamped to `PRIORITY_MIN..=PRIORITY_MAX`; returns the one set.
    pub fn set_priority(&self, tenant: &str, lsn: u64, priority: i64) -> Result<i64, EngineError> {
        let job = self
            .store
            .tenant(tenant)
            .job(lsn)?
            .ok_or_else(|| EngineError::NotFound(format!("job {lsn} not found")))?;
        let priority = scheduler::clamp_priority(priority);
        let mut scheduler = self.scheduler();
        if !scheduler.set_priority(lsn, priority) {
            return Err(EngineError::Conflict(
                "not_queued",
                format!("job {lsn} is no longer queued"),
            ));
        }
        self.store.set_priority(lsn, priority)?;
        drop(scheduler);
        self.job_queued(&job, Some(priority));
        self.wake.notify_one();
        Ok(priority)
    }

    /// Runs a failed or cancelled job again; returns its attempts so far.
    pub fn reschedule(&self, tenant: &str, lsn: u64) -> Result<u32, EngineError> {
        let job = self
            .store
            .tenant(tenant)
            .job(lsn)?
            .ok_or_else(|| EngineError::NotFound(format!("job {lsn} not found")))?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(EngineError::Conflict(
                "not_rescheduable",
                format!(
                    "job {lsn} is {}; only failed or cancelled jobs can be rescheduled",
                    job.state
                ),
            ));
        }
        if job.attempts > job.max_retries {
            return Err(EngineError::Conflict(
                "retry_limit",
                format!(
                    "job {lsn} has used {} attempts of {}",
                    job.attempts,
                    job.max_retries + 1
                ),
            ));
        }
        // Admitted exactly as a submission is: it is one more job to run.
        self.admit_jobs(tenant, 1)?;
        self.store.requeue_job(lsn)?;
        let job = self
            .store
            .tenant(tenant)
            .job(lsn)?
            .ok_or_else(|| EngineError::Internal("job vanished".into()))?;
        self.schedule(&job)?;
        self.job_queued(&job, None);
        Ok(job.attempts)
    }

    /// Cancels every queued and running job of a queue.
    pub fn cancel_queue(&self, tenant: &str, queue: u64) -> Result<(), EngineError> {
        if !self
            .store
            .tenant(tenant)
            .set_queue_state(queue, QueueState::Cancelled)?
        {
            return Err(EngineError::NotFound(format!("queue {queue} not found")));
        }
        self.queue_changed(tenant, queue, QueueState::Cancelled.as_str());
        // Those not started first: a running job stopped first frees its slot, which
        // could start one of the others before its cancel.
        let (running, waiting): (Vec<u64>, Vec<u64>) = self
            .store
            .tenant(tenant)
            .queue_pending(queue)?
            .into_iter()
            .partition(|lsn| self.scheduler().is_running(*lsn));
        for lsn in waiting.into_iter().chain(running) {
            self.cancel(tenant, lsn)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::QueuePolicy;
    use super::super::testing::{TENANT, engine, submit};
    use super::*;

    fn state(engine: &Engine, lsn: u64) -> JobState {
        engine.job_any(lsn).unwrap().unwrap().state
    }

    #[test]
    fn a_job_cancelled_after_it_was_taken_never_runs_when_it_is_put_back() {
        let (_dir, engine, worker) = engine();
        let lsn = submit(&engine, worker, &["noop"], None);
        let taken = engine.next_runnable().expect("the job is runnable");
        assert_eq!(taken.job.lsn, lsn);
        engine.cancel(TENANT, lsn).unwrap();
        assert!(taken.cancel.is_cancelled(), "the runner is told");
        assert!(
            engine.store().cancel_requested(lsn).unwrap(),
            "the cancel is kept in the journal"
        );
        // No runner could take it after all (a driver puts it back): it ends here.
        engine.requeue(&[lsn]);
        assert_eq!(state(&engine, lsn), JobState::Cancelled);
        assert!(engine.next_runnable().is_none());
    }

    #[test]
    fn host_failures_are_retried_until_the_attempts_are_used() {
        let (_dir, engine, worker) = engine();
        let policy = QueuePolicy {
            id: engine
                .store()
                .tenant(TENANT)
                .create_queue(
                    None,
                    &crate::store::QueueSpec {
                        max_retries: 1,
                        ..Default::default()
                    },
                )
                .unwrap(),
            max_retries: 1,
            retry_guest_failures: false,
            priority: 0,
            deadlines: Default::default(),
        };
        let lsn = submit(&engine, worker, &["noop"], Some(policy));
        for attempt in 1..=2 {
            let mut taken = engine.next_runnable().expect("runnable again");
            taken.job.attempts = engine.start_attempt(&taken.job).unwrap();
            assert_eq!(taken.job.attempts, attempt);
            let failed = engine.failure(&taken.job, JobState::Failed, outcome::TRAPPED, "host");
            assert!(
                engine
                    .record(&taken.job, failed, true, Fence::Local)
                    .unwrap()
            );
            let expected = if attempt == 1 {
                JobState::Queued
            } else {
                JobState::Failed
            };
            assert_eq!(state(&engine, lsn), expected, "after attempt {attempt}");
        }
        let job = engine.job_any(lsn).unwrap().unwrap();
        assert_eq!(job.attempts, 2, "one first attempt and one retry");
        assert!(engine.next_runnable().is_none());
        // Every change of the job reached the feed, in order, for its tenant only.
        let mine = |c: &crate::engine::feed::Change| c.tenant.as_deref() == Some(TENANT);
        let changes = engine.feed().after(0, mine).changes;
        let states: Vec<serde_json::Value> = changes
            .iter()
            .map(|c| serde_json::from_str::<serde_json::Value>(&c.data).unwrap())
            .filter(|c| c["kind"] == "job" && c["lsn"] == lsn)
            .map(|c| c["state"].clone())
            .collect();
        assert_eq!(
            states,
            ["queued", "running", "queued", "running", "failed"],
            "{changes:?}"
        );
        let others = engine
            .feed()
            .after(0, |c| c.tenant.as_deref() == Some("someone-else"));
        assert!(others.changes.is_empty());
        // A guest failure is final (the queue does not retry them).
        let guest = submit(&engine, worker, &["exit", "3"], Some(policy));
        let mut taken = engine.next_runnable().unwrap();
        taken.job.attempts = engine.start_attempt(&taken.job).unwrap();
        let failed = engine.failure(&taken.job, JobState::Failed, "exited", "exit 3");
        assert!(
            engine
                .record(&taken.job, failed, false, Fence::Local)
                .unwrap()
        );
        assert_eq!(state(&engine, guest), JobState::Failed);
    }

    #[test]
    fn a_result_under_a_stale_lease_fence_changes_nothing() {
        let (_dir, engine, worker) = engine();
        let lsn = submit(&engine, worker, &["noop"], None);
        let taken = engine.next_runnable().unwrap();
        let attempts = engine.lease(&[(lsn, "n1")]).unwrap();
        assert_eq!(attempts, [Some(1)]);
        let job = engine.job_any(lsn).unwrap().unwrap();
        assert_eq!(job.lease_node.as_deref(), Some("n1"));
        let mut done = engine.failure(&taken.job, JobState::Succeeded, "exited", "");
        done.attempts = 1;
        assert!(
            !engine
                .record(&job, done.clone(), false, Fence::Lease(2))
                .unwrap(),
            "another attempt's result is refused"
        );
        assert_eq!(state(&engine, lsn), JobState::Running);
        assert!(engine.record(&job, done, false, Fence::Lease(1)).unwrap());
        assert_eq!(state(&engine, lsn), JobState::Succeeded);
        // And once finished, the same fence is stale too.
        let again = engine.failure(&job, JobState::Failed, outcome::TRAPPED, "late");
        assert!(!engine.record(&job, again, true, Fence::Lease(1)).unwrap());
        assert_eq!(state(&engine, lsn), JobState::Succeeded);
    }
}
