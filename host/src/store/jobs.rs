//! Jobs: submitted in batches, leased, settled under a fence, requeued, cancelled.

use super::db::{Db, DbError, DbResult, Row, params};

use super::{Store, StoreResult, attempts, now_ms, parse_hash};
use crate::model::{Deadlines, HashHex, JobResult, JobState};

/// A job as stored.
#[derive(Clone, Debug)]
pub struct JobRow {
    /// Its LSN.
    pub lsn: u64,
    /// Its owner.
    pub tenant: String,
    /// Its queue, if any.
    pub queue_id: Option<u64>,
    /// Its action id.
    pub action: HashHex,
    /// Its worker id.
    pub worker: HashHex,
    /// The action descriptor (JSON).
    pub descriptor: String,
    /// Higher runs first.
    pub priority: i64,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Retries allowed after the first attempt.
    pub max_retries: u32,
    /// Whether guest failures are retried too.
    pub retry_guest_failures: bool,
    /// The result once finished.
    pub result: Option<JobResult>,
    /// On a coordinator: the node holding the lease of the running attempt.
    pub lease_node: Option<String>,
    /// The latest checkpoint a run of it saved (retries resume from it).
    pub checkpoint: Option<HashHex>,
    /// Jobs this one waits for.
    pub after: Vec<u64>,
    /// When it was submitted (Unix ms).
    pub created_ms: i64,
    /// When it finished (Unix ms).
    pub finished_ms: Option<i64>,
    /// Its first attempt must start by then (Unix ms).
    pub start_by_ms: Option<i64>,
    /// It must finish by then (Unix ms).
    pub finish_by_ms: Option<i64>,
}

/// What a new job row holds.
#[derive(Debug)]
pub struct NewJob<'a> {
    /// Owner.
    pub tenant: &'a str,
    /// Queue, if any.
    pub queue_id: Option<u64>,
    /// Action id.
    pub action: HashHex,
    /// Worker id.
    pub worker: HashHex,
    /// Descriptor JSON.
    pub descriptor: &'a str,
    /// Priority.
    pub priority: i64,
    /// Retries allowed.
    pub max_retries: u32,
    /// Whether guest failures are retried.
    pub retry_guest_failures: bool,
    /// Dependencies.
    pub after: &'a [u64],
    /// Its deadlines, from its submission (the moment its row is written).
    pub deadlines: Deadlines,
}

/// Adds an attempt's usage to the ledger (in the transaction of its result, or of
/// its requeue for a retried one): every attempt is billed.
fn record_usage(tx: &Db, result: &JobResult, tenant: &str, queue_id: Option<i64>) -> DbResult<()> {
    let usage = &result.usage;
    tx.execute(
        "INSERT INTO usage (lsn, tenant, worker, queue_id, finished_ms, fuel, wall_ms, \
         memory_byte_seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            result.lsn as i64,
            tenant,
            result.worker.to_string(),
            queue_id,
            now_ms(),
            usage.fuel as i64,
            usage.wall_ms as i64,
            usage.memory_byte_seconds.min(i64::MAX as u64) as i64,
        ],
    )?;
    Ok(())
}

/// Which attempt a write is for. `Lease(attempt)` writes only while the job is still
/// running exactly that attempt (a coordinator's lease token): a stale holder's write
/// changes nothing. `Local` is the node's own slot, which nothing else can race.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The node's own run.
    Local,
    /// A lease's attempt.
    Lease(u32),
}

impl Fence {
    fn attempt(self) -> Option<u32> {
        match self {
            Fence::Local => None,
            Fence::Lease(attempt) => Some(attempt),
        }
    }
}

/// The condition of a fenced write (`?2` the fence's attempt, NULL for `Local`): a
/// lease's attempt only while the job runs exactly that attempt; the node's own run
/// while the job is pending (a finished job's result is never written again, which
/// also keeps coordinators sharing a journal from ending one job twice).
const FENCED: &str = "(CASE WHEN CAST(?2 AS BIGINT) IS NULL THEN state IN ('queued', 'running') \
                      ELSE state = 'running' AND attempts = ?2 END)";

