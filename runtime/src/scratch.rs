//! Per-run scratch space: `/tmp` directories reused across runs, emptied in between.
//!
//! Making and removing a directory costs ~0.5 ms on an ext4 disk, ten times a trivial
//! run, so each `/tmp` is made once and handed to one run at a time. A directory goes
//! back to the pool only once it is empty again; one that cannot be emptied is deleted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RuntimeError;

/// The scratch root of one sandbox and its pool of empty directories.
#[derive(Debug)]
pub(crate) struct ScratchPool {
    root: tempfile::TempDir,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

/// A directory lent to one run: an empty pooled `/tmp`, or a fresh directory for file
/// mounts that is deleted afterwards.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    pool: &'a ScratchPool,
    path: PathBuf,
    reusable: bool,
}

impl ScratchPool {
    pub(crate) fn new(parent: Option<&Path>) -> Result<Self, RuntimeError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        std::fs::create_dir_all(&parent)
            .map_err(|e| RuntimeError::host("creating the scratch directory", e))?;
        let root = tempfile::Builder::new()
            .prefix("wasmesh-scratch-")
            .tempdir_in(parent)
            .map_err(|e| RuntimeError::host("creating the scratch directory", e))?;
        Ok(Self {
            root,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        })
    }

    fn fresh(&self, kind: &str) -> Result<PathBuf, RuntimeError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.root.path().join(format!("{kind}-{n}"));
        std::fs::create_dir(&path)
            .map_err(|e| RuntimeError::host("creating a scratch directory", e))?;
        Ok(path)
    }

    /// An empty directory for a run's `/tmp`.
    pub(crate) fn tmp(&self) -> Result<Lease<'_>, RuntimeError> {
        let pooled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let path = match pooled {
            Some(path) => path,
            None => self.fresh("tmp")?,
        };
        Ok(Lease {
            pool: self,
            path,
            reusable: true,
        })
    }

    /// A fresh directory for one run's file mount, deleted after the run.
    pub(crate) fn mount(&self) -> Result<Lease<'_>, RuntimeError> {
        Ok(Lease {
            pool: self,
            path: self.fresh("mount")?,
            reusable: false,
        })
    }
}

impl Lease<'_> {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.reusable && empty(&self.path) {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(std::mem::take(&mut self.path));
            return;
        }
        // std's remove_dir_all does not follow symlinks, so a guest's links cannot make
        // it delete anything outside.
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a scratch directory");
        }
    }
}

/// Empties `dir` in place; true when it is empty afterwards.
fn empty(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        if removed.is_err() {
            return false;
        }
    }
    true
}

/// Bytes of regular files below `dir` (links are not followed).
pub(crate) fn usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => total += usage(&entry.path()),
            Ok(kind) if kind.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
            _ => {}
        }
    }
    total
}
