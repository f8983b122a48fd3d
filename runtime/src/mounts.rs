//! Directories a run sees: host directories preopened as they are, and sets of files
//! laid out in a fresh per-run directory through cap-std.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::RuntimeError;

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub enum FileSource {
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
    /// A host file, hard-linked (or copied when linking fails) into place. Mounted files
    /// are read-only for the guest, so a link never lets it change the original.
    Path(PathBuf),
}

/// A directory the guest sees.
#[derive(Clone, Debug)]
pub enum Mount {
    /// A host directory preopened at `guest`. `writable` gives the guest write access to
    /// everything below it (what `wasmesh exec --dir` does).
    Dir {
        /// The host directory.
        host: PathBuf,
        /// The absolute guest path, e.g. `/data`.
        guest: String,
        /// Whether the guest may create, change and delete files there.
        writable: bool,
    },
    /// Files laid out read-only below `guest` (e.g. `/worker`, `/input`); each name is a
    /// relative path such as `data/palette.bin`.
    Files {
        /// The absolute guest path of the directory.
        guest: String,
        /// Relative file names and their contents.
        files: Vec<(String, FileSource)>,
    },
}

impl Mount {
    /// A read-only set of files below `guest`.
    pub fn files(guest: impl Into<String>, files: Vec<(String, FileSource)>) -> Self {
        Mount::Files {
            guest: guest.into(),
            files,
        }
    }

    /// A host directory at `guest`.
    pub fn dir(host: impl Into<PathBuf>, guest: impl Into<String>, writable: bool) -> Self {
        Mount::Dir {
            host: host.into(),
            guest: guest.into(),
            writable,
        }
    }

    pub(crate) fn guest(&self) -> &str {
        match self {
            Mount::Dir { guest, .. } | Mount::Files { guest, .. } => guest,
        }
    }
}

/// Checks that `name` is a plain relative path: no root, no `..`, no `.`, no empty or
/// NUL-bearing parts. cap-std would refuse an escape anyway; checking first gives the
/// caller a clear message instead of an I/O error.
pub(crate) fn check_relative(name: &str) -> Result<&Path, RuntimeError> {
    let bad = |why: &str| RuntimeError::InvalidMount(format!("file name {name:?} {why}"));
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.contains('\0') || name.contains('\\') {
        return Err(bad("contains a NUL or backslash"));
    }
    let path = Path::new(name);
    for component in path.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(bad("climbs out with `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("is absolute")),
            Component::CurDir => return Err(bad("contains `.`")),
        }
    }
    if name.ends_with('/') || name.contains("//") {
        return Err(bad("has an empty part"));
    }
    Ok(path)
}

/// Checks that `name` can name a mounted file: a plain relative path with no `..`,
/// `.`, root or empty part. Hosts call it when a descriptor arrives, long before a run.
pub fn check_file_name(name: &str) -> Result<(), RuntimeError> {
    check_relative(name).map(|_| ())
}

/// Checks where a file set is mounted: absolute, normal, not the root.
pub(crate) fn check_guest_dir(guest: &str) -> Result<(), RuntimeError> {
    let rest = guest.strip_prefix('/').ok_or_else(|| {
        RuntimeError::InvalidMount(format!("guest path {guest:?} is not absolute"))
    })?;
    check_relative(rest).map(|_| ()).map_err(|_| {
        RuntimeError::InvalidMount(format!("guest path {guest:?} is not a plain absolute path"))
    })
}

/// Checks the name a host directory is preopened under: not empty, no NUL.
pub(crate) fn check_preopen_name(guest: &str) -> Result<(), RuntimeError> {
    if guest.is_empty() || guest.contains('\0') {
        return Err(RuntimeError::InvalidMount(format!(
            "guest path {guest:?} is empty or contains a NUL"
        )));
    }
    Ok(())
}

/// Lays `files` out below the fresh directory `root`, only through cap-std handles
/// rooted there.
pub(crate) fn materialize(root: &Path, files: &[(String, FileSource)]) -> Result<(), RuntimeError> {
    let dir = Dir::open_ambient_dir(root, ambient_authority())
        .map_err(|e| RuntimeError::host("opening a mount directory", e))?;
    for (name, source) in files {
        let rel = check_relative(name)?;
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            dir.create_dir_all(parent)
                .map_err(|e| RuntimeError::host("creating a mount directory", e))?;
        }
        match source {
            FileSource::Bytes(bytes) => dir
                .write(rel, bytes)
                .map_err(|e| RuntimeError::host("writing a mounted file", e))?,
            FileSource::Path(host) => link_or_copy(host, &dir, rel, name)?,
        }
    }
    Ok(())
}

fn link_or_copy(host: &Path, dir: &Dir, rel: &Path, name: &str) -> Result<(), RuntimeError> {
    let missing = |e: std::io::Error| {
        RuntimeError::InvalidMount(format!("source of {name:?} ({}): {e}", host.display()))
    };
    let (parent, file) = match (host.parent(), host.file_name()) {
        (Some(parent), Some(file)) => (parent, file),
        _ => return Err(missing(std::io::Error::other("not a file path"))),
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let source_dir = Dir::open_ambient_dir(parent, ambient_authority()).map_err(missing)?;
    if source_dir.hard_link(file, dir, rel).is_ok() {
        return Ok(());
    }
    source_dir.copy(file, dir, rel).map(|_| ()).map_err(missing)
}
