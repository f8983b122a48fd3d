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

/// Directory levels a run's `/tmp` may have below it; deeper is a breach of the quota
/// (each level the measuring walk descends holds one open descriptor).
pub const MAX_TMP_DEPTH: usize = 64;

/// Entries (files, directories, links) a run's `/tmp` may hold; more is a breach (each
/// is one inode, and the walk that measures `/tmp` visits each).
pub const MAX_TMP_ENTRIES: u64 = 100_000;

/// What a run keeps in its `/tmp`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Bytes of regular files (their length, so sparse files count in full).
    pub bytes: u64,
    /// Entries seen.
    pub entries: u64,
    /// Whether the walk stopped early: nesting deeper than [`MAX_TMP_DEPTH`], more than
    /// [`MAX_TMP_ENTRIES`] entries, or an entry it could not measure.
    pub beyond: bool,
}

/// Measures `dir` through descriptors (`openat`/`fstatat` via cap-std), never by path,
/// so a tree nested past `PATH_MAX` is counted like any other; links are not followed.
pub(crate) fn usage(dir: &Path) -> Usage {
    let mut usage = Usage::default();
    match cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()) {
        Ok(root) => walk(&root, 0, &mut usage),
        Err(_) => usage.beyond = true,
    }
    usage
}

fn walk(dir: &cap_std::fs::Dir, depth: usize, usage: &mut Usage) {
    let Ok(entries) = dir.entries() else {
        usage.beyond = true;
        return;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            usage.beyond = true;
            return;
        };
        usage.entries += 1;
        if usage.entries > MAX_TMP_ENTRIES {
            usage.beyond = true;
            return;
        }
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => {
                if depth + 1 >= MAX_TMP_DEPTH {
                    usage.beyond = true;
                    return;
                }
                match entry.open_dir() {
                    Ok(sub) => walk(&sub, depth + 1, usage),
                    Err(_) => usage.beyond = true,
                }
            }
            Ok(kind) if kind.is_file() => {
                usage.bytes += entry.metadata().map_or(0, |m| m.len());
            }
            Ok(_) => {}
            Err(_) => usage.beyond = true,
        }
        if usage.beyond {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 10, item 6): the walk went by path, so a subtree nested past
    /// PATH_MAX counted as 0 bytes.
    #[test]
    fn usage_counts_trees_nested_past_path_max() {
        let root = tempfile::tempdir().unwrap();
        let top =
            cap_std::fs::Dir::open_ambient_dir(root.path(), cap_std::ambient_authority()).unwrap();
        // 40 levels of 200-byte names: 8,000 bytes of path, twice PATH_MAX.
        let name = "d".repeat(200);
        let mut dir = top.try_clone().unwrap();
        for _ in 0..40 {
            dir.create_dir(&name).unwrap();
            dir = dir.open_dir(&name).unwrap();
        }
        dir.write("deep", vec![7u8; 5000]).unwrap();
        top.write("shallow", vec![1u8; 300]).unwrap();
        let found = usage(root.path());
        assert_eq!(found.bytes, 5300);
        assert_eq!(found.entries, 42);
        assert!(!found.beyond);

        for _ in 0..MAX_TMP_DEPTH {
            dir.create_dir("x").unwrap();
            dir = dir.open_dir("x").unwrap();
        }
        assert!(
            usage(root.path()).beyond,
            "nesting past MAX_TMP_DEPTH is a breach"
        );
    }
}
