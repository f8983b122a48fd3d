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
pub(crate) mod db;
mod gc;
mod groups;
mod idempotency;
mod jobs;
mod leader;
mod listing;
mod owner;
mod queues;
mod schema;
mod schema_pg;
mod shared;
mod tenant;
mod usage;
mod wal;
mod webhooks;

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::model::{DeliveryState, HashHex, JobState, QueueState, WebhookState};
use db::{Db, DbError, FromValue, ToValue, ValueRef};
pub use gc::ReferencePage;
pub use idempotency::IdempotencyBegin;
pub use jobs::{Fence, JobRow, NewJob, Settle};
pub use listing::{JobFilter, JobPage, JobSummary, QueueSummary};
pub use queues::{QueueRow, QueueSpec};
pub use tenant::{TenantStore, Unscoped};
pub use webhooks::{Delivery, NewDelivery, Webhook};

/// A journal operation failed. The backend's error stays inside: callers see text for
/// people, so nothing above `store/` depends on the backend.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(DbError);

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError(e)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.into())
    }
}

/// The result of a journal operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Where the journal is: the embedded SQLite file (the default, in the data directory)
/// or a PostgreSQL server (`--journal postgres://...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Journal {
    /// An SQLite database file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection string (URL or key=value form).
    Postgres(String),
}

impl Journal {
    /// A `--journal` value: a `postgres://` or `postgresql://` URL; anything else is an
    /// error (the SQLite journal is the default and needs no flag).
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(Journal::Postgres(value.to_owned()))
        } else {
            Err(format!(
                "a journal is a postgres:// URL (without --journal the journal is the \
                 SQLite file in the data directory), not {value:?}"
            ))
        }
    }
}

/// The journal.
#[derive(Debug)]
pub struct Store {
    conn: Arc<Mutex<Db>>,
    /// Checkpoints no job refers to any more (replaced by a newer save, or their job
    /// finished): the engine deletes their blobs unless something else holds them.
    garbage: Mutex<Vec<HashHex>>,
    /// SQLite's: dropped after `conn` (fields drop in order): its connection is the
    /// last one, and closing it checkpoints the log.
    _wal: Option<wal::Checkpointer>,
    /// SQLite's: an exclusive lock on the database's path with extension `lock`
    /// (`wasmesh.lock`) while the journal is open: one process owns it.
    _owner: Option<File>,
    /// PostgreSQL's: the owner's beat (store/owner.rs).
    _beat: Option<owner::Beat>,
    /// A shared PostgreSQL journal's: the leader election (store/leader.rs).
    leader: Option<leader::Leadership>,
    /// A shared PostgreSQL journal's URL (for its listeners).
    shared_url: Option<String>,
}

/// How a process holds a PostgreSQL journal (a SQLite journal is always its alone).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Holding {
    /// Alone: another process holding it is an error.
    #[default]
    Alone,
    /// Alone, once the process holding it lets go or stops beating for this long
    /// (`wasmesh coordinator --standby`).
    Standby(Duration),
    /// Shared with the other coordinators started with `--shared`; a leader that
    /// stops beating for this long is replaced.
    Shared(Duration),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A journal error that is not the database's own (opening the lock file, a thread).
fn failure(message: String) -> StoreError {
    StoreError(DbError::Other(message))
}

fn parse_hash(text: String) -> db::DbResult<HashHex> {
    text.parse()
        .map_err(|e| DbError::Other(format!("a stored hash: {e}")))
}

/// States are stored as their wire names: the one place a state becomes SQL text.
macro_rules! sql_state {
    ($($name:ty),+) => {$(
        impl ToValue for $name {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::Text(self.as_str())
            }
        }

        impl FromValue for $name {
            fn from_value(value: ValueRef<'_>) -> Result<Self, String> {
                String::from_value(value)?.parse()
            }
        }
    )+};
}
sql_state!(JobState, QueueState, WebhookState, DeliveryState);

impl Store {
    /// Opens (creating and migrating) the journal wherever it is, held as `holding`
    /// says (a SQLite journal is always held alone).
    pub fn open_journal(journal: &Journal, holding: Holding) -> StoreResult<Self> {
        match journal {
            Journal::Sqlite(path) => Self::open(path),
            Journal::Postgres(url) => Self::open_postgres(url, holding),
        }
    }

    /// Opens (creating and migrating) the SQLite database at `path`.
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
        let conn = rusqlite::Connection::open(path)?;
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
        let conn = Arc::new(Mutex::new(Db::Sqlite(conn)));
        let wal = wal::Checkpointer::start(path, Arc::downgrade(&conn), wal::RESTART_FRAMES)?;
        Ok(Self {
            conn,
            garbage: Mutex::new(Vec::new()),
            _wal: Some(wal),
            _owner: Some(owner),
            _beat: None,
            leader: None,
            shared_url: None,
        })
    }

    /// Opens (creating and migrating) the journal in the PostgreSQL database at `url`,
    /// held as `holding` says: alone (beating as its owner: store/owner.rs), as a
    /// standby waiting for the owner to go, or shared (in the leader election:
    /// store/leader.rs).
    pub fn open_postgres(url: &str, holding: Holding) -> StoreResult<Self> {
        let pg = db::PgConn::connect(url)?;
        let conn = Db::Postgres(Box::new(pg));
        schema_pg::migrate(&conn)?;
        let (leader, shared_url) = match holding {
            Holding::Alone | Holding::Standby(_) => {
                let standby = match holding {
                    Holding::Standby(takeover) => Some(takeover),
                    _ => None,
                };
                owner::own(&conn, standby)?;
                (None, None)
            }
            Holding::Shared(takeover) => {
                if let Db::Postgres(pg) = &conn {
                    pg.own(db::Hold::Shared)?;
                }
                let leader = leader::Leadership::start(url, takeover)?;
                (Some(leader), Some(url.to_owned()))
            }
        };
        let conn = Arc::new(Mutex::new(conn));
        // The owner beats; coordinators sharing the journal beat as leader or not.
        let beat = (leader.is_none()).then(|| owner::Beat::start(Arc::downgrade(&conn)));
        Ok(Self {
            conn,
            garbage: Mutex::new(Vec::new()),
            _wal: None,
            _owner: None,
            _beat: beat,
            leader,
            shared_url,
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

    fn conn(&self) -> MutexGuard<'_, Db> {
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
