//! Sandbox configuration: the per-action limits and the engine-wide knobs, each with a
//! safe default.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The four limits every action runs under. As a node's or worker's setting they are
/// ceilings; as an action's they are what that one run gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel units (roughly one per wasm instruction). Breach: [`Outcome::OutOfFuel`].
    ///
    /// [`Outcome::OutOfFuel`]: crate::Outcome::OutOfFuel
    pub fuel: u64,
    /// Largest linear memory in bytes. Breach: [`Outcome::MemoryExceeded`].
    ///
    /// [`Outcome::MemoryExceeded`]: crate::Outcome::MemoryExceeded
    pub memory_bytes: u64,
    /// Wall-clock time in milliseconds, including time blocked in host calls such as
    /// sleeps. Breach: [`Outcome::TimedOut`].
    ///
    /// [`Outcome::TimedOut`]: crate::Outcome::TimedOut
    pub timeout_ms: u64,
    /// Bytes of stdout. Breach: [`Outcome::OutputExceeded`].
    ///
    /// [`Outcome::OutputExceeded`]: crate::Outcome::OutputExceeded
    pub output_bytes: u64,
}

impl Default for Limits {
    /// Defaults sized for a shared node: 10 G fuel is several seconds of work, 512 MiB of
    /// memory leaves room for many concurrent actions, a minute of wall time, 64 MiB of
    /// output.
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 512 << 20,
            timeout_ms: 60_000,
            output_bytes: 64 << 20,
        }
    }
}

impl Limits {
    /// The limits a request gets under these ceilings: each field the request names is
    /// lowered to the ceiling, each field it leaves out takes the ceiling.
    pub fn clamp(&self, request: &LimitsRequest) -> Limits {
        let pick = |asked: Option<u64>, ceiling: u64| asked.map_or(ceiling, |a| a.min(ceiling));
        Limits {
            fuel: pick(request.fuel, self.fuel),
            memory_bytes: pick(request.memory_bytes, self.memory_bytes),
            timeout_ms: pick(request.timeout_ms, self.timeout_ms),
            output_bytes: pick(request.output_bytes, self.output_bytes),
        }
    }

    /// The field-by-field minimum of two sets of limits (e.g. a node's and a worker's
    /// ceilings).
    pub fn min(&self, other: &Limits) -> Limits {
        Limits {
            fuel: self.fuel.min(other.fuel),
            memory_bytes: self.memory_bytes.min(other.memory_bytes),
            timeout_ms: self.timeout_ms.min(other.timeout_ms),
            output_bytes: self.output_bytes.min(other.output_bytes),
        }
    }

    /// The wall-clock limit as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Limits as asked for by a worker descriptor or an action: every field optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Fuel, see [`Limits::fuel`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory bytes, see [`Limits::memory_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall time in milliseconds, see [`Limits::timeout_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Stdout bytes, see [`Limits::output_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
}

impl LimitsRequest {
    /// Narrows `self` by `other`: a field set in both takes the smaller value.
    pub fn narrow(&self, other: &LimitsRequest) -> LimitsRequest {
        let both = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        LimitsRequest {
            fuel: both(self.fuel, other.fuel),
            memory_bytes: both(self.memory_bytes, other.memory_bytes),
            timeout_ms: both(self.timeout_ms, other.timeout_ms),
            output_bytes: both(self.output_bytes, other.output_bytes),
        }
    }
}

/// Fuel between yields of a computing guest when epoch interruption is off (about a
/// millisecond of work).
pub const FUEL_YIELD_INTERVAL: u64 = 1_000_000;

/// Engine-wide configuration of a [`Sandbox`](crate::Sandbox).
#[derive(Clone, Debug)]
pub struct Config {
    /// Ceilings for every action, and what an action gets when it asks for nothing.
    pub limits: Limits,
    /// Bytes of stderr kept per run (default 1 MiB). Breach: `OutputExceeded`; stderr is
    /// for diagnostics, so it gets a smaller budget than stdout.
    pub stderr_bytes: u64,
    /// Events one run may emit (default 1,024). Breach: `OutputExceeded`.
    pub max_events: usize,
    /// Bytes of one event's JSON (default 64 KiB). Breach: `OutputExceeded`.
    pub max_event_bytes: usize,
    /// Bytes of all of one run's events together (default 1 MiB). Breach:
    /// `OutputExceeded`.
    pub max_events_total_bytes: usize,
    /// Bytes of one checkpoint (default 64 MiB). Breach: `OutputExceeded`.
    pub max_checkpoint_bytes: usize,
    /// Bytes a run may keep in `/tmp` (default 1 GiB). Breach: `OutputExceeded`,
    /// detected within ten epoch ticks of the write that passed it.
    pub tmp_bytes: u64,
    /// Log lines kept per run (default 1,000); later lines are counted, not kept, since
    /// logs are diagnostics and must not become an unmetered output channel.
    pub max_log_lines: usize,
    /// Whether fuel is metered (default true). Off, `Limits::fuel` is not enforced and
    /// usage reports no fuel; only for trusted code, where the wall-time limit suffices
    /// and the ~10-30% metering overhead is not wanted.
    pub fuel_metering: bool,
    /// Whether compiled code checks the epoch (default true): the wall-time limit,
    /// cancellation and the `/tmp` quota interrupt a computing guest within a tick.
    /// Off, the code carries no epoch checks; fuel metering must then be on, and a
    /// computing guest yields every [`FUEL_YIELD_INTERVAL`] units of fuel, where the
    /// deadline and cancellation are checked (the `/tmp` quota only when it returns).
    pub epoch_interruption: bool,
    /// Largest wasm call stack in bytes (default 1 MiB). Breach: a `Trapped` outcome
    /// saying the call stack was exhausted.
    pub max_wasm_stack: usize,
    /// How often the ticker thread advances the engine epoch (default 10 ms): the
    /// granularity of wall-time limits and cancellation.
    pub epoch_tick: Duration,
    /// Instances alive at once (default 128): the size of the pooling allocator's
    /// slabs. A run that finds the pool full fails with `RuntimeError::Busy`.
    pub max_instances: u32,
    /// Compiled modules kept in memory (default 128, least recently used evicted).
    pub module_cache_entries: usize,
    /// Where precompiled artifacts are kept across restarts; `None` keeps them in
    /// memory only.
    pub cache_dir: Option<PathBuf>,
    /// Where per-run scratch directories (`/tmp`, mounted files) are made, inside a
    /// `wasmesh-scratch-*` directory removed with the sandbox; `None` uses the system
    /// temporary directory. `/tmp` directories are reused, emptied, across runs.
    pub scratch_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            stderr_bytes: 1 << 20,
            max_events: 1024,
            max_event_bytes: 64 << 10,
            max_events_total_bytes: 1 << 20,
            max_checkpoint_bytes: 64 << 20,
            max_log_lines: 1000,
            tmp_bytes: 1 << 30,
            fuel_metering: true,
            epoch_interruption: true,
            max_wasm_stack: 1 << 20,
            epoch_tick: Duration::from_millis(10),
            max_instances: 128,
            module_cache_entries: 128,
            cache_dir: None,
            scratch_dir: None,
        }
    }
}
