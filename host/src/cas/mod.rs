//! The on-disk content-addressed store: blobs named by their BLAKE3 hash in sharded
//! folders, written atomically (temp file, fsync, rename) and verified on the way in.
//!
//! Which tenant may see which blob is the database's business (`blobs` table); this
//! module only keeps bytes.
//!
//! Garbage collection deletes a file only through [`Cas::remove_if_stale`]: under the
//! store's gate it checks the file's modification time, which every write of the same
//! bytes refreshes under the same gate (a blob stored again while it was being judged
//! garbage is either deleted first and written anew, or refreshed first and kept).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::model::HashHex;

/// Blobs this large are mapped by [`Cas::map`] rather than read.
const MAP_BYTES: u64 = 1 << 20;

/// A blob's bytes, read or mapped.
#[derive(Debug)]
pub enum BlobBytes {
    /// Read into memory (small blobs).
    Read(Vec<u8>),
    /// The file mapped read-only.
    Mapped(memmap2::Mmap),
}

impl AsRef<[u8]> for BlobBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Read(bytes) => bytes,
            Self::Mapped(map) => map,
        }
    }
}

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The bytes hash to something else than their name.
    #[error("the bytes hash to {actual}, not {expected}")]
    Mismatch {
        /// The name given.
        expected: HashHex,
        /// What the bytes hash to.
        actual: HashHex,
    },
    /// The blob is larger than the store accepts.
    #[error("blob larger than {0} bytes")]
    TooLarge(u64),
    /// The body passed what its tenant's `max_store_bytes` leaves.
    #[error("the upload passed the {0} bytes the tenant's quota max_store_bytes leaves")]
    Quota(u64),
    /// The body could not be read from the client.
    #[error("reading the body: {0}")]
    Body(String),
    /// A disk error.
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A blob written, verified and synced but not yet visible under its name. Its file
/// is closed (a package of many parts holds no descriptor per part); the path is
/// removed if the blob is dropped uncommitted.
#[derive(Debug)]
pub struct Staged {
    path: tempfile::TempPath,
    /// Its hash.
    pub hash: HashHex,
    /// Its size.
    pub size: u64,
}

/// The store.
#[derive(Debug)]
pub struct Cas {
    root: PathBuf,
    staging: PathBuf,
    max_blob_bytes: u64,
    /// Writers share it; a deletion by garbage collection takes it alone.
    gate: RwLock<()>,
}

impl Cas {
    /// Opens (creating) the store under `root`, with the empty blob present.
    pub fn open(root: &Path, max_blob_bytes: u64) -> std::io::Result<Self> {
        let staging = root.join("staging");
        std::fs::create_dir_all(&staging)?;
        // Leftovers of a crash mid-upload are garbage.
        for entry in std::fs::read_dir(&staging)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let cas = Self {
            root: root.to_path_buf(),
            staging,
            max_blob_bytes,
            gate: RwLock::new(()),
        };
        if !cas.contains(&HashHex::empty()) {
            let staged = cas
                .stage_bytes(HashHex::empty(), b"")
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            cas.commit(staged)?;
        }
        Ok(cas)
    }

