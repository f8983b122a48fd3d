//! The sandbox: one wasmtime engine for many tenants, and the run of one action.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::{
    Engine, InstanceAllocationStrategy, Linker, PoolConcurrencyLimitError, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::abi::{self, GuestState};
use crate::cache::{CompiledModule, ModuleCache};
use crate::io::CappedPipe;
use crate::mounts::{self, Mount};
use crate::outcome::{Outcome, RunReport, Usage};
use crate::scratch::ScratchPool;
use crate::{Config, Event, Hash, Limits, LimitsRequest, LogLine, RuntimeError};

/// Table elements one instance may grow to: far above what compiled Rust or C needs,
/// low enough that a table bomb cannot take host memory.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Hooks called while a run is in progress, on the thread running it. Every method has
/// an empty default.
pub trait RunObserver: Send + Sync {
    /// The guest reported progress in `0.0..=1.0`.
    fn progress(&self, _fraction: f32) {}
    /// The guest saved a checkpoint.
    fn checkpoint(&self, _bytes: &[u8]) {}
    /// The guest logged a line.
    fn log(&self, _line: &LogLine) {}
    /// The guest emitted an event.
    fn event(&self, _event: &Event) {}
}

/// What to run: everything about one action except the module.
#[derive(Clone)]
pub struct RunSpec {
    /// `argv[0]` as the guest sees it.
    pub program: String,
    /// The arguments after `argv[0]`.
    pub args: Vec<String>,
    /// The environment; nothing of the host's is inherited.
    pub env: Vec<(String, String)>,
    /// The bytes on stdin.
    pub stdin: Vec<u8>,
    /// Limits asked for; clamped to the sandbox's ceilings.
    pub limits: LimitsRequest,
    /// Directories the guest sees.
    pub mounts: Vec<Mount>,
    /// Whether the guest gets an empty writable `/tmp` that is removed afterwards
    /// (default true).
    pub tmp: bool,
    /// What `checkpoint::load` returns until the guest saves one of its own.
    pub checkpoint: Option<Arc<[u8]>>,
    /// Cancels the run: it stops within one epoch tick, even inside a host call.
    pub cancel: Option<CancellationToken>,
    /// Sees progress, checkpoints, logs and events as they happen.
    pub observer: Option<Arc<dyn RunObserver>>,
}

impl Default for RunSpec {
    fn default() -> Self {
        Self {
            program: "job".into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            limits: LimitsRequest::default(),
            mounts: Vec::new(),
            tmp: true,
            checkpoint: None,
            cancel: None,
            observer: None,
        }
    }
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("stdin_len", &self.stdin.len())
            .field("limits", &self.limits)
            .field("mounts", &self.mounts)
            .field("tmp", &self.tmp)
            .finish_non_exhaustive()
    }
}

impl RunSpec {
    /// A run with no arguments, empty stdin and the ceiling limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `argv[0]`.
    pub fn program(mut self, program: impl Into<String>) -> Self {
        self.program = program.into();
        self
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Sets the requested limits.
    pub fn limits(mut self, limits: LimitsRequest) -> Self {
        self.limits = limits;
        self
    }

    /// Adds a mount.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self
    }

    /// Gives the guest no `/tmp`.
    pub fn without_tmp(mut self) -> Self {
        self.tmp = false;
        self
    }

    /// Sets the checkpoint the guest resumes from.
    pub fn checkpoint(mut self, bytes: impl Into<Arc<[u8]>>) -> Self {
        self.checkpoint = Some(bytes.into());
        self
    }

    /// Sets the cancellation token.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Sets the observer.
    pub fn observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// Why the epoch callback stopped a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Cancelled,
    TmpFull,
}

/// Enforces the memory limit and records the peak.
struct MemoryLimiter {
    limit: usize,
    peak: usize,
    exceeded: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("memory limit of {0} bytes exceeded")]
struct MemoryLimitExceeded(usize);

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            // Trapping (rather than letting `memory.grow` return -1) makes the breach an
            // outcome of its own instead of whatever the guest's allocator does next.
            self.exceeded = true;
            return Err(wasmtime::Error::new(MemoryLimitExceeded(self.limit)));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The data of one run's store.
pub(crate) struct Ctx {
    wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    pub(crate) guest: GuestState,
    stop: Option<Stop>,
    deadline: Instant,
    cancel: Option<CancellationToken>,
    tmp: Option<TmpQuota>,
}

