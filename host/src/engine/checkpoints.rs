//! Checkpoints: how often a run's saves are kept, and the blobs of old ones deleted.

use std::time::Duration;

use super::{Engine, Fence};
use crate::model::HashHex;

/// A run's checkpoints are written to the store at most this often; a save that comes
/// sooner is kept in the guest (its `checkpoint::load` returns it) but not stored, so a
/// guest saving in a loop cannot fill the disk or hog the journal.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Checkpoints one run writes at most (an hour of one a second); later saves are not
/// stored.
pub const MAX_CHECKPOINT_WRITES: u32 = 3600;

impl Engine {
    /// Deletes the blobs of checkpoints that were replaced or whose job finished,
    /// unless a tenant holds the same bytes or another job has them as its checkpoint.
    pub fn sweep_checkpoints(&self) {
        for hash in self.store.take_garbage() {
            if hash == HashHex::empty() {
                continue;
            }
            let removed = self
                .store
                .unreferenced(&hash)
                .map_err(|e| e.to_string())
                .and_then(|free| {
                    if free {
                        self.cas.remove(&hash).map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = removed {
                tracing::warn!(%hash, error = %e, "deleting an old checkpoint");
            }
        }
    }

    /// Records `hash` (already in the store) as the latest checkpoint of a running
    /// job, under `fence`; the one it replaces is deleted. False when the fence is
    /// stale (nothing was written).
    pub fn save_checkpoint(
        &self,
        lsn: u64,
        hash: &HashHex,
        fence: Fence,
    ) -> Result<bool, crate::engine::EngineError> {
        let saved = self.store.save_checkpoint(lsn, hash, fence)?;
        self.sweep_checkpoints();
        Ok(saved)
    }
}
