//! Durable state in SQLite (WAL): blob ownership, workers, queues and jobs with their
//! results. Every row belongs to a tenant; every lookup is scoped by it, so one tenant's
//! ids are simply not found by another.
//!
//! Writes use `synchronous = NORMAL` in WAL mode: a committed transaction survives the
//! process being killed at any point; only an operating-system crash can lose the last
//! few commits (see docs/api.md, "Durability").

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{HashHex, JobResult};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS blobs (
    tenant TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (tenant, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT,
    descriptor TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queues (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    token TEXT UNIQUE,
    name TEXT,
    state TEXT NOT NULL,
    max_retries INTEGER NOT NULL,
    retry_guest_failures INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    touched_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    lsn INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    queue_id INTEGER,
    action TEXT NOT NULL,
    worker TEXT NOT NULL,
    descriptor TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL,
    retry_guest_failures INTEGER NOT NULL,
    result TEXT,
    retired INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (state) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_action ON jobs (tenant, action, state);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue_id, state);
CREATE TABLE IF NOT EXISTS job_deps (
    lsn INTEGER NOT NULL,
    after INTEGER NOT NULL,
    PRIMARY KEY (lsn, after)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER,
    content_type TEXT,
    body BLOB,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    webhook TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_ms) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_webhook ON deliveries (webhook, created_ms);
CREATE TABLE IF NOT EXISTS group_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS group_events_by_group ON group_events (group_id, seq);
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    spec TEXT NOT NULL,
    placements TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#;

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
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
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
    /// `active`, `draining` or `cancelled`.
    pub state: String,
    /// Retries allowed per job.
    pub max_retries: u32,
    /// Whether guest failures are retried.
    pub retry_guest_failures: bool,
    /// Default priority of its jobs.
    pub priority: i64,
    /// Last time it was used (ms since the epoch).
    pub touched_ms: i64,
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
}

/// What an `Idempotency-Key` found.
#[derive(Debug, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use: the request runs; its response is to be stored.
    New,
    /// The first request with this key is still running.
    InFlight,
    /// The key was used with another request.
    Mismatch,
    /// The stored response of the first request: (status, content type, body).
    Done(u16, Option<String>, Vec<u8>),
}

/// A stored key: (fingerprint, status, content type, body, created_ms); no status yet
/// while its first request runs.
type StoredKey = (String, Option<u16>, Option<String>, Option<Vec<u8>>, i64);

/// A request with an idempotency key whose first run started this long ago and never
/// finished (its process died) no longer blocks the key.
const IDEMPOTENCY_ABANDONED_MS: i64 = 5 * 60 * 1000;

/// The database handle.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
    /// Checkpoints no job refers to any more (replaced by a newer save, or their job
    /// finished): the node deletes their blobs unless something else holds them.
    garbage: Mutex<Vec<HashHex>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn parse_hash(text: String) -> rusqlite::Result<HashHex> {
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

const JOB_COLUMNS: &str = "lsn, tenant, queue_id, action, worker, descriptor, priority, state, attempts, \
                           max_retries, retry_guest_failures, result, lease_node, checkpoint";

fn job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let result: Option<String> = row.get(11)?;
    Ok(JobRow {
        lsn: row.get::<_, i64>(0)? as u64,
        tenant: row.get(1)?,
        queue_id: row.get::<_, Option<i64>>(2)?.map(|q| q as u64),
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
        checkpoint: row
            .get::<_, Option<String>>(13)?
            .map(parse_hash)
            .transpose()?,
        after: Vec::new(),
    })
}

fn queue_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<QueueRow> {
    Ok(QueueRow {
        id: row.get::<_, i64>(0)? as u64,
        tenant: row.get(1)?,
        token: row.get(2)?,
        state: row.get(3)?,
        max_retries: row.get(4)?,
        retry_guest_failures: row.get(5)?,
        priority: row.get(6)?,
        touched_ms: row.get(7)?,
    })
}

const QUEUE_COLUMNS: &str =
    "id, tenant, token, state, max_retries, retry_guest_failures, priority, touched_ms";

