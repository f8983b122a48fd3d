//! Compiled modules cached by BLAKE3 hash: in memory as ready-to-instantiate
//! `InstancePre`s (bounded LRU) and on disk as precompiled artifacts.
//!
//! An artifact file is `MAGIC | blake3(payload) | payload`, named by the module hash and
//! a fingerprint of the engine (wasmtime version and every setting that affects code),
//! so another wasmtime or another configuration never even opens it. The checksum is
//! verified before `Module::deserialize`, so a truncated or corrupted file is deleted and
//! the module recompiled instead of being trusted.

use std::hash::{Hash as _, Hasher};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;
use wasmtime::{Engine, InstancePre, Linker, Module};

use crate::sandbox::Ctx;
use crate::{Hash, RuntimeError};

const MAGIC: &[u8; 8] = b"WMESHART";

/// A compiled module, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct CompiledModule {
    pub(crate) hash: Hash,
    pub(crate) pre: InstancePre<Ctx>,
}

impl CompiledModule {
    /// The BLAKE3 hash of the module's bytes.
    pub fn hash(&self) -> Hash {
        self.hash
    }
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("hash", &self.hash.to_hex())
            .finish()
    }
}

/// Counters of what the cache did since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from memory (including callers that waited for a concurrent
    /// compile of the same module).
    pub memory_hits: u64,
    /// Modules loaded from a precompiled artifact on disk.
    pub disk_hits: u64,
    /// Modules compiled from wasm.
    pub compiles: u64,
    /// On-disk artifacts that failed verification and were thrown away.
    pub rejected_artifacts: u64,
}

type Slot = Arc<OnceLock<Result<CompiledModule, RuntimeError>>>;

/// The two-level module cache of a [`Sandbox`](crate::Sandbox).
pub struct ModuleCache {
    engine: Engine,
    linker: Linker<Ctx>,
    memory: Mutex<LruCache<[u8; 32], Slot>>,
    dir: Option<PathBuf>,
    fingerprint: String,
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    compiles: AtomicU64,
    rejected: AtomicU64,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Feeds `std::hash::Hash` output into BLAKE3 so the engine fingerprint is stable across
/// processes (unlike `DefaultHasher`, whose algorithm may change).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ModuleCache {
    pub(crate) fn new(
        engine: Engine,
        linker: Linker<Ctx>,
        entries: usize,
        dir: Option<PathBuf>,
    ) -> Result<Self, RuntimeError> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::host("creating the module cache directory", e))?;
        }
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = hasher.0.finalize().to_hex()[..16].to_string();
        let entries = NonZeroUsize::new(entries.max(1)).expect("max(1) is non-zero");
        Ok(Self {
            engine,
            linker,
            memory: Mutex::new(LruCache::new(entries)),
            dir,
            fingerprint,
            memory_hits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            memory_hits: self.memory_hits.load(Ordering::Relaxed),
            disk_hits: self.disk_hits.load(Ordering::Relaxed),
            compiles: self.compiles.load(Ordering::Relaxed),
            rejected_artifacts: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// Whether the module is compiled in memory right now (placement uses this for
    /// locality).
    pub fn contains(&self, hash: &Hash) -> bool {
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        memory
            .peek(hash.as_bytes())
            .is_some_and(|slot| matches!(slot.get(), Some(Ok(_))))
    }

    /// The path of the precompiled artifact for `hash`, if a cache directory is set.
    pub fn artifact_path(&self, hash: &Hash) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{}-{}.cwasm", hash.to_hex(), self.fingerprint)))
    }

    /// The compiled module for `hash`. `bytes` is called for the wasm only when neither
    /// level has it; concurrent callers for the same hash wait for one compile.
    /// The caller vouches that `bytes` hash to `hash`.
    pub fn get_or_compile<B: AsRef<[u8]>>(
        &self,
        hash: Hash,
        bytes: impl FnOnce() -> Result<B, RuntimeError>,
    ) -> Result<CompiledModule, RuntimeError> {
        let slot: Slot = {
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            memory
                .get_or_insert(*hash.as_bytes(), || Arc::new(OnceLock::new()))
                .clone()
        };
        let mut loaded_here = false;
        let result = slot.get_or_init(|| {
            loaded_here = true;
            self.load(hash, bytes)
        });
        if !loaded_here {
            self.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(RuntimeError::Host(_)) = result {
            // A host failure (say, the bytes could not be read) may pass; do not pin it.
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            if memory
                .peek(hash.as_bytes())
                .is_some_and(|s| Arc::ptr_eq(s, &slot))
            {
                memory.pop(hash.as_bytes());
            }
        }
        result.clone()
    }

    fn load<B: AsRef<[u8]>>(
        &self,
        hash: Hash,
        bytes: impl FnOnce() -> Result<B, RuntimeError>,
    ) -> Result<CompiledModule, RuntimeError> {
        let path = self.artifact_path(&hash);
        if let Some(module) = path.as_deref().and_then(|p| self.read_artifact(p)) {
            self.disk_hits.fetch_add(1, Ordering::Relaxed);
            return self.prepare(hash, module);
        }
        let wasm = bytes()?;
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let module = Module::new(&self.engine, wasm.as_ref())
            .map_err(|e| RuntimeError::InvalidModule(format!("{e:#}")))?;
        let compiled = self.prepare(hash, module.clone())?;
        if let Some(path) = path
            && let Err(e) = write_artifact(&path, &module)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not store a precompiled module");
        }
        Ok(compiled)
    }

    /// Checks the module is a WASI command this sandbox can link, and links it.
    fn prepare(&self, hash: Hash, module: Module) -> Result<CompiledModule, RuntimeError> {
        let has_start = module.exports().any(|export| {
            export.name() == "_start"
                && export
                    .ty()
                    .func()
                    .is_some_and(|f| f.params().len() == 0 && f.results().len() == 0)
        });
        if !has_start {
            return Err(RuntimeError::InvalidModule(
                "the module exports no `_start() -> ()`: build it as a WASI command (a binary crate for wasm32-wasip1)".into(),
            ));
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| RuntimeError::InvalidModule(format!("{e:#}")))?;
        Ok(CompiledModule { hash, pre })
    }

    /// Reads and verifies an artifact; anything wrong with it deletes it.
    fn read_artifact(&self, path: &Path) -> Option<Module> {
        let data = std::fs::read(path).ok()?;
        let verified = data
            .strip_prefix(MAGIC.as_slice())
            .and_then(|rest| rest.split_at_checked(32))
            .filter(|(sum, payload)| blake3::hash(payload).as_bytes() == *sum)
            .map(|(_, payload)| payload);
        // SAFETY: `deserialize` trusts its input to be an artifact this engine wrote.
        // The checksum above proves the payload is exactly what `write_artifact`
        // stored, and the file name carries the engine fingerprint, so only artifacts
        // produced by a compatible engine reach this call; wasmtime additionally checks
        // its own version and settings header and errors on a mismatch.
        let module =
            verified.and_then(|payload| unsafe { Module::deserialize(&self.engine, payload) }.ok());
        if module.is_none() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = %path.display(), "discarding a corrupted precompiled module");
            let _ = std::fs::remove_file(path);
        }
        module
    }
}

/// Writes an artifact atomically: temp file in the same directory, fsync, rename.
fn write_artifact(path: &Path, module: &Module) -> std::io::Result<()> {
    use std::io::Write;

    let payload = module.serialize().map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(MAGIC)?;
    file.write_all(blake3::hash(&payload).as_bytes())?;
    file.write_all(&payload)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