/// How one attempt's end is written.
#[derive(Clone, Copy, Debug)]
pub enum Settle<'a> {
    /// Its final result: the job is finished and its checkpoint goes; the webhook
    /// deliveries its end means are queued with it.
    Finish(&'a JobResult, &'a [super::NewDelivery]),
    /// Back to the queue for another attempt (a retry), its attempts kept; the
    /// result says how the attempt ended.
    Requeue(&'a JobResult),
}

pub(super) const JOB_COLUMNS: &str = "lsn, tenant, queue_id, action, worker, descriptor, priority, state, attempts, \
                           max_retries, retry_guest_failures, result, lease_node, checkpoint, \
                           created_ms, finished_ms, start_by_ms, finish_by_ms, \
                           (SELECT group_concat(after) FROM job_deps d WHERE d.lsn = jobs.lsn)";

fn job_row(row: &Row<'_>) -> DbResult<JobRow> {
    let result: Option<String> = row.get(11)?;
    Ok(JobRow {
        lsn: row.get::<i64>(0)? as u64,
        tenant: row.get(1)?,
        queue_id: row.get::<Option<i64>>(2)?.map(|q| q as u64),
        action: parse_hash(row.get(3)?)?,
        worker: parse_hash(row.get(4)?)?,
        descriptor: row.get(5)?,
        priority: row.get(6)?,
        state: row.get(7)?,
        attempts: row.get(8)?,
        max_retries: row.get(9)?,
        retry_guest_failures: row.get(10)?,
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
        lease_node: row.get(12)?,
        checkpoint: row.get::<Option<String>>(13)?.map(parse_hash).transpose()?,
        after: Vec::new(),
        created_ms: row.get(14)?,
        finished_ms: row.get(15)?,
        start_by_ms: row.get(16)?,
        finish_by_ms: row.get(17)?,
    })
}

/// The jobs it waits for, from column 18 (`group_concat` of `job_deps`, read with the
/// row: one statement a job instead of two, which a PostgreSQL journal pays as round
/// trips), in order.
pub(super) fn job_row_with_deps(row: &Row<'_>) -> DbResult<JobRow> {
    let mut job = job_row(row)?;
    if let Some(list) = row.get::<Option<String>>(18)? {
        job.after = list
            .split(',')
            .map(|lsn| {
                lsn.trim()
                    .parse()
                    .map_err(|e| DbError::Other(format!("a stored dependency {lsn:?}: {e}")))
            })
            .collect::<DbResult<_>>()?;
        job.after.sort_unstable();
    }
    Ok(job)
}

impl Store {
    /// Retires finished results that finished before `before_ms`.
    pub(super) fn retire_finished(&self, before_ms: i64) -> StoreResult<usize> {
        Ok(self.conn().execute(
            "UPDATE jobs SET retired = 1 WHERE retired = 0 AND finished_ms IS NOT NULL \
                 AND finished_ms < ?1",
            params![before_ms],
        )?)
    }

