//! Write-ahead-log checkpoints off the request path.
//!
//! SQLite's automatic checkpoint runs inside whichever commit pushes the log past 1,000
//! pages: that commit copies the log into the database and fsyncs both, ~10 ms here,
//! while every other request waits on the connection. It was the p99 of every
//! one-job-at-a-time line in BENCHMARKS.md. So the journal's connection never
//! checkpoints (`wal_autocheckpoint = 0`), and this thread, on a connection of its own,
//! runs a passive checkpoint shortly after commits happened. A passive checkpoint takes
//! no lock a writer needs: commits go on appending to the log while it copies and
//! fsyncs, and once it has copied everything the next commit starts the log from the
//! beginning again.
//!
//! Under steady writes that moment never comes (a commit lands during every pass, so
//! the pass never ends with the whole log copied) and the log grew without bound:
//! 1.27 GB for 20,000 jobs, every frame appended to a fresh page the kernel zeroed
//! first. So once a passive pass leaves a log of more than `restart_frames`, a second
//! pass runs holding the journal connection's mutex: no commit can land during it, so
//! it copies the few frames written since the first pass (and fsyncs) and ends with the
//! whole log copied, and the next commit starts the log from the beginning (where
//! `journal_size_limit` trims it). SQLite's own `RESTART` mode would wait for a gap
//! between commits through its busy handler and, under steady commits, never get one.
//!
//! Durability is unchanged: a commit is in the log when it returns, and the log is what
//! recovery replays (see the module docs of `store`).

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::{StoreResult, failure};

/// How long after a commit its pages may wait in the log before being copied into the
/// database. Shorter means more fsyncs; longer means a larger log to read through.
const INTERVAL: Duration = Duration::from_millis(100);

/// A log longer than this after a passive checkpoint (64 MiB of 4 KiB pages, the
/// journal's `journal_size_limit`) is restarted.
pub(super) const RESTART_FRAMES: i64 = 16 << 10;

/// The checkpointing thread; stopping it (on drop) closes the journal's last
/// connection, which checkpoints the log a last time.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the database at `path` and checkpoints whenever
    /// another connection committed since the last look (`PRAGMA data_version` moved),
    /// restarting the log when a passive checkpoint leaves more than `restart_frames`
    /// (holding `journal`, the connection every commit goes through, meanwhile).
    pub(super) fn start<T: Send + 'static>(
        path: &Path,
        journal: Weak<Mutex<T>>,
        restart_frames: i64,
    ) -> StoreResult<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasmesh-wal".into())
            .spawn(move || {
                let mut seen = None;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    let now = data_version(&conn).ok();
                    if now.is_none() || now != seen {
                        seen = now;
                        if checkpoint(&conn).is_some_and(|log| log > restart_frames)
                            && let Some(journal) = journal.upgrade()
                        {
                            let _no_commits = journal.lock().unwrap_or_else(|e| e.into_inner());
                            checkpoint(&conn);
                        }
                    }
                }
                // Dropping `conn`, the journal's last connection, checkpoints the log.
            })
            .map_err(|e| failure(format!("starting the WAL checkpoint thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// Runs a passive checkpoint; returns the frames the log had (-1 when not in WAL), or
/// `None` when it failed (logged: the next pass tries again).
fn checkpoint(conn: &Connection) -> Option<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
        .inspect_err(|e| tracing::warn!("WAL checkpoint failed: {e}"))
        .ok()
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::Store;

    /// Pins the defect behind the ~10 ms p99 of one-job-at-a-time submissions: the
    /// journal's own commits ran SQLite's automatic checkpoint (copy + two fsyncs)
    /// while holding the connection every request waits on.
    #[test]
    fn commits_never_checkpoint_and_the_thread_copies_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = Store::open(&path).unwrap();
        let auto: i64 = db
            .conn()
            .query_one(
                "PRAGMA wal_autocheckpoint",
                crate::store::db::params![],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(auto, 0, "a commit must not checkpoint");
        let before = std::fs::metadata(&path).unwrap().len();
        // The database file grows only when a checkpoint copies pages into it.
        for i in 0..200 {
            db.tenant("t")
                .idempotency_begin(&format!("key-{i}-{}", "x".repeat(500)), "fp")
                .unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() <= before {
            assert!(
                Instant::now() < deadline,
                "the checkpoint thread never copied the log into the database"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Pins the unbounded log: under steady commits a passive checkpoint never ends
    /// with the whole log copied, so no commit restarted the log and it grew by every
    /// byte written (1.27 GB for 20,000 jobs in `scripts/bench-vs-ray.sh`).
    ///
    /// A restart is seen in the log's header: its first salt changes each time the log
    /// starts again from the beginning. The test commits without pause until it saw
    /// three restarts. (It once asserted a size after a fixed time instead, and failed
    /// on a CI machine whose fsync-bound commits never filled the log to the restart
    /// threshold.)
    #[test]
    fn steady_commits_keep_restarting_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
            .unwrap();
        let conn = std::sync::Arc::new(std::sync::Mutex::new(conn));
        let checkpointer =
            super::Checkpointer::start(&path, std::sync::Arc::downgrade(&conn), 256).unwrap();
        let salt = || {
            let mut header = [0u8; 20];
            let mut log = std::fs::File::open(dir.path().join("db-wal")).unwrap();
            std::io::Read::read_exact(&mut log, &mut header).unwrap();
            u32::from_be_bytes(header[16..20].try_into().unwrap())
        };
        let row = vec![7u8; 4 << 10];
        let (mut restarts, mut last, mut commits) = (0, None, 0u64);
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        while restarts < 3 {
            conn.lock()
                .unwrap()
                .execute("INSERT INTO t (data) VALUES (?1)", [&row])
                .unwrap();
            commits += 1;
            if commits % 64 == 0 {
                let now = salt();
                restarts += usize::from(last.is_some_and(|last| last != now));
                last = Some(now);
                assert!(
                    Instant::now() < deadline,
                    "{restarts} restarts of the log in {commits} steady commits"
                );
            }
        }
        drop(checkpointer);
    }

    #[test]
    fn a_second_open_of_the_same_journal_fails_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let first = Store::open(&path).unwrap();
        let err = Store::open(&path).unwrap_err().to_string();
        assert!(err.contains("in use by another process"), "{err}");
        drop(first);
        Store::open(&path).expect("reopens once the owner closed it");
    }
}
