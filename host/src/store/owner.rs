//! The one process that owns a PostgreSQL journal, and the standby that takes it over.
//!
//! The owner holds a session advisory lock keyed by the journal's schema (taken again
//! by every new connection: `PgConn::own`) and beats: row `wasmesh_owner` names its
//! server process and the last beat. A standby (`wasmesh coordinator --standby`)
//! waits for the lock; when the owner's beat is older than the takeover time it ends
//! the owner's server session (`pg_terminate_backend`), which releases the lock and
//! aborts whatever the owner had in flight, and takes the journal. An owner that was
//! frozen (SIGSTOP) and resumes finds its session gone, cannot take the lock again, and
//! exits: it never writes to a journal another process owns.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::db::{Db, Hold, IN_USE, params};
use super::{StoreResult, now_ms};

/// How often the owner beats.
const BEAT: Duration = Duration::from_secs(1);

/// Beats refused in a row (the journal owned by another session) before the process
/// gives up the journal and exits.
const REFUSED_BEATS: u32 = 10;

/// How often a standby looks again.
const LOOK: Duration = Duration::from_millis(250);

/// Takes the journal: at once, or with `standby`, once its owner let go or stopped
/// beating for that long.
pub(super) fn own(db: &Db, standby: Option<Duration>) -> StoreResult<()> {
    let Db::Postgres(pg) = db else {
        return Ok(());
    };
    let mut announced = false;
    loop {
        let refused = match pg.own(Hold::Alone) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(takeover) = standby.filter(|_| refused.to_string().contains(IN_USE)) else {
            return Err(refused.into());
        };
        if !announced {
            tracing::info!(
                "standing by: another coordinator owns the journal; taking it over when it \
                 lets go or stops beating for {takeover:?}"
            );
            announced = true;
        }
        let cutoff = now_ms() - takeover.as_millis() as i64;
        let ended = db.query_opt(
            "SELECT pg_terminate_backend(CAST(pid AS INTEGER)) FROM wasmesh_owner \
             WHERE id = 1 AND beat_ms < ?1",
            params![cutoff],
            |row| row.get::<bool>(0),
        )?;
        if ended == Some(true) {
            tracing::warn!("the journal's owner stopped beating; ended its session to take over");
        }
        std::thread::sleep(LOOK);
    }
}

/// The owner's beat: a thread of its own, stopped when dropped.
#[derive(Debug)]
pub(super) struct Beat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Beat {
    /// Beats every second through `journal`. Finding the journal owned by another
    /// process (this one was frozen past the takeover and its session ended) exits the
    /// process: everything it would do from then on would fail anyway, and a
    /// coordinator that cannot write its journal must not go on answering as one.
    pub(super) fn start(journal: Weak<Mutex<Db>>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasmesh-owner".into())
            .spawn(move || {
                let mut refused = 0;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(BEAT) {
                    let Some(journal) = journal.upgrade() else {
                        return;
                    };
                    let beat = journal.lock().unwrap_or_else(|e| e.into_inner()).execute(
                        "UPDATE wasmesh_owner SET beat_ms = ?1 \
                         WHERE id = 1 AND pid = pg_backend_pid()",
                        params![now_ms()],
                    );
                    match beat {
                        Ok(1) => refused = 0,
                        Ok(_) => lost("another process's session is the journal's owner"),
                        // Refused beats in a row: one refusal may be this process's own
                        // old session (cut off by a call's timeout, not yet ended by the
                        // server); a journal taken over stays refused.
                        Err(e) if e.to_string().contains(IN_USE) => {
                            refused += 1;
                            if refused >= REFUSED_BEATS {
                                lost(&e.to_string());
                            }
                            tracing::warn!(error = %e, "the journal refused this process's beat");
                            continue;
                        }
                        // The database is away: the calls that need it fail meanwhile.
                        Err(e) => tracing::warn!(error = %e, "the journal's beat failed"),
                    }
                }
            })
            .expect("starting the journal's beat");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

fn lost(why: &str) -> ! {
    tracing::error!(
        why,
        "this process lost its journal to another (it stopped beating past the takeover \
         time, frozen or cut off); exiting without writing to it"
    );
    std::process::exit(3)
}

impl Drop for Beat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
