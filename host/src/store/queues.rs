//! Queues: their policy and state, remote tokens, and the counts of their jobs.

use super::db::{DbResult, Row, params};

use super::{Store, StoreResult, now_ms};
use crate::model::{Deadlines, JobState, QueueState};

/// What a new queue is: its policy for the jobs submitted into it.
#[derive(Clone, Debug, Default)]
pub struct QueueSpec<'a> {
    /// Its name, if any.
    pub name: Option<&'a str>,
    /// Retries allowed per job.
    pub max_retries: u32,
    /// Whether guest failures are retried.
    pub retry_guest_failures: bool,
    /// Default priority of its jobs.
    pub priority: i64,
    /// Deadlines of its jobs that give none of their own.
    pub deadlines: Deadlines,
    /// How long its runnable jobs may wait before the autoscaler adds nodes.
    pub target_wait_ms: Option<u64>,
}

/// A queue as stored.
#[derive(Clone, Debug)]
pub struct QueueRow {
    /// Its id.
    pub id: u64,
    /// Its owner.
    pub tenant: String,
    /// The remote token, for remote queues.
    pub token: Option<String>,
    /// Whether it takes submissions.
    pub state: QueueState,
    /// Retries allowed per job.
    pub max_retries: u32,
    /// Whether guest failures are retried.
    pub retry_guest_failures: bool,
    /// Default priority of its jobs.
    pub priority: i64,
    /// Last time it was used (ms since the epoch).
    pub touched_ms: i64,
    /// Deadlines of its jobs that give none of their own.
    pub deadlines: Deadlines,
    /// How long its runnable jobs may wait before the autoscaler adds nodes.
    pub target_wait_ms: Option<u64>,
}

fn queue_row(row: &Row<'_>) -> DbResult<QueueRow> {
    Ok(QueueRow {
        id: row.get::<i64>(0)? as u64,
        tenant: row.get(1)?,
        token: row.get(2)?,
        state: row.get(3)?,
        max_retries: row.get(4)?,
        retry_guest_failures: row.get(5)?,
        priority: row.get(6)?,
        touched_ms: row.get(7)?,
        deadlines: Deadlines {
            start_within_ms: row.get::<Option<i64>>(8)?.map(|ms| ms as u64),
            finish_within_ms: row.get::<Option<i64>>(9)?.map(|ms| ms as u64),
        },
        target_wait_ms: row.get::<Option<i64>>(10)?.map(|ms| ms as u64),
    })
}

const QUEUE_COLUMNS: &str = "id, tenant, token, state, max_retries, retry_guest_failures, priority, \
                             touched_ms, start_within_ms, finish_within_ms, target_wait_ms";

/// The scoping term of a statement about queue `?1` asked by tenant `?2`: the queue is
/// the tenant's (a primary-key lookup).
const OWN_QUEUE: &str = "EXISTS (SELECT 1 FROM queues WHERE id = ?1 AND tenant = ?2)";

impl Store {
    /// Deletes cancelled queues untouched since `before_ms` with nothing pending.
    pub(super) fn delete_ended_queues(&self, before_ms: i64) -> StoreResult<usize> {
        Ok(self.conn().execute(
            "DELETE FROM queues WHERE state = 'cancelled' AND touched_ms < ?1 AND NOT EXISTS \
                 (SELECT 1 FROM jobs j WHERE j.queue_id = queues.id \
                 AND j.state IN ('queued', 'running'))",
            params![before_ms],
        )?)
    }

    /// Creates a queue; returns its id.
    pub(super) fn create_queue(
        &self,
        tenant: &str,
        token: Option<&str>,
        spec: &QueueSpec<'_>,
    ) -> StoreResult<u64> {
        let conn = self.conn();
        let id: i64 = conn.query_one("INSERT INTO queues (tenant, token, name, state, max_retries, retry_guest_failures, \
             priority, created_ms, touched_ms, start_within_ms, finish_within_ms, \
             target_wait_ms) VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10) RETURNING id", params![
            tenant,
            token,
            spec.name,
            spec.max_retries,
            spec.retry_guest_failures,
            spec.priority,
            now_ms(),
            spec.deadlines.start_within_ms.map(|ms| ms as i64),
            spec.deadlines.finish_within_ms.map(|ms| ms as i64),
            spec.target_wait_ms.map(|ms| ms as i64),
        ], |row| row.get(0))?;
        Ok(id as u64)
    }

