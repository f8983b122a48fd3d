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
    /// The tenant's quota left no room for the next action: nothing more is added.
    full: bool,
}

/// Recordings: the active ones (one per tenant at most), and the bytes each tenant's
/// recordings hold on disk (they count against its `max_store_bytes`).
#[derive(Debug, Default)]
pub struct Recorder {
    root: PathBuf,
    active: Mutex<HashMap<String, Active>>,
    bytes: Mutex<HashMap<String, u64>>,
}

/// A recording that was stopped.
#[derive(Debug)]
pub struct Stopped {
    /// Its id.
    pub id: String,
    /// Actions it holds.
    pub actions: u64,
    /// Whether the tenant's quota stopped it taking actions before it was stopped.
    pub full: bool,
}

/// The file naming a recording's tenant.
const OWNER: &str = "tenant";

/// The bytes under `path` (hard links counted at their full size: a recording may
/// outlive the blob it linked).
fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Recorder {
    /// The recordings under `root`, their bytes counted per tenant.
    pub fn open(root: PathBuf) -> Self {
        let mut bytes: HashMap<String, u64> = HashMap::new();
        for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if let Ok(tenant) = std::fs::read_to_string(dir.path().join(OWNER)) {
                *bytes.entry(tenant).or_default() += disk_bytes(&dir.path());
            }
        }
        Self {
            root,
            active: Mutex::default(),
            bytes: Mutex::new(bytes),
        }
    }

    fn add_bytes(&self, tenant: &str, delta: i64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let held = bytes.entry(tenant.to_string()).or_default();
        *held = held.saturating_add_signed(delta);
    }

    /// The bytes `tenant`'s recordings hold.
    pub fn bytes_of(&self, tenant: &str) -> u64 {
        let bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        bytes.get(tenant).copied().unwrap_or(0)
    }

    /// Starts recording for `tenant` (or returns the recording already running).
    pub fn start(&self, tenant: &str) -> std::io::Result<String> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = active.get(tenant) {
            return Ok(existing.id.clone());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.root.join(&id);
        std::fs::create_dir_all(dir.join("chunks"))?;
        std::fs::write(dir.join(OWNER), tenant)?;
        let actions = std::fs::File::create(dir.join("actions.jsonl"))?;
        self.add_bytes(tenant, tenant.len() as i64);
        active.insert(
            tenant.into(),
            Active {
                id: id.clone(),
                dir,
                actions,
                count: 0,
                full: false,
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
            full: active.full,
        }))
    }

    /// Deletes `tenant`'s recording `id` (stopping it first if it runs); false when
    /// the tenant has no such recording.
    pub fn delete(&self, tenant: &str, id: &str) -> std::io::Result<bool> {
        let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit());
        let dir = self.root.join(id);
        if !valid || std::fs::read_to_string(dir.join(OWNER)).ok().as_deref() != Some(tenant) {
            return Ok(false);
        }
        {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.get(tenant).is_some_and(|a| a.id == id) {
                active.remove(tenant);
            }
        }
        let held = disk_bytes(&dir);
        std::fs::remove_dir_all(&dir)?;
        self.add_bytes(tenant, -(held as i64));
        Ok(true)
    }

    /// Deletes the recordings not running whose last action was added before
    /// `before` (their retention); how many.
    pub fn expire(&self, before: std::time::SystemTime) -> usize {
        let running: Vec<String> = {
            let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            active.values().map(|a| a.id.clone()).collect()
        };
        let mut expired = 0;
        for dir in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = dir.file_name().to_string_lossy().into_owned();
            let Ok(tenant) = std::fs::read_to_string(dir.path().join(OWNER)) else {
                continue;
            };
            let modified =
                std::fs::metadata(dir.path().join("actions.jsonl")).and_then(|m| m.modified());
            if running.contains(&id) || !modified.is_ok_and(|at| at < before) {
                continue;
            }
            if self.delete(&tenant, &id).unwrap_or(false) {
                expired += 1;
            }
        }
        expired
    }

    /// Whether the tenant is recording (a cheap check before the real work).
    pub fn is_recording(&self, tenant: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(tenant)
    }

    /// Appends accepted actions with their workers and chunks, within `room` bytes
    /// (what the tenant's quota leaves, when it has one): an action that does not fit
    /// fills the recording, which takes nothing more.
    pub fn append(
        &self,
        cas: &Cas,
        tenant: &str,
        entries: &[(&WorkerDescriptor, &ActionDescriptor, &str)],
        room: Option<u64>,
    ) -> std::io::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let Some(recording) = active.get_mut(tenant) else {
            return Ok(());
        };
        let mut added = 0u64;
        for (worker, action, canonical) in entries {
            if recording.full {
                break;
            }
            let chunks: Vec<HashHex> = worker.chunks().into_iter().chain(action.chunks()).collect();
            let action: Value = serde_json::from_str(canonical).map_err(std::io::Error::other)?;
            let line = json!({"worker": worker, "action": action}).to_string();
            let new_bytes: u64 = chunks
                .iter()
                .filter(|hash| !recording.dir.join("chunks").join(hash.to_string()).exists())
                .map(|hash| cas.size(hash).unwrap_or(0))
                .sum::<u64>()
                + line.len() as u64
                + 1;
            if room.is_some_and(|room| added + new_bytes > room) {
                recording.full = true;
                break;
            }
            for hash in &chunks {
                copy_chunk(cas, &recording.dir, hash)?;
            }
            writeln!(recording.actions, "{line}")?;
            recording.count += 1;
            added += new_bytes;
        }
        recording.actions.flush()?;
        drop(active);
        self.add_bytes(tenant, added as i64);
        Ok(())
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
