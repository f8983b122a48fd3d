//! Every attempt at a job: opened when it is handed out (a lease, or a local slot
//! taking it), closed with its outcome in the transaction that settles it. A job's
//! result is its last attempt's; these rows keep the ones before (which node, which
//! fencing token, how each ended) for people finding out what happened.

use super::db::{Db, DbResult, params};

use super::{Store, StoreResult, now_ms};
use crate::model::{Attempt, JobResult};

/// Opens attempt `attempt` of job `lsn` on `node` (in the caller's transaction).
pub(super) fn open(conn: &Db, lsn: u64, attempt: u32, node: &str) -> DbResult<()> {
    conn.execute(
        "INSERT INTO attempts (lsn, attempt, node, started_ms) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (lsn, attempt) DO UPDATE SET node = excluded.node, \
         started_ms = excluded.started_ms, ended_ms = NULL, outcome = NULL, exit_code = NULL, \
         message = NULL, retried = 0",
        params![lsn as i64, attempt, node, now_ms()],
    )?;
    Ok(())
}

/// Forgets an attempt that never reached its node (its lease was withdrawn).
pub(super) fn forget(conn: &Db, lsn: u64, attempt: u32) -> DbResult<()> {
    conn.execute(
        "DELETE FROM attempts WHERE lsn = ?1 AND attempt = ?2",
        params![lsn as i64, attempt],
    )?;
    Ok(())
}

/// Closes the job's open attempt with how it ended; `retried` when the job goes
/// back to the queue after it. A job with no open attempt (it never ran) is left as
/// it is.
pub(super) fn close(conn: &Db, result: &JobResult, retried: bool) -> DbResult<()> {
    close_open(
        conn,
        result.lsn,
        &result.outcome,
        result.exit_code,
        result.message.as_deref(),
        retried,
    )
}

/// Closes the job's open attempt, if it has one.
pub(super) fn close_open(
    conn: &Db,
    lsn: u64,
    outcome: &str,
    exit_code: Option<i32>,
    message: Option<&str>,
    retried: bool,
) -> DbResult<()> {
    conn.execute(
        "UPDATE attempts SET ended_ms = ?2, outcome = ?3, exit_code = ?4, message = ?5, \
         retried = ?6 WHERE lsn = ?1 AND ended_ms IS NULL",
        params![lsn as i64, now_ms(), outcome, exit_code, message, retried],
    )?;
    Ok(())
}