impl Db {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        // One process owns the database: exclusive locking spares every statement
        // outside a transaction its fcntl lock/unlock pair (most of the cost of a
        // point read here), and a second process on the same data directory fails
        // fast instead of sharing it.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement is prepared once and reused (the parser showed up in
        // profiles); there are a few dozen distinct ones.
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA)?;
        // Columns added after the first release: data directories written by an
        // older version get them here.
        for column in ["lease_node", "checkpoint", "cancel_requested"] {
            let present: bool = conn
                .prepare(&format!(
                    "SELECT COUNT(*) FROM pragma_table_info('jobs') WHERE name = '{column}'"
                ))?
                .query_row([], |row| row.get::<_, i64>(0).map(|n| n > 0))?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE jobs ADD COLUMN {column} TEXT"))?;
            }
        }
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS jobs_by_checkpoint ON jobs (checkpoint) \
             WHERE checkpoint IS NOT NULL",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
            garbage: Mutex::new(Vec::new()),
        })
    }

    /// Checkpoints that stopped being referenced since the last call.
    pub fn take_garbage(&self) -> Vec<HashHex> {
        std::mem::take(&mut *self.garbage.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn discard_checkpoint(&self, conn: &Connection, lsn: u64) -> rusqlite::Result<()> {
        let old: Option<String> = conn
            .prepare_cached("SELECT checkpoint FROM jobs WHERE lsn = ?1")?
            .query_row(params![lsn as i64], |row| row.get(0))
            .optional()?
            .flatten();
        if let Some(hash) = old.and_then(|h| h.parse().ok()) {
            self.garbage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(hash);
        }
        Ok(())
    }

    /// Whether nothing refers to a blob: no tenant holds it and no job has it as its
    /// checkpoint (so it may be deleted).
    pub fn unreferenced(&self, hash: &HashHex) -> rusqlite::Result<bool> {
        let hex = hash.to_string();
        let conn = self.conn();
        let held = conn
            .prepare_cached("SELECT 1 FROM blobs WHERE hash = ?1 LIMIT 1")?
            .query_row(params![hex], |_| Ok(()))
            .optional()?
            .is_some();
        let checkpoint = conn
            .prepare_cached("SELECT 1 FROM jobs WHERE checkpoint = ?1 LIMIT 1")?
            .query_row(params![hex], |_| Ok(()))
            .optional()?
            .is_some();
        Ok(!held && !checkpoint)
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tenant` holds the blob (the empty blob is everyone's).
    pub fn owns_blob(&self, tenant: &str, hash: &HashHex) -> rusqlite::Result<bool> {
        if *hash == HashHex::empty() {
            return Ok(true);
        }
        self.conn()
            .prepare_cached("SELECT 1 FROM blobs WHERE tenant = ?1 AND hash = ?2")?
            .query_row(params![tenant, hash.to_string()], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
    }

    /// Records that `tenant` holds the blob; true when it did not before.
    pub fn own_blob(&self, tenant: &str, hash: &HashHex, size: u64) -> rusqlite::Result<bool> {
        if *hash == HashHex::empty() {
            return Ok(false);
        }
        self.conn()
            .prepare_cached("INSERT OR IGNORE INTO blobs (tenant, hash, size) VALUES (?1, ?2, ?3)")?
            .execute(params![tenant, hash.to_string(), size as i64])
            .map(|n| n == 1)
    }

    /// A worker's descriptor JSON.
    pub fn worker(&self, tenant: &str, id: &HashHex) -> rusqlite::Result<Option<String>> {
        self.conn()
            .prepare_cached("SELECT descriptor FROM workers WHERE tenant = ?1 AND id = ?2")?
            .query_row(params![tenant, id.to_string()], |row| row.get(0))
            .optional()
    }

    /// Registers a worker; true when it is new for this tenant.
    pub fn put_worker(
        &self,
        tenant: &str,
        id: &HashHex,
        name: &str,
        version: Option<&str>,
        descriptor: &str,
    ) -> rusqlite::Result<bool> {
        self.conn()
            .prepare_cached(
                "INSERT OR IGNORE INTO workers (tenant, id, name, version, descriptor, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                tenant,
                id.to_string(),
                name,
                version,
                descriptor,
                now_ms()
            ])
            .map(|n| n == 1)
    }

    /// The tenant's workers: (id, name, version), oldest first.
    pub fn workers(&self, tenant: &str) -> rusqlite::Result<Vec<(String, String, Option<String>)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, version FROM workers WHERE tenant = ?1 ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map(params![tenant], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
        rows.collect()
    }

    /// Inserts jobs in one transaction, each queued or already finished (a cached
    /// result, whose `lsn` field is filled in here); returns their LSNs.
    pub fn insert_jobs(
        &self,
        jobs: &[(NewJob<'_>, Option<JobResult>)],
    ) -> rusqlite::Result<Vec<u64>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut lsns = Vec::with_capacity(jobs.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO jobs (tenant, queue_id, action, worker, descriptor, priority, state, max_retries, \
                 retry_guest_failures, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?9)",
            )?;
            let mut finish = tx.prepare_cached(
                "UPDATE jobs SET state = ?2, result = ?3, finished_ms = ?4 WHERE lsn = ?1",
            )?;
            let mut dep =
                tx.prepare_cached("INSERT OR IGNORE INTO job_deps (lsn, after) VALUES (?1, ?2)")?;
            for (job, cached) in jobs {
                insert.execute(params![
                    job.tenant,
                    job.queue_id.map(|q| q as i64),
                    job.action.to_string(),
                    job.worker.to_string(),
                    job.descriptor,
                    job.priority,
                    job.max_retries,
                    job.retry_guest_failures,
                    now_ms(),
                ])?;
                let lsn = tx.last_insert_rowid() as u64;
                for after in job.after {
                    dep.execute(params![lsn as i64, *after as i64])?;
                }
                if let Some(result) = cached {
                    let mut result = result.clone();
                    result.lsn = lsn;
                    let json = serde_json::to_string(&result).expect("results serialize");
                    finish.execute(params![lsn as i64, result.state, json, now_ms()])?;
                }
                lsns.push(lsn);
            }
        }
        if let Some((job, _)) = jobs.first()
            && let Some(queue) = job.queue_id
        {
            tx.prepare_cached("UPDATE queues SET touched_ms = ?2 WHERE id = ?1")?
                .execute(params![queue as i64, now_ms()])?;
        }
        tx.commit()?;
        Ok(lsns)
    }

    /// One job of `tenant` (None when it does not exist or is another tenant's).
    pub fn job(&self, tenant: &str, lsn: u64) -> rusqlite::Result<Option<JobRow>> {
        let conn = self.conn();
        let job = conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE lsn = ?1 AND tenant = ?2"),
                params![lsn as i64, tenant],
                job_row,
            )
            .optional()?;
        let Some(mut job) = job else { return Ok(None) };
        job.after = deps(&conn, lsn)?;
        Ok(Some(job))
    }

    /// A job by LSN alone, for the node's own bookkeeping (the API always scopes by
    /// tenant with [`Db::job`]).
    pub fn job_by_lsn(&self, lsn: u64) -> rusqlite::Result<Option<JobRow>> {
        let conn = self.conn();
        let job = conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE lsn = ?1"),
                params![lsn as i64],
                job_row,
            )
            .optional()?;
        let Some(mut job) = job else { return Ok(None) };
        job.after = deps(&conn, lsn)?;
        Ok(Some(job))
    }

    /// The latest successful result of this action for this tenant.
    pub fn cached_result(
        &self,
        tenant: &str,
        action: &HashHex,
    ) -> rusqlite::Result<Option<JobResult>> {
        let result: Option<String> = self
            .conn()
            .prepare_cached(
                "SELECT result FROM jobs WHERE tenant = ?1 AND action = ?2 AND state = 'succeeded' \
                 ORDER BY lsn DESC LIMIT 1",
            )?
            .query_row(params![tenant, action.to_string()], |row| row.get(0))
            .optional()?;
        Ok(result.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Marks a job running and counts the attempt; returns the attempt number.
    pub fn start_job(&self, lsn: u64) -> rusqlite::Result<u32> {
        self.conn().prepare_cached(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1 WHERE lsn = ?1 RETURNING attempts")?.query_row(
            params![lsn as i64],
            |row| row.get(0),
        )
    }

    /// Leases queued jobs to nodes in one transaction: each is marked running on its
    /// node and its attempt counted. Returns the attempt numbers (the fencing tokens),
    /// in order.
    pub fn lease_jobs(&self, leases: &[(u64, &str)]) -> rusqlite::Result<Vec<u32>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut attempts = Vec::with_capacity(leases.len());
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_node = ?2 \
                 WHERE lsn = ?1 RETURNING attempts",
            )?;
            for (lsn, node) in leases {
                attempts.push(stmt.query_row(params![*lsn as i64, node], |row| row.get(0))?);
            }
        }
        tx.commit()?;
        Ok(attempts)
    }

    /// Stores a result only if the job is still running the given attempt (its fencing
    /// token); false when the attempt is stale and nothing was written.
    pub fn finish_job_fenced(&self, result: &JobResult, attempt: u32) -> rusqlite::Result<bool> {
        let json = serde_json::to_string(result).expect("results serialize");
        let conn = self.conn();
        let current = conn
            .prepare_cached(
                "SELECT 1 FROM jobs WHERE lsn = ?1 AND state = 'running' AND attempts = ?2",
            )?
            .query_row(params![result.lsn as i64, attempt], |_| Ok(()))
            .optional()?
            .is_some();
        if !current {
            return Ok(false);
        }
        self.discard_checkpoint(&conn, result.lsn)?;
        let changed = conn
            .prepare_cached(
                "UPDATE jobs SET state = ?2, result = ?3, finished_ms = ?4, lease_node = NULL, \
             checkpoint = NULL WHERE lsn = ?1 AND state = 'running' AND attempts = ?5",
            )?
            .execute(params![
                result.lsn as i64,
                result.state,
                json,
                now_ms(),
                attempt
            ])?;
        Ok(changed == 1)
    }

    /// Takes back a lease its node never received: the job is queued again and the
    /// attempt uncounted (it never ran). False when the attempt is no longer current.
    pub fn unlease_job(&self, lsn: u64, attempt: u32) -> rusqlite::Result<bool> {
        let changed = self
            .conn()
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_node = NULL \
                 WHERE lsn = ?1 AND state = 'running' AND attempts = ?2",
            )?
            .execute(params![lsn as i64, attempt])?;
        Ok(changed == 1)
    }

    /// Requeues a job only if it is still running the given attempt; false otherwise.
    pub fn requeue_job_fenced(&self, lsn: u64, attempt: u32) -> rusqlite::Result<bool> {
        let changed = self
            .conn()
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', result = NULL, finished_ms = NULL, retired = 0, \
             lease_node = NULL WHERE lsn = ?1 AND state = 'running' AND attempts = ?2",
            )?
            .execute(params![lsn as i64, attempt])?;
        Ok(changed == 1)
    }

    /// Stores a finished job's result.
    /// Records that a cancel was asked for while the job runs (or is being placed),
    /// so no later attempt of it starts.
    pub fn request_cancel(&self, lsn: u64) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached("UPDATE jobs SET cancel_requested = '1' WHERE lsn = ?1")?
            .execute(params![lsn as i64])?;
        Ok(())
    }

    /// Whether a cancel was asked for while the job ran.
    pub fn cancel_requested(&self, lsn: u64) -> rusqlite::Result<bool> {
        self.conn()
            .prepare_cached("SELECT cancel_requested IS NOT NULL FROM jobs WHERE lsn = ?1")?
            .query_row(params![lsn as i64], |row| row.get(0))
            .optional()
            .map(|found| found.unwrap_or(false))
    }

    pub fn finish_job(&self, result: &JobResult) -> rusqlite::Result<()> {
        let json = serde_json::to_string(result).expect("results serialize");
        let conn = self.conn();
        // A finished job resumes from nothing: its checkpoint goes.
        self.discard_checkpoint(&conn, result.lsn)?;
        conn.prepare_cached(
            "UPDATE jobs SET state = ?2, result = ?3, finished_ms = ?4, checkpoint = NULL \
                 WHERE lsn = ?1",
        )?
        .execute(params![result.lsn as i64, result.state, json, now_ms()])?;
        Ok(())
    }

    /// Records the latest checkpoint of a running job; with `fence`, only while the
    /// job runs that attempt. False when nothing was written.
    pub fn save_checkpoint(
        &self,
        lsn: u64,
        hash: &HashHex,
        fence: Option<u32>,
    ) -> rusqlite::Result<bool> {
        let conn = self.conn();
        let old: Option<Option<String>> = conn
            .prepare_cached(
                "SELECT checkpoint FROM jobs WHERE lsn = ?1 AND state = 'running' \
                 AND (?2 IS NULL OR attempts = ?2)",
            )?
            .query_row(params![lsn as i64, fence], |row| row.get(0))
            .optional()?;
        let Some(old) = old else {
            return Ok(false);
        };
        conn.prepare_cached("UPDATE jobs SET checkpoint = ?2 WHERE lsn = ?1")?
            .execute(params![lsn as i64, hash.to_string()])?;
        // Only the latest checkpoint is kept: the one it replaces is garbage.
        if let Some(old) = old.and_then(|h| h.parse::<HashHex>().ok())
            && old != *hash
        {
            self.garbage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
        }
        Ok(true)
    }

    /// Records a job's descriptor with its output references substituted, and the
    /// action id that descriptor has.
    pub fn resolve_job(
        &self,
        lsn: u64,
        descriptor: &str,
        action: &HashHex,
    ) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached("UPDATE jobs SET descriptor = ?2, action = ?3 WHERE lsn = ?1")?
            .execute(params![lsn as i64, descriptor, action.to_string()])?;
        Ok(())
    }

    /// Puts a job back in the queue (a retry, a reschedule, a restart), keeping its
    /// attempt count; a cancel asked for earlier is forgotten, so callers check it first.
    pub fn requeue_job(&self, lsn: u64) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', result = NULL, finished_ms = NULL, retired = 0, \
             cancel_requested = NULL WHERE lsn = ?1",
            )?
            .execute(params![lsn as i64])?;
        Ok(())
    }

    /// Changes a job's priority.
    pub fn set_priority(&self, lsn: u64, priority: i64) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached("UPDATE jobs SET priority = ?2 WHERE lsn = ?1")?
            .execute(params![lsn as i64, priority])?;
        Ok(())
    }

    /// Every job still queued or running, oldest first (to rebuild the scheduler after
    /// a restart).
    pub fn pending_jobs(&self) -> rusqlite::Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY lsn"
        ))?;
        let mut jobs: Vec<JobRow> = stmt.query_map([], job_row)?.collect::<Result<_, _>>()?;
        for job in &mut jobs {
            job.after = deps(&conn, job.lsn)?;
        }
        Ok(jobs)
    }

    /// Finished, unretired jobs of the tenant (optionally of one queue), by LSN.
    pub fn completed(&self, tenant: &str, queue: Option<u64>) -> rusqlite::Result<Vec<u64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT lsn FROM jobs WHERE tenant = ?1 AND retired = 0 \
             AND state IN ('succeeded', 'failed', 'cancelled') AND (?2 IS NULL OR queue_id = ?2) ORDER BY lsn",
        )?;
        let rows = stmt.query_map(params![tenant, queue.map(|q| q as i64)], |row| {
            row.get::<_, i64>(0)
        })?;
        rows.map(|r| r.map(|l| l as u64)).collect()
    }

    /// Retires a finished job from the completed list; false when it is not finished.
    pub fn retire(&self, tenant: &str, lsn: u64) -> rusqlite::Result<bool> {
        self.conn()
            .prepare_cached(
                "UPDATE jobs SET retired = 1 WHERE lsn = ?1 AND tenant = ?2 \
                 AND state IN ('succeeded', 'failed', 'cancelled')",
            )?
            .execute(params![lsn as i64, tenant])
            .map(|n| n == 1)
    }

    /// Creates a queue; returns its id.
    pub fn create_queue(
        &self,
        tenant: &str,
        token: Option<&str>,
        name: Option<&str>,
        max_retries: u32,
        retry_guest_failures: bool,
        priority: i64,
    ) -> rusqlite::Result<u64> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO queues (tenant, token, name, state, max_retries, retry_guest_failures, priority, \
             created_ms, touched_ms) VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?7, ?7)")?.execute(
            params![tenant, token, name, max_retries, retry_guest_failures, priority, now_ms()],
        )?;
        Ok(conn.last_insert_rowid() as u64)
    }

    /// A queue by id.
    pub fn queue(&self, id: u64) -> rusqlite::Result<Option<QueueRow>> {
        self.conn()
            .query_row(
                &format!("SELECT {QUEUE_COLUMNS} FROM queues WHERE id = ?1"),
                params![id as i64],
                queue_row,
            )
            .optional()
    }

    /// Looks up an idempotency key (per tenant) for a request with `fingerprint`,
    /// claiming it when it is new (or abandoned by a process that died).
    pub fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        fingerprint: &str,
    ) -> rusqlite::Result<IdempotencyBegin> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found: Option<StoredKey> = tx
            .prepare_cached(
                "SELECT fingerprint, status, content_type, body, created_ms FROM idempotency \
                 WHERE tenant = ?1 AND key = ?2",
            )?
            .query_row(params![tenant, key], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .optional()?;
        let answer = match found {
            Some((stored, _, _, _, _)) if stored != fingerprint => IdempotencyBegin::Mismatch,
            Some((_, Some(status), content_type, body, _)) => {
                IdempotencyBegin::Done(status, content_type, body.unwrap_or_default())
            }
            Some((_, None, _, _, created)) if created > now_ms() - IDEMPOTENCY_ABANDONED_MS => {
                IdempotencyBegin::InFlight
            }
            _ => {
                tx.prepare_cached(
                    "INSERT INTO idempotency (tenant, key, fingerprint, created_ms) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (tenant, key) DO UPDATE SET fingerprint = excluded.fingerprint, \
                     status = NULL, content_type = NULL, body = NULL, created_ms = excluded.created_ms",
                )?
                .execute(params![tenant, key, fingerprint, now_ms()])?;
                IdempotencyBegin::New
            }
        };
        tx.commit()?;
        Ok(answer)
    }

    /// Stores the response of the first request with an idempotency key.
    pub fn idempotency_finish(
        &self,
        tenant: &str,
        key: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached(
                "UPDATE idempotency SET status = ?3, content_type = ?4, body = ?5 \
                 WHERE tenant = ?1 AND key = ?2",
            )?
            .execute(params![tenant, key, status, content_type, body])?;
        Ok(())
    }

    /// Releases a key whose first request did not complete (a 5xx, or the client
    /// went away), so a retry runs again.
    pub fn idempotency_forget(&self, tenant: &str, key: &str) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached(
                "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2 AND status IS NULL",
            )?
            .execute(params![tenant, key])?;
        Ok(())
    }

    /// Forgets keys first used before `before_ms`; returns how many.
    pub fn idempotency_expire(&self, before_ms: i64) -> rusqlite::Result<usize> {
        self.conn()
            .prepare_cached("DELETE FROM idempotency WHERE created_ms < ?1")?
            .execute(params![before_ms])
    }

    /// Stores (or replaces) an event-handler group: its spec and placements as JSON.
    pub fn put_group(
        &self,
        tenant: &str,
        id: &str,
        spec: &str,
        placements: &str,
    ) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO groups (id, tenant, spec, placements, created_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO UPDATE SET placements = excluded.placements",
            )?
            .execute(params![id, tenant, spec, placements, now_ms()])?;
        Ok(())
    }

    /// A group's (spec, placements), when the tenant has it.
    pub fn group(&self, tenant: &str, id: &str) -> rusqlite::Result<Option<(String, String)>> {
        self.conn()
            .prepare_cached("SELECT spec, placements FROM groups WHERE id = ?1 AND tenant = ?2")?
            .query_row(params![id, tenant], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
    }

    /// Every group: (id, tenant, spec, placements).
    pub fn groups(&self) -> rusqlite::Result<Vec<(String, String, String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, tenant, spec, placements FROM groups ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
        rows.collect()
    }

    /// Deletes a group; false when the tenant has no such group.
    pub fn delete_group(&self, tenant: &str, id: &str) -> rusqlite::Result<bool> {
        let changed = self
            .conn()
            .prepare_cached("DELETE FROM groups WHERE id = ?1 AND tenant = ?2")?
            .execute(params![id, tenant])?;
        Ok(changed == 1)
    }

    /// Every remote queue's (id, token), for constant-time token lookups.
    pub fn queue_tokens(&self) -> rusqlite::Result<Vec<(u64, String)>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id, token FROM queues WHERE token IS NOT NULL")?;
        let rows = stmt.query_map([], |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)))?;
        rows.collect()
    }

    /// Sets a queue's state.
    pub fn set_queue_state(&self, id: u64, state: &str) -> rusqlite::Result<()> {
        self.conn()
            .prepare_cached("UPDATE queues SET state = ?2, touched_ms = ?3 WHERE id = ?1")?
            .execute(params![id as i64, state, now_ms()])?;
        Ok(())
    }

    /// Job counts of a queue by state.
    pub fn queue_counts(&self, id: u64) -> rusqlite::Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT state, COUNT(*) FROM jobs WHERE queue_id = ?1 GROUP BY state",
        )?;
        let rows = stmt.query_map(params![id as i64], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64))
        })?;
        rows.collect()
    }

    /// LSNs of a queue's jobs that are still queued or running.
    pub fn queue_pending(&self, id: u64) -> rusqlite::Result<Vec<u64>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT lsn FROM jobs WHERE queue_id = ?1 AND state IN ('queued', 'running') ORDER BY lsn")?;
        let rows = stmt.query_map(params![id as i64], |row| row.get::<_, i64>(0))?;
        rows.map(|r| r.map(|l| l as u64)).collect()
    }

    /// Active queues untouched since `before_ms` with nothing pending: the idle ones.
    pub fn idle_queues(&self, before_ms: i64) -> rusqlite::Result<Vec<u64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM queues q WHERE state = 'active' AND touched_ms < ?1 AND NOT EXISTS \
             (SELECT 1 FROM jobs j WHERE j.queue_id = q.id AND j.state IN ('queued', 'running'))",
        )?;
        let rows = stmt.query_map(params![before_ms], |row| row.get::<_, i64>(0))?;
        rows.map(|r| r.map(|l| l as u64)).collect()
    }

    /// Counts of all jobs by state (for metrics).
    pub fn job_counts(&self) -> rusqlite::Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
        rows.collect()
    }
}

fn deps(conn: &Connection, lsn: u64) -> rusqlite::Result<Vec<u64>> {
    let mut stmt =
        conn.prepare_cached("SELECT after FROM job_deps WHERE lsn = ?1 ORDER BY after")?;
    let rows = stmt.query_map(params![lsn as i64], |row| row.get::<_, i64>(0))?;
    rows.map(|r| r.map(|l| l as u64)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_claim_replay_refuse_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db")).unwrap();
        let begin =
            |tenant: &str, key: &str, fp: &str| db.idempotency_begin(tenant, key, fp).unwrap();
        assert_eq!(begin("t", "k", "a"), IdempotencyBegin::New);
        assert_eq!(begin("t", "k", "a"), IdempotencyBegin::InFlight);
        assert_eq!(begin("t", "k", "b"), IdempotencyBegin::Mismatch);
        assert_eq!(
            begin("other", "k", "b"),
            IdempotencyBegin::New,
            "keys are per tenant"
        );
        db.idempotency_finish("t", "k", 201, Some("application/json"), b"{\"lsn\":1}")
            .unwrap();
        assert_eq!(
            begin("t", "k", "a"),
            IdempotencyBegin::Done(
                201,
                Some("application/json".into()),
                b"{\"lsn\":1}".to_vec()
            )
        );
        // A finished key is kept; an unfinished one is released for a retry.
        db.idempotency_forget("t", "k").unwrap();
        assert!(matches!(begin("t", "k", "a"), IdempotencyBegin::Done(..)));
        db.idempotency_forget("other", "k").unwrap();
        assert_eq!(begin("other", "k", "c"), IdempotencyBegin::New);
        assert_eq!(db.idempotency_expire(now_ms() + 1).unwrap(), 2);
        assert_eq!(begin("t", "k", "z"), IdempotencyBegin::New);
    }
}