/// The `/tmp` size check: the directory is measured through descriptors (exactly,
/// whatever its depth) every `EVERY` epoch ticks, and at every tick once it holds half
/// its quota, so a guest can overshoot by at most what it writes in one tick (a single
/// write is bounded by its memory). Nesting past `MAX_TMP_DEPTH` levels or holding more
/// than `MAX_TMP_ENTRIES` entries is a breach too.
struct TmpQuota {
    path: std::path::PathBuf,
    limit: u64,
    ticks: u32,
    near: bool,
}

impl TmpQuota {
    const EVERY: u32 = 10;

    fn over_quota(&mut self) -> bool {
        self.ticks += 1;
        if !self.near && !self.ticks.is_multiple_of(Self::EVERY) {
            return false;
        }
        let (over, bytes) = self.measure();
        self.near = bytes > self.limit / 2;
        over
    }

    /// Measures now, whatever the tick.
    fn over_quota_now(&self) -> bool {
        self.measure().0
    }

    /// Whether the directory is past the quota, and its bytes.
    fn measure(&self) -> (bool, u64) {
        let usage = crate::scratch::usage(&self.path);
        (usage.beyond || usage.bytes > self.limit, usage.bytes)
    }
}

struct Inner {
    engine: Engine,
    cache: ModuleCache,
    scratch: ScratchPool,
    config: Config,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Release);
    }
}

/// A wasmtime engine set up for running untrusted actions, with its module cache.
/// Cheap to clone; clones share the engine and the cache.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Each thread that runs actions drives them on its own current-thread runtime, so
    /// wasm never runs on a shared async reactor and a run blocks only its own thread.
    static EXECUTOR: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("building a current-thread tokio runtime");
}

