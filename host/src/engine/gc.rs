//! Garbage collection of blobs: mark, then sweep.
//!
//! A blob is needed while something names it: a registered worker's descriptor, an
//! unretired job's action, result or checkpoint (pending jobs included). Recordings
//! copy their chunks into their own directory and need nothing here. A tenant's
//! ownership row is garbage once it is untouched for the grace period
//! (`--gc-grace`) and nothing of that tenant names the blob; a file is garbage once
//! no row holds it, nothing names it and it was not written for the grace period.
//!
//! *Mark* reads the candidates (stale rows, stale files) and then every text that may
//! name one, in pages. *Sweep* deletes each row only if it is still stale at that
//! moment (a request touching it since wins), then each file only if no row holds it
//! and no job has it as its checkpoint at that moment, and only if its file is still
//! stale (`Cas::remove_if_stale`, under the store's gate). A crash anywhere leaves a
//! consistent store: a deleted row's file left behind is an orphan the next sweep
//! deletes; nothing is deleted that a row or a reference still needs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Engine, EngineError};
use crate::model::HashHex;
use crate::store::now_ms;

/// Unretired jobs read per page while marking.
const PAGE: usize = 1000;

/// Hashes a dry run lists at most.
const LISTED: usize = 1000;

/// What a sweep freed (or, dry, would free).
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Nothing was deleted: this is what a sweep would do now.
    pub dry_run: bool,
    /// The grace period, in milliseconds.
    pub grace_ms: u64,
    /// Tenants' ownership rows deleted.
    pub rows: u64,
    /// Blob files deleted.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The deleted blobs (at most 1000).
    pub freed: Vec<HashHex>,
    /// Blob files in the store and their bytes, after the sweep.
    pub store_blobs: u64,
    pub store_bytes: u64,
}

/// Every distinct 64-hex-digit word in `text`: whatever might name a blob. More than
/// the real references at worst (an argument that looks like a hash keeps a blob),
/// never fewer.
fn hashes_in(text: &str, mut found: impl FnMut(HashHex)) {
    let bytes = text.as_bytes();
    let mut start = None;
    for (i, byte) in bytes.iter().chain([&b' ']).enumerate() {
        match (byte.is_ascii_hexdigit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s == 64
                    && let Ok(hash) = text[s..i].parse::<HashHex>()
                {
                    found(hash);
                }
                start = None;
            }
            _ => {}
        }
    }
}

/// Test hooks, read from the environment at each sweep (never set in production):
/// `WASMESH_GC_PAUSE_AFTER_MARK=PATH` creates PATH after marking and waits (up to a
/// minute) until it is removed; `WASMESH_GC_ABORT_AFTER=N` aborts the process right
/// after the Nth row deletion, before any file of it is deleted.
#[derive(Debug, Default)]
struct Hooks {
    pause: Option<std::path::PathBuf>,
    abort_after: Option<u64>,
}

impl Hooks {
    fn from_env() -> Self {
        Self {
            pause: std::env::var_os("WASMESH_GC_PAUSE_AFTER_MARK").map(Into::into),
            abort_after: std::env::var("WASMESH_GC_ABORT_AFTER")
                .ok()
                .and_then(|n| n.parse().ok()),
        }
    }

    fn after_mark(&self) {
        let Some(path) = &self.pause else { return };
        if std::fs::write(path, b"marked").is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn after_row(&self, deleted: u64) {
        if self.abort_after == Some(deleted) {
            std::process::abort();
        }
    }
}

/// The plan a mark makes.
struct Marked {
    /// Ownership rows to delete: (tenant, hash).
    rows: Vec<(String, HashHex)>,
    /// Files to delete once their rows are gone: (hash, size).
    files: Vec<(HashHex, u64)>,
    store_blobs: u64,
    store_bytes: u64,
}

impl Engine {
    /// Collects garbage as of now (see the module's comment); `dry_run` deletes
    /// nothing and reports what a sweep would. One collection runs at a time.
    pub fn collect_garbage(&self, dry_run: bool) -> Result<GcReport, EngineError> {
        let _one = self.gc.lock().unwrap_or_else(|e| e.into_inner());
        let grace = self.config.gc_grace;
        let cutoff_ms = now_ms() - grace.as_millis() as i64;
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let marked = self.mark(cutoff_ms, cutoff)?;
        let mut report = GcReport {
            dry_run,
            grace_ms: grace.as_millis() as u64,
            store_blobs: marked.store_blobs,
            store_bytes: marked.store_bytes,
            ..GcReport::default()
        };
        if dry_run {
            report.rows = marked.rows.len() as u64;
            report.blobs = marked.files.len() as u64;
            report.bytes = marked.files.iter().map(|(_, size)| size).sum();
            report.freed = marked.files.iter().take(LISTED).map(|(h, _)| *h).collect();
            return Ok(report);
        }
        let hooks = Hooks::from_env();
        hooks.after_mark();
        let unscoped = self.store.unscoped();
        for (tenant, hash) in &marked.rows {
            if unscoped.drop_stale_blob(tenant, hash, cutoff_ms)? {
                report.rows += 1;
                hooks.after_row(report.rows);
            }
        }
        for (hash, _) in &marked.files {
            if !self.store.unreferenced(hash)? {
                continue;
            }
            if let Some(size) = self.cas.remove_if_stale(hash, cutoff)? {
                report.blobs += 1;
                report.bytes += size;
                if report.freed.len() < LISTED {
                    report.freed.push(*hash);
                }
            }
        }
        report.store_blobs = report.store_blobs.saturating_sub(report.blobs);
        report.store_bytes = report.store_bytes.saturating_sub(report.bytes);
        self.metrics.gc_rows.add(report.rows);
        self.metrics.gc_blobs.add(report.blobs);
        self.metrics.gc_bytes.add(report.bytes);
        self.measured(report.store_blobs, report.store_bytes);
        if report.rows + report.blobs > 0 {
            tracing::info!(
                rows = report.rows,
                blobs = report.blobs,
                bytes = report.bytes,
                "garbage collection"
            );
        }
        Ok(report)
    }

