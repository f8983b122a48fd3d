//! Benchmark scenarios, each with a baseline measured in the same run:
//!
//! - `wasmesh bench node`: one node over loopback HTTP (baselines: the `/health` round
//!   trip, a raw `PUT /cas`). The node runs in this process on 127.0.0.1:0.
//! - `wasmesh bench failover`: a standby coordinator taking over a PostgreSQL journal,
//!   or (`--shared`) one of two active coordinators killed.
//! - `wasmesh bench journal`: the same cluster with its journal in SQLite and in
//!   PostgreSQL, with one coordinator and with two sharing it.
//! - `wasmesh bench cluster`: a coordinator and 2 node processes (baselines: the same
//!   jobs sent directly to one node; the Mandelbrot kernel compiled natively).
//! - `wasmesh bench events` and `fanin`: groups and `output_of` fan-in on a local
//!   cluster (baselines: plain submissions; the client doing the fan-in).
//! - `wasmesh bench placement`: placement with simulated nodes in process.
//! - `wasmesh bench sandbox`: the Mandelbrot and sieve kernels in the sandbox under
//!   each way of enforcing limits (baseline: the same source compiled natively).
//! - `wasmesh bench fairness`: the fair share on an in-process node (baseline: the
//!   small tenant alone on the same node).
//!
//! A scenario is a benchmark, never a test: it prints ratios against its baseline.

mod cluster;
mod fairness;
mod node;
mod placement;
mod sandbox;

/// The examples' kernels, compiled natively from the very source of their wasm
/// modules (the baselines of `cluster` and `sandbox`).
#[path = "../../../../examples/mandelbrot/src/kernel.rs"]
mod mandelbrot;
#[path = "../../../../examples/sieve/src/kernel.rs"]
mod sieve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use clap::Subcommand;
use serde_json::json;

use wasmesh_host::api::{AppState, auth::Auth};
use wasmesh_host::client::Client;
use wasmesh_host::engine::quota::Quotas;
use wasmesh_host::engine::{Engine, NodeConfig};
use wasmesh_host::model::{HashHex, JobState};
use wasmesh_host::run::Runner;

/// `wasmesh bench` scenarios (see BENCHMARKS.md).
#[derive(Debug, Subcommand)]
pub enum Args {
    /// One in-process node over loopback HTTP: /health baseline, submit->result
    /// latency, jobs/s single and batched, and a large upload via the needs dance vs a
    /// raw PUT.
    Node {
        /// Jobs per throughput scenario.
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        /// Size of the upload scenario in MiB (0 skips it).
        #[arg(long, default_value_t = 256)]
        upload_mib: usize,
    },
    /// A coordinator and 2 node processes: trivial jobs/s vs directly on one node, and
    /// the Mandelbrot tiles on 1 and 2 nodes vs the native kernel.
    Cluster {
        /// Trivial jobs per throughput scenario.
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        /// The compiled mandelbrot example.
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/mandelbrot.wasm"
        )]
        module: PathBuf,
        /// Image edge in pixels.
        #[arg(long, default_value_t = 1024)]
        size: u32,
        /// Iteration cap per pixel.
        #[arg(long, default_value_t = 1000)]
        max_iter: u32,
        /// The coordinator's `--prefetch` for the trivial-jobs scenario.
        #[arg(long, default_value = "auto")]
        prefetch: wasmesh_host::cluster::prefetch::Prefetch,
    },
    /// Events through an event-handler group on a coordinator and 2 nodes: inject one
    /// at a time and in batches, against plain job submissions of the same handler.
    Events {
        /// Events per scenario.
        #[arg(long, default_value_t = 500)]
        events: usize,
        /// The compiled sensor-alerts example.
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/sensor-alerts.wasm"
        )]
        module: PathBuf,
    },
    /// Fan-in latency on a coordinator and 2 nodes: last map end -> reduce start, with
    /// `output_of` references vs the client submitting the reduce itself.
    Fanin {
        /// Map/reduce rounds per mode.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Map jobs per round.
        #[arg(long, default_value_t = 8)]
        maps: usize,
        /// The compiled wordcount example.
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/wordcount.wasm"
        )]
        module: PathBuf,
    },
    /// Placement in process: decisions/s with simulated nodes, memory per queued job,
    /// and the full placement path on a real journal.
    Placement {
        /// Simulated nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Queued jobs.
        #[arg(long, default_value_t = 100_000)]
        jobs: usize,
    },
    /// The Mandelbrot and sieve kernels native vs in the sandbox, under each way of
    /// enforcing limits (fuel + epoch, epoch only, fuel only).
    Sandbox {
        /// The compiled mandelbrot example.
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/mandelbrot.wasm"
        )]
        mandelbrot: PathBuf,
        /// The compiled sieve example.
        #[arg(
            long,
            default_value = "examples/target/wasm32-wasip1/release/sieve.wasm"
        )]
        sieve: PathBuf,
        /// Timed runs per case (after one warm-up).
        #[arg(long, default_value_t = 7)]
        runs: usize,
    },
    /// The fair share on an in-process node: a small tenant's p99 wait alone (the
    /// baseline) and under another tenant's flood, and how weights 3:1 split the slots.
    Fairness {
        /// The node's slots.
        #[arg(long, default_value_t = 4)]
        slots: usize,
        /// How long each job holds its slot, in milliseconds.
        #[arg(long, default_value_t = 100)]
        job_ms: u64,
        /// The small tenant's jobs.
        #[arg(long, default_value_t = 40)]
        small_jobs: usize,
        /// The flood's jobs per small job.
        #[arg(long, default_value_t = 100)]
        flood_factor: usize,
    },
    /// Failover to a standby coordinator on a PostgreSQL journal: the time from the
    /// last result before the owner is killed to the first after.
    Failover {
        /// The PostgreSQL server (`postgres://...`); the run uses a schema of its own.
        #[arg(long, env = "WASMESH_BENCH_POSTGRES")]
        postgres: String,
        /// Trivial jobs submitted.
        #[arg(long, default_value_t = 3000)]
        jobs: usize,
        /// Both coordinators active (`--shared`, each with one node), not a standby.
        #[arg(long)]
        shared: bool,
    },
    /// The journal's backends on a coordinator and 2 node processes: trivial jobs/s and
    /// sequential latency with the SQLite file (baseline) and with PostgreSQL (one
    /// coordinator, one `--shared`, two `--shared`), in the same run.
    Journal {
        /// The PostgreSQL server (`postgres://...`); the run uses a schema of its own.
        #[arg(long, env = "WASMESH_BENCH_POSTGRES")]
        postgres: String,
        /// Trivial jobs per throughput scenario.
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        /// Sequential submissions per latency scenario.
        #[arg(long, default_value_t = 300)]
        sequential: usize,
    },
}