impl Sandbox {
    /// Builds the engine, the linker with WASI preview 1 and the `wasmesh` imports, the
    /// module cache and the epoch ticker thread.
    pub fn new(config: Config) -> Result<Self, RuntimeError> {
        let engine_err =
            |e: wasmtime::Error| RuntimeError::host("configuring the engine", format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        let page = 64 << 10;
        let max_memory = config.limits.memory_bytes.div_ceil(page) * page;
        pool.total_core_instances(config.max_instances)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .total_stacks(config.max_instances)
            .total_component_instances(0)
            .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
            .table_elements(MAX_TABLE_ELEMENTS);
        if !config.epoch_interruption && !config.fuel_metering {
            return Err(RuntimeError::host(
                "configuring the engine",
                "without epoch interruption, fuel metering must be on (nothing else could stop a spinning guest)",
            ));
        }
        let mut wasm = wasmtime::Config::new();
        wasm.consume_fuel(config.fuel_metering)
            .epoch_interruption(config.epoch_interruption)
            .max_wasm_stack(config.max_wasm_stack)
            // The fiber stack must hold the wasm stack plus the host frames under it.
            .async_stack_size(config.max_wasm_stack + (512 << 10))
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(engine_err)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx: &mut Ctx| &mut ctx.wasi)
            .map_err(engine_err)?;
        abi::add_to_linker(&mut linker).map_err(engine_err)?;

        let cache = ModuleCache::new(
            engine.clone(),
            linker,
            config.module_cache_entries,
            config.cache_dir.clone(),
        )?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("wasmesh-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::host("starting the epoch ticker", e))?;
        }

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                cache,
                scratch: ScratchPool::new(config.scratch_dir.as_deref())?,
                config,
                ticker_stop,
            }),
        })
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The module cache.
    pub fn cache(&self) -> &ModuleCache {
        &self.inner.cache
    }

    /// Validates and compiles `wasm` (or finds it in the cache).
    pub fn load(&self, wasm: &[u8]) -> Result<CompiledModule, RuntimeError> {
        let hash = blake3::hash(wasm);
        self.module(hash, || Ok(wasm))
    }

    /// The module with this hash, from the cache, or compiled from what `bytes` returns.
    /// The caller vouches that those bytes hash to `hash` (a content-addressed store
    /// already checked it).
    pub fn module<B: AsRef<[u8]>>(
        &self,
        hash: Hash,
        bytes: impl FnOnce() -> Result<B, RuntimeError>,
    ) -> Result<CompiledModule, RuntimeError> {
        self.inner.cache.get_or_compile(hash, bytes)
    }

    /// The limits a run asking for `request` gets.
    pub fn limits_for(&self, request: &LimitsRequest) -> Limits {
        self.inner.config.limits.clamp(request)
    }

    /// Runs `module` once, blocking this thread until it ends. Call it from a thread of
    /// your own or from `spawn_blocking`, never from an async task.
    pub fn run(&self, module: &CompiledModule, spec: RunSpec) -> Result<RunReport, RuntimeError> {
        EXECUTOR.with(|executor| executor.block_on(self.execute(module, spec)))
    }

    async fn execute(
        &self,
        module: &CompiledModule,
        spec: RunSpec,
    ) -> Result<RunReport, RuntimeError> {
        let config = &self.inner.config;
        let limits = config.limits.clamp(&spec.limits);
        let started = Instant::now();
        let deadline = started + limits.timeout();

        let mut guests: Vec<&str> = spec.mounts.iter().map(Mount::guest).collect();
        if spec.tmp {
            guests.push("/tmp");
        }
        for mount in &spec.mounts {
            match mount {
                // A host directory may be preopened under any name, as with `wasmtime
                // run --dir HOST::GUEST` (`/` and relative names included).
                Mount::Dir { guest, .. } => mounts::check_preopen_name(guest)?,
                Mount::Files { guest, .. } => mounts::check_guest_dir(guest)?,
            }
        }
        for (i, guest) in guests.iter().enumerate() {
            if guests[..i].contains(guest) {
                return Err(RuntimeError::InvalidMount(format!(
                    "{guest} is mounted twice"
                )));
            }
        }

        // Scratch leases (`/tmp`, file mounts) go back to the pool or are removed when
        // they drop at the end of this function, after the store that uses them.
        let mut leases = Vec::new();

        let stdout = CappedPipe::new(limits.output_bytes);
        let stderr = CappedPipe::new(config.stderr_bytes);
        let mut wasi = WasiCtxBuilder::new();
        let argv: Vec<&str> = std::iter::once(spec.program.as_str())
            .chain(spec.args.iter().map(String::as_str))
            .collect();
        wasi.args(&argv)
            .envs(&spec.env)
            .stdin(MemoryInputPipe::new(spec.stdin))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // Blocking on this thread would be cheaper for file I/O, but wasmtime-wasi
            // then serves sleeps with `thread::sleep`, which no deadline or cancel can
            // interrupt; async host calls keep every wait interruptible.
            .allow_blocking_current_thread(false);
        for mount in &spec.mounts {
            let (host, guest, perms) = match mount {
                Mount::Dir {
                    host,
                    guest,
                    writable,
                } => {
                    let perms = if *writable {
                        FsPerms::ReadWrite
                    } else {
                        FsPerms::ReadOnly
                    };
                    (host.clone(), guest, perms)
                }
                Mount::Files { guest, files } => {
                    let lease = self.inner.scratch.mount()?;
                    mounts::materialize(lease.path(), files)?;
                    let dir = lease.path().to_path_buf();
                    leases.push(lease);
                    (dir, guest, FsPerms::ReadOnly)
                }
            };
            wasi.preopened_dir(&host, guest, perms).map_err(|e| {
                RuntimeError::InvalidMount(format!("{} at {guest}: {e:#}", host.display()))
            })?;
        }
        let mut tmp_quota = None;
        if spec.tmp {
            let lease = self.inner.scratch.tmp()?;
            wasi.preopened_dir(lease.path(), "/tmp", FsPerms::ReadWrite)
                .map_err(|e| RuntimeError::host("preopening /tmp", format!("{e:#}")))?;
            tmp_quota = Some(TmpQuota {
                path: lease.path().to_path_buf(),
                limit: config.tmp_bytes,
                ticks: 0,
                near: false,
            });
            leases.push(lease);
        }

        let ctx = Ctx {
            wasi: wasi.build_p1(),
            limiter: MemoryLimiter {
                limit: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
                peak: 0,
                exceeded: false,
            },
            guest: GuestState {
                checkpoint_in: spec.checkpoint,
                observer: spec.observer,
                max_events: config.max_events,
                max_event_bytes: config.max_event_bytes,
                max_events_total_bytes: config.max_events_total_bytes,
                max_checkpoint_bytes: config.max_checkpoint_bytes,
                max_log_lines: config.max_log_lines,
                ..GuestState::default()
            },
            stop: None,
            deadline,
            cancel: spec.cancel.clone(),
            tmp: tmp_quota,
        };
        let mut store = Store::new(&self.inner.engine, ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        if config.fuel_metering {
            store
                .set_fuel(limits.fuel)
                .map_err(|e| RuntimeError::host("setting fuel", e))?;
        }
        if config.epoch_interruption {
            store.set_epoch_deadline(1);
        } else {
            store
                .fuel_async_yield_interval(Some(crate::config::FUEL_YIELD_INTERVAL))
                .map_err(|e| RuntimeError::host("setting the fuel yield interval", e))?;
        }
        store.epoch_deadline_callback(|mut ctx| {
            let data = ctx.data_mut();
            if data
                .cancel
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
            {
                data.stop = Some(Stop::Cancelled);
                return Ok(UpdateDeadline::Interrupt);
            }
            if Instant::now() >= data.deadline {
                data.stop = Some(Stop::TimedOut);
                return Ok(UpdateDeadline::Interrupt);
            }
            if let Some(tmp) = &mut data.tmp
                && tmp.over_quota()
            {
                data.stop = Some(Stop::TmpFull);
                return Ok(UpdateDeadline::Interrupt);
            }
            // Yielding lets the executor notice the deadline and cancellation while
            // the guest computes, one tick at a time.
            Ok(UpdateDeadline::Yield(1))
        });

        let mut instantiate = Duration::ZERO;
        let ended = {
            let run = async {
                let begun = Instant::now();
                let instance = module.pre.instantiate_async(&mut store).await;
                instantiate = begun.elapsed();
                let start = instance?.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            };
            let cancelled = async {
                match &spec.cancel {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            // Besides the epoch callback, the other two arms stop a guest that is
            // blocked in a host call (a long sleep), where no epoch check runs. Cancel
            // comes first so that a run cancelled before it starts never starts.
            tokio::select! {
                biased;
                () = cancelled => Ended::Stopped(Stop::Cancelled),
                result = run => Ended::Finished(result),
                () = tokio::time::sleep_until(deadline.into()) => Ended::Stopped(Stop::TimedOut),
            }
        };
        let wall = started.elapsed();

        let outcome = match ended {
            Ended::Finished(Ok(())) => Outcome::Exited(0),
            Ended::Finished(Err(error)) => classify(error, store.data(), &stdout, &stderr)
                .map_err(|()| RuntimeError::Busy(config.max_instances))?,
            Ended::Stopped(Stop::Cancelled) => Outcome::Cancelled,
            Ended::Stopped(Stop::TimedOut) => Outcome::TimedOut,
            Ended::Stopped(Stop::TmpFull) => Outcome::OutputExceeded,
        };
        // Without epoch checks nothing measured /tmp while the guest ran: now, once.
        let outcome = match outcome {
            Outcome::Exited(_)
                if !config.epoch_interruption
                    && store
                        .data()
                        .tmp
                        .as_ref()
                        .is_some_and(TmpQuota::over_quota_now) =>
            {
                Outcome::OutputExceeded
            }
            other => other,
        };
        let fuel = match store.get_fuel() {
            Ok(left) if config.fuel_metering => limits.fuel.saturating_sub(left),
            _ => 0,
        };
        let ctx = store.into_data();
        drop(leases);
        Ok(RunReport {
            outcome,
            stdout: stdout.take(),
            stderr: stderr.take(),
            events: ctx.guest.events,
            checkpoint: ctx.guest.checkpoint_out,
            progress: ctx.guest.progress,
            logs: ctx.guest.logs,
            logs_dropped: ctx.guest.logs_dropped,
            usage: Usage {
                fuel,
                wall,
                instantiate,
                peak_memory_bytes: ctx.limiter.peak as u64,
            },
        })
    }
}

enum Ended {
    Finished(wasmtime::Result<()>),
    Stopped(Stop),
}

/// Maps the error a run ended with to its outcome, from typed errors and the flags the
/// limiters set, never from message text. `Err(())` means the instance pool was full.
fn classify(
    error: wasmtime::Error,
    ctx: &Ctx,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
) -> Result<Outcome, ()> {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Ok(Outcome::Exited(exit.0));
    }
    if error.is::<PoolConcurrencyLimitError>() {
        return Err(());
    }
    if stdout.exceeded() || stderr.exceeded() || ctx.guest.exceeded {
        return Ok(Outcome::OutputExceeded);
    }
    if ctx.limiter.exceeded {
        return Ok(Outcome::MemoryExceeded);
    }
    match ctx.stop {
        Some(Stop::Cancelled) => return Ok(Outcome::Cancelled),
        Some(Stop::TimedOut) => return Ok(Outcome::TimedOut),
        Some(Stop::TmpFull) => return Ok(Outcome::OutputExceeded),
        None => {}
    }
    Ok(match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::OutOfFuel,
        Some(Trap::Interrupt) => Outcome::TimedOut,
        Some(trap) => Outcome::Trapped(trap.to_string()),
        None => Outcome::Trapped(error.root_cause().to_string()),
    })
}