    fn measured(&self, blobs: u64, bytes: u64) {
        self.metrics.store_blobs.store(blobs, Ordering::Relaxed);
        self.metrics.store_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Measures the store (for `/metrics`) without deleting anything.
    pub fn measure_store(&self) -> Result<(), EngineError> {
        let files = self
            .cas
            .list()
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let bytes = files.iter().map(|(_, size, _)| size).sum();
        self.measured(files.len() as u64, bytes);
        Ok(())
    }

    fn mark(&self, cutoff_ms: i64, cutoff: SystemTime) -> Result<Marked, EngineError> {
        let unscoped = self.store.unscoped();
        let rows = unscoped.stale_blobs(cutoff_ms)?;
        let files = self
            .cas
            .list()
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let store_blobs = files.len() as u64;
        let store_bytes = files.iter().map(|(_, size, _)| size).sum();
        let stale_files: HashMap<HashHex, u64> = files
            .into_iter()
            .filter(|(hash, _, written)| *written < cutoff && *hash != HashHex::empty())
            .map(|(hash, size, _)| (hash, size))
            .collect();
        let mut candidates: HashSet<HashHex> = stale_files.keys().copied().collect();
        candidates.extend(rows.iter().map(|(_, hash, _)| *hash));
        // Which candidates something still names, by whom.
        let mut named: HashSet<HashHex> = HashSet::new();
        let mut named_by: HashSet<(String, HashHex)> = HashSet::new();
        let mut look = |tenant: &str, text: &str| {
            hashes_in(text, |hash| {
                if candidates.contains(&hash) {
                    named.insert(hash);
                    named_by.insert((tenant.to_string(), hash));
                }
            });
        };
        for (tenant, text) in unscoped.worker_texts()? {
            look(&tenant, &text);
        }
        let mut after = 0;
        loop {
            let (page, next) = unscoped.job_texts(after, PAGE)?;
            for (tenant, text) in &page {
                look(tenant, text);
            }
            match next {
                Some(lsn) => after = lsn,
                None => break,
            }
        }
        let rows: Vec<(String, HashHex)> = rows
            .into_iter()
            .filter(|(tenant, hash, _)| !named_by.contains(&(tenant.clone(), *hash)))
            .map(|(tenant, hash, _)| (tenant, hash))
            .collect();
        let mut dropping: HashMap<HashHex, HashSet<&str>> = HashMap::new();
        for (tenant, hash) in &rows {
            dropping.entry(*hash).or_default().insert(tenant);
        }
        let mut doomed = Vec::new();
        for (hash, size) in stale_files {
            if named.contains(&hash) {
                continue;
            }
            let holders = unscoped.holders(&hash)?;
            let going = dropping.get(&hash);
            if holders
                .iter()
                .all(|t| going.is_some_and(|g| g.contains(t.as_str())))
            {
                doomed.push((hash, size));
            }
        }
        doomed.sort_by_key(|(hash, _)| *hash);
        Ok(Marked {
            rows,
            files: doomed,
            store_blobs,
            store_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_64_digit_hex_word_is_a_possible_reference() {
        let a = HashHex::of(b"a");
        let b = HashHex::of(b"b");
        let text =
            format!(r#"{{"module":"{a}","args":["x{b}"],"short":"abc123","long":"{a}0"}} {b}"#);
        let mut found = Vec::new();
        hashes_in(&text, |h| found.push(h));
        // "x{b}" starts with a non-hex letter, so b there is a word of its own.
        assert_eq!(found, vec![a, b, b]);
    }
}