/// Runs one scenario and prints its numbers.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args {
        Args::Node { jobs, upload_mib } => node::run(jobs, upload_mib)?,
        Args::Cluster {
            jobs,
            module,
            size,
            max_iter,
            prefetch,
        } => cluster::cluster(jobs, &module, size, max_iter, prefetch)?,
        Args::Events { events, module } => cluster::events(events, &module)?,
        Args::Fanin {
            rounds,
            maps,
            module,
        } => cluster::fanin(rounds, maps, &module)?,
        Args::Placement { nodes, jobs } => placement::run(nodes, jobs)?,
        Args::Sandbox {
            mandelbrot,
            sieve,
            runs,
        } => sandbox::run(&mandelbrot, &sieve, runs)?,
        Args::Fairness {
            slots,
            job_ms,
            small_jobs,
            flood_factor,
        } => fairness::run(slots, job_ms, small_jobs, flood_factor)?,
        Args::Journal {
            postgres,
            jobs,
            sequential,
        } => cluster::journal(&postgres, jobs, sequential)?,
        Args::Failover {
            postgres,
            jobs,
            shared,
        } => cluster::failover(&postgres, jobs, shared)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `(module (memory (export "memory") 1) (func (export "_start")))`, hand-assembled so
/// the benchmark needs no toolchain: the cheapest possible action.
pub const TRIVIAL_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
    0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
    0x05, 0x03, 0x01, 0x00, 0x01, // memory section: one memory, min 1 page
    0x07, 0x13, 0x02, // export section: 19 bytes, 2 exports
    0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // "memory" -> memory 0
    0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // "_start" -> function 0
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section: an empty body
];

/// A running in-process node.
struct Running {
    url: String,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start_node(slots: usize) -> anyhow::Result<Running> {
    start_node_with(slots, Quotas::default(), Auth::open())
}

/// An in-process node with these tenants' quotas and keys.
fn start_node_with(slots: usize, quotas: Quotas, auth: Auth) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.slots = slots;
    config.quotas = quotas;
    config.max_blob_bytes = 1 << 30;
    config.max_request_bytes = (1 << 30) + (16 << 20);
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let engine = Engine::open(config)?;
        engine.start();
        Runner::new(engine.clone()).start();
        let state = AppState::new(engine, Arc::new(auth));
        tokio::spawn(wasmesh_host::api::serve(
            listener,
            wasmesh_host::api::app(state),
            wasmesh_host::api::Limits::for_this_process(),
            std::future::pending(),
        ));
        anyhow::Ok(format!("http://{address}"))
    })?;
    Ok(Running {
        url,
        _runtime: runtime,
        _dir: dir,
    })
}

/// Registers the trivial module as a worker (the needs dance); returns its id.
fn upload_trivial(client: &Client) -> anyhow::Result<HashHex> {
    let module = HashHex::of(TRIVIAL_WASM);
    Ok(client
        .upload_worker(
            &json!({"name": "trivial", "module": module}),
            &[(module, TRIVIAL_WASM)],
        )?
        .worker)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn wait_ok(client: &Client, lsn: u64) -> anyhow::Result<()> {
    let result = client.wait(lsn, Duration::from_secs(60))?;
    ensure!(
        result.state == JobState::Succeeded,
        "job {lsn} {}",
        result.state
    );
    Ok(())
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
