//! The journal: durable state in SQLite (WAL) — blob ownership, workers, queues, jobs
//! with their results, idempotency keys, webhooks and their deliveries, groups and
//! their event logs. All SQL lives in this module; the connection never leaves it.
//!
//! Lookups a request makes go through [`Store::tenant`], a view that has no unscoped
//! lookup, so one tenant's ids are simply not found by another. The engine's own loops
//! (recovery, placement, settling) use [`Store::unscoped`] and the write methods on
//! [`Store`] itself, which address rows the engine already holds.
//!
//! The API is batch-first where the hot paths are (`insert_jobs`, `lease_jobs`,
//! `settle_jobs`: one transaction each) and says nothing about SQLite, so another
//! backend can stand beside this one.
//!
//! Writes use `synchronous = NORMAL` in WAL mode: a committed transaction survives the
//! process being killed at any point; only an operating-system crash can lose the last
//! few commits (see docs/api.md, "Durability").

mod attempts;
mod blobs;
mod gc;
mod groups;
mod idempotency;
mod jobs;
mod listing;
mod queues;
mod schema;
mod tenant;
mod usage;
mod wal;
mod webhooks;

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::model::{DeliveryState, HashHex, JobState, QueueState, WebhookState};
pub use gc::ReferencePage;
pub use idempotency::IdempotencyBegin;
pub use jobs::{Fence, JobRow, NewJob, Settle};
pub use listing::{JobFilter, JobPage, JobSummary, QueueSummary};
pub use queues::{QueueRow, QueueSpec};
pub use tenant::{TenantStore, Unscoped};
pub use webhooks::{Delivery, Webhook};

/// A journal operation failed. The backend's error stays inside: callers see text for
/// people, so nothing above `store/` depends on the backend.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(rusqlite::Error);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e)
    }
}

/// The result of a journal operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// The journal.
#[derive(Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Checkpoints no job refers to any more (replaced by a newer save, or their job
    /// finished): the engine deletes their blobs unless something else holds them.
    garbage: Mutex<Vec<HashHex>>,
    /// Dropped after `conn` (fields drop in order): its connection is the last one, and
    /// closing it checkpoints the log.
    _wal: wal::Checkpointer,
    /// An exclusive lock on the database's path with extension `lock` (`wasmesh.lock`)
    /// while the journal is open: one process owns it.
    _owner: File,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A journal error that is not SQLite's own (opening the lock file, a thread).
fn failure(message: String) -> StoreError {
    StoreError(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(message),
    ))
}

fn parse_hash(text: String) -> rusqlite::Result<HashHex> {
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// States are stored as their wire names: the one place a state becomes SQL text.
macro_rules! sql_state {
    ($($name:ty),+) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }
    )+};
}
sql_state!(JobState, QueueState, WebhookState, DeliveryState);

impl Store {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> StoreResult<Self> {
        // One process owns the database (the engine keeps its schedule in memory): a
        // second process on the same data directory fails fast instead of sharing it.
        let lock_path = path.with_extension("lock");
        let owner = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| failure(format!("opening {}: {e}", lock_path.display())))?;
        owner.try_lock().map_err(|e| {
            failure(format!(
                "{} is in use by another process ({e})",
                path.display()
            ))
        })?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoints run on their own thread (store/wal.rs), never inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A log that grew during a burst is cut back to this when it restarts.
        conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement is prepared once and reused (the parser showed up in
        // profiles); there are a few dozen distinct ones.
        conn.set_prepared_statement_cache_capacity(64);
        schema::check_version(&conn)?
            .map_err(|why| failure(format!("{}: {why}", path.display())))?;
        schema::migrate(&conn)?;
        let conn = Arc::new(Mutex::new(conn));
        let wal = wal::Checkpointer::start(path, Arc::downgrade(&conn), wal::RESTART_FRAMES)?;
        Ok(Self {
            conn,
            garbage: Mutex::new(Vec::new()),
            _wal: wal,
            _owner: owner,
        })
    }

    /// Checkpoints that stopped being referenced since the last call.
    pub fn take_garbage(&self) -> Vec<HashHex> {
        std::mem::take(&mut *self.garbage.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts a checkpoint that nothing refers to any more on the garbage list.
    fn collect(&self, hash: HashHex) {
        self.garbage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hash);
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view a request about `tenant` uses: every lookup scoped by the tenant.
    pub fn tenant<'a>(&'a self, tenant: &'a str) -> TenantStore<'a> {
        TenantStore::new(self, tenant)
    }

    /// Lookups by id alone, for the engine's own loops (never for a request).
    pub fn unscoped(&self) -> Unscoped<'_> {
        Unscoped::new(self)
    }
}
