//! Recordings: while one is active for a tenant, every accepted action is appended,
//! with its worker and every chunk it needs, to a directory that `wasmesh replay` can
//! resubmit to any server.
//!
//! Layout of a recording directory: `actions.jsonl` (one `{"worker": descriptor,
//! "action": descriptor}` per line, in acceptance order) and `chunks/HASH` (the bytes).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::cas::Cas;
use crate::model::{ActionDescriptor, HashHex, WorkerDescriptor};

#[derive(Debug)]
struct Active {
    id: String,
    dir: PathBuf,
    actions: std::fs::File,
    count: u64,
}

/// Active recordings, one per tenant at most.
#[derive(Debug, Default)]
pub struct Recorder {
    active: Mutex<HashMap<String, Active>>,
}

/// A recording that was stopped.
#[derive(Debug)]
pub struct Stopped {
    /// Its id.
    pub id: String,
    /// Actions it holds.
    pub actions: u64,
    /// Its directory.
    pub dir: PathBuf,
}

impl Recorder {
    /// Starts recording for `tenant` (or returns the recording already running).
    pub fn start(&self, root: &Path, tenant: &str) -> std::io::Result<String> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = active.get(tenant) {
            return Ok(existing.id.clone());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = root.join(&id);
        std::fs::create_dir_all(dir.join("chunks"))?;
        let actions = std::fs::File::create(dir.join("actions.jsonl"))?;
        active.insert(
            tenant.into(),
            Active {
                id: id.clone(),
                dir,
                actions,
                count: 0,
            },
        );
        Ok(id)
    }

    /// Stops the tenant's recording; `None` when none was running.
    pub fn stop(&self, tenant: &str) -> std::io::Result<Option<Stopped>> {
        let Some(active) = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant)
        else {
            return Ok(None);
        };
        active.actions.sync_all()?;
        Ok(Some(Stopped {
            id: active.id,
            actions: active.count,
            dir: active.dir,
        }))
    }

    /// Whether the tenant is recording (a cheap check before the real work).
    pub fn is_recording(&self, tenant: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(tenant)
    }

    /// Appends accepted actions with their workers and chunks.
    pub fn append(
        &self,
        cas: &Cas,
        tenant: &str,
        entries: &[(&WorkerDescriptor, &ActionDescriptor, &str)],
    ) -> std::io::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let Some(recording) = active.get_mut(tenant) else {
            return Ok(());
        };
        for (worker, action, canonical) in entries {
            for hash in worker.chunks().into_iter().chain(action.chunks()) {
                copy_chunk(cas, &recording.dir, &hash)?;
            }
            let action: Value = serde_json::from_str(canonical).map_err(std::io::Error::other)?;
            let line = json!({"worker": worker, "action": action});
            writeln!(recording.actions, "{line}")?;
            recording.count += 1;
        }
        recording.actions.flush()
    }
}

fn copy_chunk(cas: &Cas, dir: &Path, hash: &HashHex) -> std::io::Result<()> {
    let target = dir.join("chunks").join(hash.to_string());
    if target.exists() {
        return Ok(());
    }
    let source = cas.path(hash);
    // Blobs are immutable, so a hard link is as good as a copy and costs nothing.
    std::fs::hard_link(&source, &target).or_else(|_| std::fs::copy(&source, &target).map(|_| ()))
}