    /// Inserts jobs in one transaction, each queued or already finished (a cached
    /// result, whose `lsn` field is filled in here); returns their LSNs.
    pub fn insert_jobs(&self, jobs: &[(NewJob<'_>, Option<JobResult>)]) -> StoreResult<Vec<u64>> {
        self.insert_jobs_with(jobs, &|_, _| Vec::new())
    }

    /// [`Store::insert_jobs`], writing the webhook deliveries `events` gives each job
    /// answered at once (by its LSN and result) in the same transaction, as a result's
    /// are written with it.
    pub fn insert_jobs_with(
        &self,
        jobs: &[(NewJob<'_>, Option<JobResult>)],
        events: &dyn Fn(u64, &JobResult) -> Vec<super::NewDelivery>,
    ) -> StoreResult<Vec<u64>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut lsns = Vec::with_capacity(jobs.len());
        // One instant for the batch: its submission time, from which deadlines count.
        let now = now_ms();
        for (job, cached) in jobs {
            let (start_by_ms, finish_by_ms) = job.deadlines.from(now);
            let lsn: i64 = tx.query_one(
                "INSERT INTO jobs (tenant, queue_id, action, worker, descriptor, priority, state, \
                 max_retries, retry_guest_failures, created_ms, start_by_ms, finish_by_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?9, ?10, ?11) RETURNING lsn",
                params![
                    job.tenant,
                    job.queue_id.map(|q| q as i64),
                    job.action.to_string(),
                    job.worker.to_string(),
                    job.descriptor,
                    job.priority,
                    job.max_retries,
                    job.retry_guest_failures,
                    now,
                    start_by_ms,
                    finish_by_ms,
                ],
                |row| row.get(0),
            )?;
            for after in job.after {
                tx.execute(
                    "INSERT OR IGNORE INTO job_deps (lsn, after) VALUES (?1, ?2)",
                    params![lsn, *after as i64],
                )?;
            }
            if let Some(result) = cached {
                let mut result = result.clone();
                result.lsn = lsn as u64;
                let json = serde_json::to_string(&result).expect("results serialize");
                tx.execute(
                    "UPDATE jobs SET state = ?2, result = ?3, finished_ms = ?4 WHERE lsn = ?1",
                    params![lsn, result.state, json, now_ms()],
                )?;
                super::webhooks::insert_deliveries(&tx, &events(lsn as u64, &result))?;
            }
            lsns.push(lsn as u64);
        }
        if let Some((job, _)) = jobs.first()
            && let Some(queue) = job.queue_id
        {
            tx.execute(
                "UPDATE queues SET touched_ms = ?2 WHERE id = ?1",
                params![queue as i64, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(lsns)
    }

    /// One job of `tenant` (None when it does not exist or is another tenant's).
    pub(super) fn job(&self, tenant: &str, lsn: u64) -> StoreResult<Option<JobRow>> {
        let conn = self.conn();
        // Cached: parsing this statement on every call was a tenth of a coordinator's
        // time under load.
        let job = conn.query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE lsn = ?1 AND tenant = ?2"),
            params![lsn as i64, tenant],
            job_row_with_deps,
        )?;
        Ok(job)
    }

    /// A job by LSN alone, for the node's own bookkeeping (the API always scopes by
    /// tenant with [`Db::job`]).
    pub(super) fn job_by_lsn(&self, lsn: u64) -> StoreResult<Option<JobRow>> {
        let conn = self.conn();
        let job = conn.query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE lsn = ?1"),
            params![lsn as i64],
            job_row_with_deps,
        )?;
        Ok(job)
    }

    /// The latest successful result of this action for this tenant.
    pub(super) fn cached_result(
        &self,
        tenant: &str,
        action: &HashHex,
    ) -> StoreResult<Option<JobResult>> {
        let result: Option<String> = self.conn().query_opt(
            "SELECT result FROM jobs WHERE tenant = ?1 AND action = ?2 AND state = 'succeeded' \
                 ORDER BY lsn DESC LIMIT 1",
            params![tenant, action.to_string()],
            |row| row.get(0),
        )?;
        Ok(result.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Marks a job running on this node (`node`, its id) and counts the attempt;
    /// returns the attempt number.
    pub fn start_job(&self, lsn: u64, node: &str) -> StoreResult<u32> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let attempt = tx.query_one(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1 WHERE lsn = ?1 \
                 RETURNING attempts",
            params![lsn as i64],
            |row| row.get(0),
        )?;
        attempts::open(&tx, lsn, attempt, node)?;
        tx.commit()?;
        Ok(attempt)
    }

    /// Leases queued jobs to nodes in one transaction: each is marked running on its
    /// node and its attempt counted. Returns the attempt numbers (the fencing tokens),
    /// in order; `None` for a job no longer queued (another coordinator sharing the
    /// journal took it, or it ended meanwhile), which is left as it is.
    pub fn lease_jobs(&self, leases: &[(u64, &str)]) -> StoreResult<Vec<Option<u32>>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut attempts = Vec::with_capacity(leases.len());
        for (lsn, node) in leases {
            let attempt = tx.query_opt(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_node = ?2 \
                 WHERE lsn = ?1 AND state = 'queued' RETURNING attempts",
                params![*lsn as i64, node],
                |row| row.get(0),
            )?;
            if let Some(attempt) = attempt {
                attempts::open(&tx, *lsn, attempt, node)?;
            }
            attempts.push(attempt);
        }
        tx.commit()?;
        Ok(attempts)
    }

    /// Takes back a lease its node never received: the job is queued again and the
    /// attempt uncounted (it never ran). False when the attempt is no longer current.
    pub fn unlease_job(&self, lsn: u64, attempt: u32) -> StoreResult<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_node = NULL \
                 WHERE lsn = ?1 AND state = 'running' AND attempts = ?2",
            params![lsn as i64, attempt],
        )?;
        if changed == 1 {
            attempts::forget(&tx, lsn, attempt)?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Records that a cancel was asked for while the job runs (or is being placed),
    /// so no later attempt of it starts.
    pub fn request_cancel(&self, lsn: u64) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE jobs SET cancel_requested = '1' WHERE lsn = ?1",
            params![lsn as i64],
        )?;
        Ok(())
    }

    /// Whether a cancel was asked for while the job ran.
    pub fn cancel_requested(&self, lsn: u64) -> StoreResult<bool> {
        Ok(self
            .conn()
            .query_opt(
                "SELECT cancel_requested IS NOT NULL FROM jobs WHERE lsn = ?1",
                params![lsn as i64],
                |row| row.get(0),
            )
            .map(|found| found.unwrap_or(false))?)
    }

    /// Writes the ends of a batch of attempts in one transaction, each under its
    /// fence; answers, in order, whether each was written (false: a stale fence).
    pub fn settle_jobs(&self, batch: &[(Settle<'_>, Fence)]) -> StoreResult<Vec<bool>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut written = Vec::with_capacity(batch.len());
        let mut garbage = Vec::new();
        for (settle, fence) in batch {
            let attempt = fence.attempt();
            written.push(match settle {
                Settle::Finish(result, events) => {
                    let found: Option<(Option<String>, String, Option<i64>)> = tx.query_opt(
                        &format!(
                            "SELECT checkpoint, tenant, queue_id FROM jobs WHERE lsn = ?1 \
                             AND {FENCED}"
                        ),
                        params![result.lsn as i64, attempt],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )?;
                    match found {
                        None => false,
                        Some((old, tenant, queue_id)) => {
                            if !result.cached {
                                record_usage(&tx, result, &tenant, queue_id)?;
                            }
                            // A finished job resumes from nothing: its checkpoint goes.
                            garbage.extend(old.and_then(|h| h.parse::<HashHex>().ok()));
                            let json = serde_json::to_string(result).expect("results serialize");
                            tx.execute(
                                "UPDATE jobs SET state = ?2, result = ?3, finished_ms = ?4, \
                                 lease_node = NULL, checkpoint = NULL WHERE lsn = ?1",
                                params![result.lsn as i64, result.state, json, now_ms()],
                            )?;
                            attempts::close(&tx, result, false)?;
                            super::webhooks::insert_deliveries(&tx, events)?;
                            true
                        }
                    }
                }
                Settle::Requeue(result) => {
                    let found: Option<(String, Option<i64>)> = tx.query_opt(
                        &format!(
                            "UPDATE jobs SET state = 'queued', result = NULL, finished_ms = NULL, \
                             retired = 0, lease_node = NULL WHERE lsn = ?1 \
                             AND {FENCED} RETURNING tenant, queue_id"
                        ),
                        params![result.lsn as i64, attempt],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )?;
                    match found {
                        None => false,
                        Some((tenant, queue_id)) => {
                            // A retried attempt is billed like a final one.
                            record_usage(&tx, result, &tenant, queue_id)?;
                            attempts::close(&tx, result, true)?;
                            true
                        }
                    }
                }
            });
        }
        tx.commit()?;
        for hash in garbage {
            self.collect(hash);
        }
        Ok(written)
    }

    /// Stores a job's final result under `fence`, and the webhook deliveries its end
    /// means (`events`); false when the fence is stale (nothing written).
    pub fn finish_job(
        &self,
        result: &JobResult,
        events: &[super::NewDelivery],
        fence: Fence,
    ) -> StoreResult<bool> {
        Ok(self.settle_jobs(&[(Settle::Finish(result, events), fence)])?[0])
    }

    /// Records the latest checkpoint of a running job; with `fence`, only while the
    /// job runs that attempt. False when nothing was written.
    pub fn save_checkpoint(&self, lsn: u64, hash: &HashHex, fence: Fence) -> StoreResult<bool> {
        let conn = self.conn();
        let old: Option<Option<String>> = conn.query_opt(
            "SELECT checkpoint FROM jobs WHERE lsn = ?1 AND state = 'running' \
                 AND (CAST(?2 AS BIGINT) IS NULL OR attempts = ?2)",
            params![lsn as i64, fence.attempt()],
            |row| row.get(0),
        )?;
        let Some(old) = old else {
            return Ok(false);
        };
        conn.execute(
            "UPDATE jobs SET checkpoint = ?2 WHERE lsn = ?1",
            params![lsn as i64, hash.to_string()],
        )?;
        // Only the latest checkpoint is kept: the one it replaces is garbage.
        if let Some(old) = old.and_then(|h| h.parse::<HashHex>().ok())
            && old != *hash
        {
            self.collect(old);
        }
        Ok(true)
    }

    /// Records a job's descriptor with its output references substituted, and the
    /// action id that descriptor has.
    pub fn resolve_job(&self, lsn: u64, descriptor: &str, action: &HashHex) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE jobs SET descriptor = ?2, action = ?3 WHERE lsn = ?1",
            params![lsn as i64, descriptor, action.to_string()],
        )?;
        Ok(())
    }

    /// Puts a job back in the queue (a reschedule, a restart), keeping its attempt
    /// count; a cancel asked for earlier is forgotten, so callers check it first. An
    /// attempt still open (the node stopped while running it) is closed as lost.
    pub fn requeue_job(&self, lsn: u64) -> StoreResult<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE jobs SET state = 'queued', result = NULL, finished_ms = NULL, retired = 0, \
             cancel_requested = NULL WHERE lsn = ?1",
            params![lsn as i64],
        )?;
        attempts::close_open(
            &tx,
            lsn,
            crate::model::outcome::NODE_LOST,
            None,
            Some("the node stopped while running it"),
            true,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Changes a job's priority.
    pub fn set_priority(&self, lsn: u64, priority: i64) -> StoreResult<()> {
        self.conn().execute(
            "UPDATE jobs SET priority = ?2 WHERE lsn = ?1",
            params![lsn as i64, priority],
        )?;
        Ok(())
    }

    /// Every job still queued or running, oldest first (to rebuild the scheduler after
    /// a restart).
    pub(super) fn pending_jobs(&self) -> StoreResult<Vec<JobRow>> {
        let conn = self.conn();
        Ok(conn.query_map(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY lsn"
            ),
            params![],
            job_row_with_deps,
        )?)
    }

    /// Finished, unretired jobs of the tenant (optionally of one queue), by LSN.
    pub(super) fn completed(&self, tenant: &str, queue: Option<u64>) -> StoreResult<Vec<u64>> {
        let conn = self.conn();
        let rows = conn.query_map("SELECT lsn FROM jobs WHERE tenant = ?1 AND retired = 0 \
             AND state IN ('succeeded', 'failed', 'cancelled') AND (CAST(?2 AS BIGINT) IS NULL OR queue_id = ?2) ORDER BY lsn", params![tenant, queue.map(|q| q as i64)], |row| {
            row.get::<i64>(0)
        })?;
        Ok(rows.into_iter().map(|l| l as u64).collect())
    }

    /// Retires a finished job from the completed list; false when it is not finished.
    pub(super) fn retire(&self, tenant: &str, lsn: u64) -> StoreResult<bool> {
        Ok(self
            .conn()
            .execute(
                "UPDATE jobs SET retired = 1 WHERE lsn = ?1 AND tenant = ?2 \
                 AND state IN ('succeeded', 'failed', 'cancelled')",
                params![lsn as i64, tenant],
            )
            .map(|n| n == 1)?)
    }

    /// Counts of all jobs by state (for metrics).
    pub(super) fn job_counts(&self) -> StoreResult<Vec<(JobState, u64)>> {
        let conn = self.conn();
        let rows = conn.query_map(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state",
            params![],
            |row| Ok((row.get(0)?, row.get::<i64>(1)? as u64)),
        )?;
        Ok(rows)
    }
}