impl Store {
    /// Every attempt at one of `tenant`'s jobs, first first (none for another's).
    pub(super) fn attempts(&self, tenant: &str, lsn: u64) -> StoreResult<Vec<Attempt>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT a.attempt, a.node, a.started_ms, a.ended_ms, a.outcome, a.exit_code, \
             a.message, a.retried FROM attempts a JOIN jobs j ON j.lsn = a.lsn \
             WHERE a.lsn = ?1 AND j.tenant = ?2 ORDER BY a.attempt",
            params![lsn as i64, tenant],
            |row| {
                Ok(Attempt {
                    attempt: row.get(0)?,
                    node: row.get(1)?,
                    started_ms: row.get(2)?,
                    ended_ms: row.get(3)?,
                    outcome: row.get(4)?,
                    exit_code: row.get(5)?,
                    message: row.get(6)?,
                    retried: row.get(7)?,
                })
            },
        )?;
        Ok(rows)
    }

    /// Up to `limit` of `tenant`'s jobs that wait for its job `lsn` (their `after` or
    /// an `output_of` names it), by LSN.
    pub(super) fn dependents(&self, tenant: &str, lsn: u64, limit: usize) -> StoreResult<Vec<u64>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT d.lsn FROM job_deps d JOIN jobs j ON j.lsn = d.lsn \
             WHERE d.after = ?1 AND j.tenant = ?2 ORDER BY d.lsn LIMIT ?3",
            params![lsn as i64, tenant, limit as i64],
            |row| row.get::<i64>(0),
        )?;
        Ok(rows.into_iter().map(|l| l as u64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HashHex, JobState};
    use crate::store::{Fence, NewJob, Settle};

    fn one_job(store: &Store) -> u64 {
        let job = NewJob {
            tenant: "a",
            queue_id: None,
            action: HashHex::of(b"action"),
            worker: HashHex::of(b"worker"),
            descriptor: "{}",
            priority: 0,
            max_retries: 3,
            retry_guest_failures: false,
            after: &[],
            deadlines: Default::default(),
        };
        store.insert_jobs(&[(job, None)]).unwrap()[0]
    }

    fn ended(lsn: u64, state: JobState, outcome: &str) -> JobResult {
        JobResult {
            lsn,
            ..JobResult::without_run(state, outcome, "why")
        }
    }

    /// The attempts follow the job's fence: a withdrawn lease leaves no attempt, a
    /// stale holder's report closes nothing, a restart closes the open one as lost.
    #[test]
    fn attempts_follow_leases_settles_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let lsn = one_job(&store);

        let [Some(attempt)] = store.lease_jobs(&[(lsn, "n1")]).unwrap()[..] else {
            panic!("one lease")
        };
        assert!(store.unlease_job(lsn, attempt).unwrap());
        assert!(store.attempts("a", lsn).unwrap().is_empty(), "withdrawn");

        let [Some(first)] = store.lease_jobs(&[(lsn, "n1")]).unwrap()[..] else {
            panic!("one lease")
        };
        assert_eq!(first, 1, "the withdrawn attempt was uncounted");
        let lost = ended(lsn, JobState::Failed, "node_lost");
        let written = store
            .settle_jobs(&[(Settle::Requeue(&lost), Fence::Lease(first))])
            .unwrap();
        assert_eq!(written, [true]);
        let [Some(second)] = store.lease_jobs(&[(lsn, "n2")]).unwrap()[..] else {
            panic!("one lease")
        };
        // A job no longer queued is leased to nobody else (two coordinators sharing a
        // journal both holding it: the second claim finds it taken).
        assert_eq!(store.lease_jobs(&[(lsn, "n9")]).unwrap(), [None]);
        // The first holder's late report is stale: it closes nothing.
        let late = ended(lsn, JobState::Succeeded, "exited");
        let written = store
            .settle_jobs(&[(Settle::Finish(&late, &[]), Fence::Lease(first))])
            .unwrap();
        assert_eq!(written, [false]);
        let history = store.attempts("a", lsn).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            (history[0].node.as_str(), history[0].outcome.as_deref()),
            ("n1", Some("node_lost"))
        );
        assert!(history[0].retried);
        assert_eq!(history[1].node, "n2");
        assert_eq!(history[1].ended_ms, None, "still running");

        // The coordinator restarts and gives the job back to the queue.
        store.requeue_job(lsn).unwrap();
        let third = store.start_job(lsn, "n3").unwrap();
        assert_eq!(third, second + 1);
        // A result's webhook deliveries are written with it (the defect: they were
        // queued after its commit, so a crash in between lost them), and only if it is.
        let event = |id: &str| {
            (
                id.to_string(),
                "wh_1".to_string(),
                "job.succeeded".to_string(),
                "{}".to_string(),
            )
        };
        let done = ended(lsn, JobState::Succeeded, "exited");
        assert!(
            store
                .finish_job(&done, &[event("msg_done")], Fence::Local)
                .unwrap()
        );
        // A finished job's result is never written again, even unfenced (another
        // coordinator ending it too).
        let again = ended(lsn, JobState::Failed, "cancelled");
        assert!(
            !store
                .finish_job(&again, &[event("msg_again")], Fence::Local)
                .unwrap()
        );
        let due: Vec<String> = store
            .due(i64::MAX, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(due, ["msg_done"]);
        let history = store.attempts("a", lsn).unwrap();
        let outcomes: Vec<_> = history
            .iter()
            .map(|a| (a.attempt, a.outcome.as_deref(), a.retried))
            .collect();
        assert_eq!(
            outcomes,
            [
                (1, Some("node_lost"), true),
                (2, Some("node_lost"), true),
                (3, Some("exited"), false)
            ]
        );
        assert!(
            store.attempts("b", lsn).unwrap().is_empty(),
            "another tenant's"
        );
    }
}
