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
//! beginning again, so the log stays as small as the writes of one interval.
//!
//! Durability is unchanged: a commit is in the log when it returns, and the log is what
//! recovery replays (see the module docs of `store`).

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::{StoreResult, failure};

/// How long after a commit its pages may wait in the log before being copied into the
/// database. Shorter means more fsyncs; longer means a larger log to read through.
const INTERVAL: Duration = Duration::from_millis(100);

/// The checkpointing thread; stopping it (on drop) closes the journal's last
/// connection, which checkpoints the log a last time.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the database at `path` and checkpoints whenever
    /// another connection committed since the last look (`PRAGMA data_version` moved).
    pub(super) fn start(path: &Path) -> StoreResult<Self> {
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
                        if let Err(e) = checkpoint(&conn) {
                            tracing::warn!("WAL checkpoint failed: {e}");
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

fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
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
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
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
