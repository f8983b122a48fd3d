//! The leader of the coordinators sharing a journal (`wasmesh coordinator --shared`):
//! the one that runs the duties that must run once (webhook deliveries, housekeeping,
//! garbage collection, autoscaling, the expiry of silent nodes' leases).
//!
//! Leadership is a session advisory lock keyed by the journal's schema, held on a
//! connection of the leader's own, and a beat (row 2 of `wasmesh_owner`, in the
//! database's clock). A coordinator that is not the leader tries the lock every
//! second, and ends the session of a leader whose beat is older than the takeover
//! time (frozen or cut off), which lets the lock go. The leader leads only for half
//! the takeover time after its last beat went through, so a leader frozen past the
//! takeover has stopped leading (its own clock says so the moment it resumes) before
//! another can start.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::db::{Db, PgConn, params};
use super::{StoreResult, now_ms};

/// How often the leader beats and the others try the lock.
const BEAT: Duration = Duration::from_secs(1);

/// The database's clock in milliseconds, so every coordinator's beat is read on one
/// clock.
pub(super) const DB_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// The election: a thread of its own on a connection of its own, stopped when dropped.
#[derive(Debug)]
pub(super) struct Leadership {
    /// Until when (this process's clock, Unix ms) it leads; 0 when it does not.
    until: Arc<AtomicI64>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Leadership {
    /// Joins the election for the journal at `url`.
    pub(super) fn start(url: &str, takeover: Duration) -> StoreResult<Self> {
        let db = Db::Postgres(Box::new(PgConn::connect(url)?));
        let until = Arc::new(AtomicI64::new(0));
        let (stop, stopped) = mpsc::channel::<()>();
        let leads = until.clone();
        let thread = std::thread::Builder::new()
            .name("wasmesh-leader".into())
            .spawn(move || {
                let mut leading = false;
                let takeover_ms = takeover.as_millis() as i64;
                loop {
                    leading = round(&db, leading, takeover_ms);
                    leads.store(
                        if leading {
                            now_ms() + takeover_ms / 2
                        } else {
                            0
                        },
                        Ordering::SeqCst,
                    );
                    if let Err(RecvTimeoutError::Disconnected) = stopped.recv_timeout(BEAT) {
                        return;
                    }
                }
            })
            .map_err(|e| super::failure(format!("starting the leader election: {e}")))?;
        Ok(Self {
            until,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Whether this process leads now.
    pub(super) fn leads(&self) -> bool {
        now_ms() < self.until.load(Ordering::SeqCst)
    }
}

/// One beat (leading) or one try (not): whether it leads afterwards.
fn round(db: &Db, leading: bool, takeover_ms: i64) -> bool {
    if leading {
        let beat = db.execute(
            &format!(
                "UPDATE wasmesh_owner SET beat_ms = {DB_NOW_MS} \
                 WHERE id = 2 AND pid = pg_backend_pid()"
            ),
            params![],
        );
        return match beat {
            Ok(1) => true,
            Ok(_) => {
                tracing::warn!("another coordinator leads now; this one stopped leading");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "the leader's beat failed; this coordinator stopped leading");
                false
            }
        };
    }
    let taken = db.query_one(
        "SELECT pg_try_advisory_lock(hashtextextended('wasmesh leader ' || current_schema(), 0))",
        params![],
        |row| row.get::<bool>(0),
    );
    match taken {
        Ok(true) => {
            let claimed = db.execute(
                &format!(
                    "INSERT INTO wasmesh_owner (id, pid, beat_ms) VALUES (2, pg_backend_pid(), {DB_NOW_MS}) \
                     ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, beat_ms = excluded.beat_ms"
                ),
                params![],
            );
            match claimed {
                Ok(_) => {
                    tracing::info!("this coordinator leads the shared journal");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming the leadership");
                    false
                }
            }
        }
        Ok(false) => {
            let ended = db.query_opt(
                &format!(
                    "SELECT pg_terminate_backend(CAST(pid AS INTEGER)) FROM wasmesh_owner \
                     WHERE id = 2 AND beat_ms < {DB_NOW_MS} - ?1"
                ),
                params![takeover_ms],
                |row| row.get::<bool>(0),
            );
            if let Ok(Some(true)) = ended {
                tracing::warn!("the leader stopped beating; ended its session to take over");
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "trying the leadership");
            false
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