    /// A queue by id, whoever's it is.
    pub(super) fn queue_any(&self, id: u64) -> StoreResult<Option<QueueRow>> {
        Ok(self.conn().query_opt(
            &format!("SELECT {QUEUE_COLUMNS} FROM queues WHERE id = ?1"),
            params![id as i64],
            queue_row,
        )?)
    }

    /// A queue by id.
    pub(super) fn queue(&self, tenant: &str, id: u64) -> StoreResult<Option<QueueRow>> {
        Ok(self.conn().query_opt(
            &format!("SELECT {QUEUE_COLUMNS} FROM queues WHERE id = ?1 AND tenant = ?2"),
            params![id as i64, tenant],
            queue_row,
        )?)
    }

    /// The tenant's remote queue whose stored token (a digest) is `digest`, compared
    /// in constant time against each of the tenant's tokens.
    pub(super) fn queue_by_token(
        &self,
        tenant: &str,
        digest: &str,
    ) -> StoreResult<Option<QueueRow>> {
        use subtle::ConstantTimeEq;
        let found = {
            let conn = self.conn();
            let rows = conn.query_map(
                "SELECT id, token FROM queues WHERE tenant = ?1 AND token IS NOT NULL",
                params![tenant],
                |row| Ok((row.get::<i64>(0)? as u64, row.get::<String>(1)?)),
            )?;
            let mut found = None;
            for (id, stored) in rows {
                if bool::from(stored.as_bytes().ct_eq(digest.as_bytes())) {
                    found = Some(id);
                }
            }
            found
        };
        match found {
            Some(id) => self.queue(tenant, id),
            None => Ok(None),
        }
    }

    /// Sets a queue's state.
    pub(super) fn set_queue_state(
        &self,
        tenant: Option<&str>,
        id: u64,
        state: QueueState,
    ) -> StoreResult<bool> {
        let changed = self.conn().execute(
            "UPDATE queues SET state = ?2, touched_ms = ?3 \
                 WHERE id = ?1 AND (CAST(?4 AS TEXT) IS NULL OR tenant = ?4)",
            params![id as i64, state, now_ms(), tenant],
        )?;
        Ok(changed == 1)
    }

    /// Job counts of a queue by state. A queue's jobs are its tenant's (jobs enter a
    /// queue only through the tenant's own view of it), so the tenant is checked on the
    /// queue row ([`OWN_QUEUE`]) and the counting reads index `jobs_by_queue` alone: a
    /// `tenant` term on the jobs fetched every job's row, on every look of a waiting
    /// or streamed queue.
    pub(super) fn queue_counts(&self, tenant: &str, id: u64) -> StoreResult<Vec<(JobState, u64)>> {
        let conn = self.conn();
        let rows = conn.query_map(&format!(
            "SELECT state, COUNT(*) FROM jobs WHERE queue_id = ?1 AND {OWN_QUEUE} GROUP BY state"
        ), params![id as i64, tenant], |row| {
            Ok((row.get(0)?, row.get::<i64>(1)? as u64))
        })?;
        Ok(rows)
    }

    /// Whether any job of the tenant's queue is still queued or running: one probe of
    /// index `jobs_by_queue`, so a long-polled queue can look again at every result.
    pub(super) fn queue_is_pending(&self, tenant: &str, id: u64) -> StoreResult<bool> {
        let conn = self.conn();
        Ok(conn.query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE queue_id = ?1 AND {OWN_QUEUE} \
                 AND state IN ('queued', 'running'))"
            ),
            params![id as i64, tenant],
            |row| row.get(0),
        )?)
    }

    /// LSNs of a queue's jobs that are still queued or running.
    pub(super) fn queue_pending(&self, tenant: &str, id: u64) -> StoreResult<Vec<u64>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT lsn FROM jobs WHERE queue_id = ?1 AND tenant = ?2 \
             AND state IN ('queued', 'running') ORDER BY lsn",
            params![id as i64, tenant],
            |row| row.get::<i64>(0),
        )?;
        Ok(rows.into_iter().map(|l| l as u64).collect())
    }

    /// Active queues untouched since `before_ms` with nothing pending: the idle ones.
    pub(super) fn idle_queues(&self, before_ms: i64) -> StoreResult<Vec<u64>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT id FROM queues q WHERE state = 'active' AND touched_ms < ?1 AND NOT EXISTS \
             (SELECT 1 FROM jobs j WHERE j.queue_id = q.id AND j.state IN ('queued', 'running'))",
            params![before_ms],
            |row| row.get::<i64>(0),
        )?;
        Ok(rows.into_iter().map(|l| l as u64).collect())
    }
}
