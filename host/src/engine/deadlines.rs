//! Deadlines: a job that has not started by its `start_by_ms`, or not finished by its
//! `finish_by_ms`, ends with outcome `deadline_exceeded` (state `failed`): a queued one
//! never runs, a running one is stopped like a cancel (on a coordinator: through its
//! lease) and its attempt's end is written as the deadline's. Retries count against
//! the same deadlines. A watch of the pending jobs' deadlines, nearest first, wakes at
//! each; the checks where jobs are taken to run and where attempts end catch what
//! falls between two wakes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Engine, EngineError};
use crate::model::{JobResult, JobState, outcome};
use crate::store::{JobRow, now_ms};

/// The pending jobs' deadlines: (Unix ms, LSN), nearest first.
#[derive(Debug, Default)]
pub(super) struct Watch {
    due: Mutex<BinaryHeap<Reverse<(i64, u64)>>>,
    wake: Notify,
}

impl Watch {
    fn next(&self) -> Option<i64> {
        self.due.lock().expect("deadlines").peek().map(|r| r.0.0)
    }

    /// Takes every deadline at or before `now`.
    fn take_due(&self, now: i64) -> Vec<u64> {
        let mut due = self.due.lock().expect("deadlines");
        let mut lsns = Vec::new();
        while let Some(Reverse((at, lsn))) = due.peek().copied()
            && at <= now
        {
            due.pop();
            lsns.push(lsn);
        }
        lsns
    }
}

/// Why `job` is late at `now` (Unix ms), if it is: past its finish deadline, or past
/// its start deadline before any attempt started.
pub(super) fn late(job: &JobRow, now: i64) -> Option<String> {
    late_to_finish(job, now).or_else(|| {
        let by = job
            .start_by_ms
            .filter(|by| job.attempts == 0 && now >= *by)?;
        Some(format!(
            "did not start within its deadline ({} ms after its submission)",
            by - job.created_ms
        ))
    })
}

/// Why `job` is late at `now`, if it is past its finish deadline.
pub(super) fn late_to_finish(job: &JobRow, now: i64) -> Option<String> {
    let by = job.finish_by_ms.filter(|by| now >= *by)?;
    Some(format!(
        "did not finish within its deadline ({} ms after its submission)",
        by - job.created_ms
    ))
}

impl Engine {
    /// Watches a pending job's deadlines (when it is scheduled, and at start-up).
    pub(super) fn watch_deadlines(&self, job: &JobRow) {
        let times = [job.start_by_ms, job.finish_by_ms];
        if times.iter().all(Option::is_none) {
            return;
        }
        let mut due = self.deadlines.due.lock().expect("deadlines");
        for at in times.into_iter().flatten() {
            due.push(Reverse((at, job.lsn)));
        }
        drop(due);
        self.deadlines.wake.notify_one();
    }

    /// The result of a job that missed its deadline: `failed`, `deadline_exceeded`.
    pub(super) fn deadline_failure(&self, job: &JobRow, why: &str) -> JobResult {
        self.failure(job, JobState::Failed, outcome::DEADLINE_EXCEEDED, why)
    }

    /// Ends each job whose deadline comes, as it comes, until the engine stops.
    pub(super) async fn enforcing_deadlines(self: Arc<Self>) {
        loop {
            let wait = self
                .deadlines
                .next()
                .map_or(Duration::from_secs(3600), |at| {
                    Duration::from_millis((at - now_ms()).max(0) as u64)
                });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.deadlines.wake.notified() => continue,
                () = self.shutdown.cancelled() => return,
            }
            let due = self.deadlines.take_due(now_ms());
            if due.is_empty() {
                continue;
            }
            let engine = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for lsn in due {
                    if let Err(e) = engine.enforce_deadline(lsn) {
                        tracing::error!(lsn, error = %e, "ending a job past its deadline");
                    }
                }
            })
            .await;
        }
    }

    /// Ends job `lsn` if it is pending and late: a queued one now, a running one
    /// within a tick.
    fn enforce_deadline(&self, lsn: u64) -> Result<(), EngineError> {
        let Some(job) = self.job_any(lsn)? else {
            return Ok(());
        };
        if job.state.is_finished() {
            return Ok(());
        }
        let Some(why) = late(&job, now_ms()) else {
            // A start deadline of a job that has started.
            return Ok(());
        };
        tracing::info!(lsn, why, "a job missed its deadline");
        self.stop_job(&job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempts: u32, start_by: Option<i64>, finish_by: Option<i64>) -> JobRow {
        JobRow {
            lsn: 1,
            tenant: "t".into(),
            queue_id: None,
            action: crate::model::HashHex::empty(),
            worker: crate::model::HashHex::empty(),
            descriptor: "{}".into(),
            priority: 0,
            state: JobState::Queued,
            attempts,
            max_retries: 3,
            retry_guest_failures: false,
            result: None,
            lease_node: None,
            checkpoint: None,
            after: Vec::new(),
            created_ms: 1_000,
            finished_ms: None,
            start_by_ms: start_by,
            finish_by_ms: finish_by,
        }
    }

    /// The clock is a parameter: a start deadline binds only before the first attempt,
    /// a finish deadline always, each from its moment on.
    #[test]
    fn a_job_is_late_from_its_deadline_on() {
        let waiting = job(0, Some(1_300), None);
        assert_eq!(late(&waiting, 1_299), None);
        let why = late(&waiting, 1_300).unwrap();
        assert!(
            why.contains("did not start") && why.contains("300 ms"),
            "{why}"
        );
        assert_eq!(
            late(&job(1, Some(1_300), None), 5_000),
            None,
            "it started in time"
        );
        let bounded = job(2, Some(1_300), Some(2_000));
        assert_eq!(late(&bounded, 1_999), None);
        let why = late(&bounded, 2_000).unwrap();
        assert!(
            why.contains("did not finish") && why.contains("1000 ms"),
            "{why}"
        );
        assert_eq!(late_to_finish(&job(0, Some(1_300), None), 9_999), None);
        assert_eq!(late(&job(0, None, None), i64::MAX), None);
    }

    #[test]
    fn the_watch_hands_out_what_is_due_nearest_first() {
        let watch = Watch::default();
        for (at, lsn) in [(300, 3), (100, 1), (200, 2), (100, 4)] {
            watch.due.lock().unwrap().push(Reverse((at, lsn)));
        }
        assert_eq!(watch.next(), Some(100));
        assert_eq!(watch.take_due(99), Vec::<u64>::new());
        assert_eq!(watch.take_due(200), [1, 4, 2]);
        assert_eq!(watch.next(), Some(300));
    }
}