    /// The largest blob accepted.
    pub fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }

    /// Where a blob lives (whether or not it is there).
    pub fn path(&self, hash: &HashHex) -> PathBuf {
        let hex = hash.to_string();
        self.root.join(&hex[..2]).join(&hex[2..4]).join(hex)
    }

    /// Whether the blob is on disk.
    pub fn contains(&self, hash: &HashHex) -> bool {
        self.path(hash).is_file()
    }

    /// The blob's size, if present.
    pub fn size(&self, hash: &HashHex) -> Option<u64> {
        std::fs::metadata(self.path(hash)).ok().map(|m| m.len())
    }

    /// Reads a whole blob.
    pub fn read(&self, hash: &HashHex) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(hash))
    }

    /// A blob's bytes without copying them when it is large: the file is mapped (its
    /// pages are the page cache's, already there after a write), not read into fresh
    /// memory. Reading a 256 MiB module back for its compile took ~340 ms here, most
    /// of it faulting in and filling a fresh allocation.
    pub fn map(&self, hash: &HashHex) -> std::io::Result<BlobBytes> {
        let file = std::fs::File::open(self.path(hash))?;
        if file.metadata()?.len() < MAP_BYTES {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes)?;
            return Ok(BlobBytes::Read(bytes));
        }
        // SAFETY: a mapping is sound while nobody changes the file under it. A blob
        // file is never written after its rename into place (writers stage a new
        // file; the same bytes again only refresh its modification time) and never
        // truncated; garbage collection unlinks it, which leaves a mapping valid.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(BlobBytes::Mapped(map))
    }

    fn temp(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.staging)
    }

    /// Writes `bytes` to a staging file after checking they hash to `expected`.
    pub fn stage_bytes(&self, expected: HashHex, bytes: &[u8]) -> Result<Staged, CasError> {
        if bytes.len() as u64 > self.max_blob_bytes {
            return Err(CasError::TooLarge(self.max_blob_bytes));
        }
        let actual = HashHex::of(bytes);
        if actual != expected {
            return Err(CasError::Mismatch { expected, actual });
        }
        let mut file = self.temp()?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        Ok(Staged {
            path: file.into_temp_path(),
            hash: actual,
            size: bytes.len() as u64,
        })
    }

    /// Streams a body to a staging file, hashing as it goes; never holds it whole in
    /// memory. Fails as soon as it passes the size limit.
    pub async fn stage_stream<S, E>(&self, expected: HashHex, body: S) -> Result<Staged, CasError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.stage_within(expected, body, self.max_blob_bytes, false)
            .await
    }

    /// [`Cas::stage_stream`] within `limit` bytes (at most the store's own), stopping
    /// the stream as soon as it passes it; `quota`: the limit is a tenant's quota
    /// (`CasError::Quota`), not the store's.
    pub async fn stage_within<S, E>(
        &self,
        expected: HashHex,
        mut body: S,
        limit: u64,
        quota: bool,
    ) -> Result<Staged, CasError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let file = self.temp()?;
        let (std_file, path) = file.into_parts();
        let mut out = tokio::fs::File::from_std(std_file);
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CasError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit.min(self.max_blob_bytes) {
                return Err(if quota && limit < self.max_blob_bytes {
                    CasError::Quota(limit)
                } else {
                    CasError::TooLarge(self.max_blob_bytes)
                });
            }
            hasher.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        let actual = HashHex::from(hasher.finalize());
        if actual != expected {
            return Err(CasError::Mismatch { expected, actual });
        }
        out.sync_all().await?;
        // Closed here: the path alone waits for the commit.
        drop(out);
        Ok(Staged {
            path,
            hash: actual,
            size,
        })
    }

    /// Makes a staged (already synced) blob visible under its name: rename into place,
    /// then fsync the directories that changed, so that once this returns the blob
    /// survives a power loss and ownership may be recorded. A blob already present is
    /// left as it is.
    pub fn commit(&self, staged: Staged) -> std::io::Result<()> {
        let _writing = self.writing();
        let target = self.path(&staged.hash);
        if refresh(&target)? {
            return Ok(());
        }
        let shard = target.parent().expect("blobs live in shard folders");
        let mut created = Vec::new();
        let mut dir = shard;
        while dir != self.root && !dir.is_dir() {
            created.push(dir);
            dir = dir.parent().expect("shards are inside the root");
        }
        std::fs::create_dir_all(shard)?;
        staged.path.persist(&target).map_err(|e| e.error)?;
        sync_dir(shard)?;
        // A folder made just now is only durable once its parent's entry is.
        for made in created {
            sync_dir(made.parent().expect("inside the root"))?;
        }
        Ok(())
    }

    fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes a blob (one nothing refers to any more); a missing one is no error.
    pub fn remove(&self, hash: &HashHex) -> std::io::Result<()> {
        let _alone = self.gate.write().unwrap_or_else(|e| e.into_inner());
        remove_file(&self.path(hash))
    }

    /// Deletes a blob whose file was last written before `before`; its size when it
    /// was deleted. The empty blob stays.
    pub fn remove_if_stale(
        &self,
        hash: &HashHex,
        before: SystemTime,
    ) -> std::io::Result<Option<u64>> {
        if *hash == HashHex::empty() {
            return Ok(None);
        }
        let _alone = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let path = self.path(hash);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        if meta.modified()? >= before {
            return Ok(None);
        }
        remove_file(&path)?;
        Ok(Some(meta.len()))
    }

    /// Every blob on disk: (hash, size, last written). Files that are not blobs
    /// (staging, stray names) are skipped.
    pub fn list(&self) -> std::io::Result<Vec<(HashHex, u64, SystemTime)>> {
        let mut blobs = Vec::new();
        for first in std::fs::read_dir(&self.root)?.flatten() {
            if first.path() == self.staging || !first.path().is_dir() {
                continue;
            }
            for second in std::fs::read_dir(first.path())?.flatten() {
                let Ok(files) = std::fs::read_dir(second.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let Some(hash) = file
                        .file_name()
                        .to_str()
                        .and_then(|name| name.parse::<HashHex>().ok())
                    else {
                        continue;
                    };
                    if let Ok(meta) = file.metadata() {
                        blobs.push((hash, meta.len(), meta.modified()?));
                    }
                }
            }
        }
        Ok(blobs)
    }

    /// Marks a blob present on disk as written now (garbage collection leaves it
    /// alone for its grace period); false when it is not there.
    pub fn touch(&self, hash: &HashHex) -> std::io::Result<bool> {
        let _writing = self.writing();
        refresh(&self.path(hash))
    }

    /// Stores bytes whose hash the caller computed itself (outputs of runs); bytes
    /// already present are marked as written now.
    pub fn put_own(&self, bytes: &[u8]) -> std::io::Result<HashHex> {
        let hash = HashHex::of(bytes);
        if !self.touch(&hash)? {
            let staged = self
                .stage_bytes(hash, bytes)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.commit(staged)?;
        }
        Ok(hash)
    }
}

/// Marks an existing blob file as written now; false when there is none.
fn refresh(path: &Path) -> std::io::Result<bool> {
    match std::fs::File::options().write(true).open(path) {
        Ok(file) => {
            file.set_modified(SystemTime::now())?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// fsyncs a directory, making the entries renamed into it durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blobs_are_mapped_small_ones_read_and_both_give_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), 8 << 20).unwrap();
        let small = b"small".to_vec();
        let large: Vec<u8> = (0..(MAP_BYTES as usize + 4096)).map(|i| i as u8).collect();
        for bytes in [&small, &large] {
            let hash = HashHex::of(bytes);
            cas.commit(cas.stage_bytes(hash, bytes).unwrap()).unwrap();
            let got = cas.map(&hash).unwrap();
            assert_eq!(got.as_ref(), bytes.as_slice());
            assert_eq!(
                matches!(got, BlobBytes::Mapped(_)),
                bytes.len() as u64 >= MAP_BYTES
            );
        }
        assert!(cas.map(&HashHex::of(b"absent")).is_err());
    }

    #[test]
    fn blobs_round_trip_and_mismatches_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), 1024).unwrap();
        assert!(cas.contains(&HashHex::empty()));
        let hash = HashHex::of(b"hello");
        cas.commit(cas.stage_bytes(hash, b"hello").unwrap())
            .unwrap();
        assert_eq!(cas.read(&hash).unwrap(), b"hello");
        assert_eq!(cas.size(&hash), Some(5));

        let wrong = HashHex::of(b"other");
        assert!(matches!(
            cas.stage_bytes(wrong, b"hello"),
            Err(CasError::Mismatch { .. })
        ));
        assert!(!cas.contains(&wrong));
        assert!(matches!(
            cas.stage_bytes(HashHex::of(&[0; 2000]), &[0; 2000]),
            Err(CasError::TooLarge(1024))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("staging"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn only_files_not_written_since_the_cutoff_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), 1024).unwrap();
        let hash = cas.put_own(b"old bytes").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(cas.path(&hash))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cutoff = SystemTime::now() - std::time::Duration::from_secs(60);
        // Written again (the same bytes): fresh, so it stays.
        assert_eq!(cas.put_own(b"old bytes").unwrap(), hash);
        assert_eq!(cas.remove_if_stale(&hash, cutoff).unwrap(), None);
        assert!(cas.contains(&hash));
        // Stale: removed, with its size; the empty blob never is.
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        assert_eq!(cas.remove_if_stale(&hash, later).unwrap(), Some(9));
        assert!(!cas.contains(&hash));
        assert_eq!(cas.remove_if_stale(&HashHex::empty(), later).unwrap(), None);
        assert!(cas.touch(&HashHex::empty()).unwrap());
        assert!(!cas.touch(&hash).unwrap());
        let listed: Vec<HashHex> = cas.list().unwrap().into_iter().map(|b| b.0).collect();
        assert_eq!(listed, vec![HashHex::empty()]);
    }
}
