//! Command-line parsing and dispatch for the `wasmesh` binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// wasmesh: run WebAssembly jobs in a sandbox, locally or across a fleet.
#[derive(Debug, Parser)]
#[command(name = "wasmesh", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one wasm32-wasip1 module locally in the sandbox.
    ///
    /// Guest arguments that start with `-` go after `--`:
    /// `wasmesh exec job.wasm --fuel 1000000 -- --verbose input.txt`.
    Exec(ExecArgs),
    /// Run a node: a content-addressed store and a compute server (see docs/api.md).
    Node(NodeArgs),
    /// Run a coordinator: the registry of node hosts (heartbeats, states, drain).
    Coordinator(CoordinatorArgs),
    /// Upload a worker module with the needs dance; prints the worker id.
    Upload(crate::commands::UploadArgs),
    /// Submit an action as a job; prints its LSN (or, with --wait, its output).
    Submit(crate::commands::SubmitArgs),
    /// Show a job's result.
    Result(crate::commands::ResultArgs),
    /// Submit a workflow file (jobs and the outputs they pass on) as one queue.
    Dag(crate::commands::DagArgs),
    /// Wait until a queue has nothing pending.
    Wait(crate::commands::WaitArgs),
    /// List a coordinator's nodes, or drain or deregister one (an operator key).
    Nodes(crate::commands::NodesArgs),
    /// Resubmit a recording (from `POST /compute/record/stop`) to a server.
    Replay(crate::commands::ReplayArgs),
    /// Benchmark scenarios (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// The main job: a local cluster (a coordinator and nodes) renders the Mandelbrot set
    /// as 16 tiles, on one node and then on all, into a PNG, with the speed-up.
    Demo(DemoArgs),
}

/// Arguments of `wasmesh exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The module to run.
    pub module: PathBuf,
    /// Arguments for the guest (`argv[1..]`).
    pub args: Vec<String>,
    /// File to feed on stdin (`-` for this process's stdin). Without it, stdin is passed
    /// through when it is not a terminal.
    #[arg(long, value_name = "FILE|-")]
    pub input: Option<String>,
    /// Preopen a host directory read-write at a guest path, as `HOST::GUEST` (`/` is
    /// fine), or `HOST` alone at the same path, as `wasmtime run --dir` does.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    pub dirs: Vec<String>,
    /// Give the guest an empty writable scratch `/tmp` (removed afterwards), as jobs on
    /// a node have. Off by default: the guest sees only the `--dir`s it is given.
    #[arg(long)]
    pub tmp: bool,
    /// Set a guest environment variable, as `KEY=VALUE`.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub envs: Vec<String>,
    /// Fuel limit (about one unit per wasm instruction).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory limit, e.g. `64MiB` or `1048576`.
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Wall-clock limit, e.g. `10s` or `500ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Stdout limit, e.g. `16MiB`.
    #[arg(long, value_parser = parse_bytes)]
    pub output_limit: Option<u64>,
    /// Print the outcome, usage and output as JSON instead of passing output through.
    #[arg(long)]
    pub json: bool,
}

/// `wasmesh bench` scenarios.
#[derive(Debug, Subcommand)]
enum BenchScenario {
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
        #[arg(long, default_value_t = 0)]
        prefetch: u64,
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
}

/// Arguments of `wasmesh node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the bound address is
    /// printed on one line at start).
    #[arg(long, env = "WASMESH_LISTEN")]
    pub listen: Option<String>,
    /// Where the store, the database and compiled modules live [default: wasmesh-data].
    #[arg(long, env = "WASMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Actions run at once [default: the CPU count].
    #[arg(long, env = "WASMESH_SLOTS")]
    pub slots: Option<usize>,
    /// An API key for the single tenant `default` (repeatable).
    #[arg(long = "api-key", env = "WASMESH_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// A TOML file of tenants and their keys: `name = ["key", ...]`.
    #[arg(long, env = "WASMESH_TENANTS")]
    pub tenants: Option<PathBuf>,
    /// A node label, `key=value` (repeatable).
    #[arg(long = "label", env = "WASMESH_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// A TOML file with any of these settings (flags and environment win).
    #[arg(long, env = "WASMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node's id [default: generated once and kept in the data directory].
    #[arg(long, env = "WASMESH_NODE_ID")]
    pub node_id: Option<String>,
    /// Fuel ceiling per action.
    #[arg(long, env = "WASMESH_FUEL")]
    pub fuel: Option<u64>,
    /// Memory ceiling per action, e.g. `512MiB`.
    #[arg(long, env = "WASMESH_MEMORY", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Wall-time ceiling per action, e.g. `60s`.
    #[arg(long, env = "WASMESH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Stdout ceiling per action, e.g. `64MiB`.
    #[arg(long, env = "WASMESH_OUTPUT_LIMIT", value_parser = parse_bytes)]
    pub output_limit: Option<u64>,
    /// Largest blob the store accepts, e.g. `1GiB`.
    #[arg(long, env = "WASMESH_MAX_BLOB_BYTES", value_parser = parse_bytes)]
    pub max_blob_bytes: Option<u64>,
    /// Idle queues expire after this long, e.g. `15m`.
    #[arg(long, env = "WASMESH_QUEUE_IDLE", value_parser = humantime::parse_duration)]
    pub queue_idle: Option<Duration>,
    /// How long `Idempotency-Key`s and their stored responses are kept (default 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idempotency_retention: Option<Duration>,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// Join this coordinator: register, heartbeat, re-register after a 404.
    #[arg(long, env = "WASMESH_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The URL the coordinator reaches this node at [default: the bound address].
    #[arg(long, env = "WASMESH_ADVERTISE")]
    pub advertise: Option<String>,
    /// The key nodes present to the coordinator.
    #[arg(long, env = "WASMESH_NODE_KEY")]
    pub node_key: Option<String>,
}

/// Arguments of `wasmesh coordinator`.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Address to listen on.
    #[arg(long, env = "WASMESH_LISTEN", default_value = "127.0.0.1:9100")]
    pub listen: String,
    /// An API key for clients (repeatable).
    #[arg(long = "api-key", env = "WASMESH_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// A TOML file of tenants and their keys (`name = ["key", ...]`); every tenant sees
    /// only its own blobs, workers, queues and jobs, across the whole fleet.
    #[arg(long, env = "WASMESH_TENANTS")]
    pub tenants: Option<PathBuf>,
    /// Operator keys (repeatable): fleet administration (drain, deregister, the node
    /// list, the whole topology); they act as tenant `operator` on the other routes.
    #[arg(long = "admin-key", env = "WASMESH_ADMIN_KEYS", value_delimiter = ',')]
    pub admin_keys: Vec<String>,
    /// The key nodes must present to register and heartbeat (any node id). Required
    /// (or `--node-keys`) when client keys are set.
    #[arg(long, env = "WASMESH_NODE_KEY")]
    pub node_key: Option<String>,
    /// A TOML file of per-node keys (`node-id = "key"`): each key is good for the node
    /// id it names only, so one node cannot register, report or heartbeat as another.
    #[arg(long, env = "WASMESH_NODE_KEYS")]
    pub node_keys: Option<PathBuf>,
    /// How often nodes heartbeat.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// A node silent for this long is unhealthy, and a lease not renewed for this long
    /// expires (its job is requeued as `node_lost`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Where the journal (jobs, queues, workers, results) and the store live.
    #[arg(
        long,
        env = "WASMESH_DATA_DIR",
        default_value = "wasmesh-coordinator-data"
    )]
    pub data_dir: PathBuf,
    /// How placement chooses a node.
    #[arg(long, value_enum, default_value = "score")]
    pub placement: crate::coordinator::placement::Strategy,
    /// Weights of the score's factors, e.g. `capacity=1,locality=0.3,reliability=1,cost=0.2,affinity=0.2`.
    #[arg(long, default_value = "")]
    pub placement_weights: crate::coordinator::placement::Weights,
    /// Leases a node may hold beyond its slots (queued on the node).
    #[arg(long, default_value_t = 0)]
    pub prefetch: u64,
    /// Handler runs one inject into a group may cause at most (a fan-out past it is
    /// dropped and logged as `"dropped": "budget"`).
    #[arg(long, default_value_t = 1000)]
    pub inject_max_runs: u64,
    /// Bytes of events one inject may route on to handlers at most, e.g. `16MiB`.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    pub inject_max_bytes: u64,
    /// Largest blob accepted by the store.
    #[arg(long)]
    pub max_blob_bytes: Option<u64>,
    /// How long `Idempotency-Key`s and their stored responses are kept.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_retention: Duration,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

/// How webhook deliveries are retried (node and coordinator).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// The wait before a failed delivery's first retry; it doubles per attempt, with
    /// jitter, up to an hour.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_retry_base: Duration,
    /// Attempts per delivery before it fails.
    #[arg(long, default_value_t = 8)]
    pub webhook_attempts: u32,
    /// Consecutive failed attempts after which an endpoint is disabled.
    #[arg(long, default_value_t = 20)]
    pub webhook_disable_after: u32,
    /// Let webhook endpoints be loopback, private or link-local addresses (for a
    /// receiver on this machine or network; off, tenants cannot make the server call
    /// into its own network).
    #[arg(long)]
    pub webhook_allow_private: bool,
    /// A PEM file of extra root certificates for https webhook endpoints (a private
    /// CA); the built-in webpki roots are always trusted.
    #[arg(long, value_name = "PEM")]
    pub webhook_ca: Option<PathBuf>,
}

impl WebhookArgs {
    /// As the node's configuration (reads `--webhook-ca`).
    pub fn config(&self) -> anyhow::Result<crate::node::webhooks::WebhookConfig> {
        use anyhow::Context;
        let mut extra_roots = Vec::new();
        if let Some(path) = &self.webhook_ca {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate bundle", path.display()))?;
            anyhow::ensure!(
                !extra_roots.is_empty(),
                "{}: no certificate in it",
                path.display()
            );
        }
        Ok(crate::node::webhooks::WebhookConfig {
            retry_base: self.webhook_retry_base,
            max_attempts: self.webhook_attempts.max(1),
            disable_after: self.webhook_disable_after.max(1),
            allow_private: self.webhook_allow_private,
            extra_roots,
            ..Default::default()
        })
    }
}

/// Arguments of `wasmesh demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The compiled mandelbrot example.
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip1/release/mandelbrot.wasm"
    )]
    pub module: PathBuf,
    /// Where to write the picture.
    #[arg(long, default_value = "mandelbrot.png")]
    pub out: PathBuf,
    /// Edge of the square image in pixels (a multiple of 4: 16 tiles in a 4 x 4 grid).
    #[arg(long, default_value_t = 1024)]
    pub size: u32,
    /// Iteration cap per pixel.
    #[arg(long, default_value_t = 1000)]
    pub max_iter: u32,
    /// Nodes in the local cluster (the first round uses one, the second all).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Slots of each node.
    #[arg(long, default_value_t = 1)]
    pub slots_per_node: usize,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size such as 1048576, 64MiB or 1GB: {e}"))
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Exec(args) => crate::exec::run(args),
        Command::Node(args) => crate::serve::run(args).map(|()| ExitCode::SUCCESS),
        Command::Coordinator(args) => crate::serve::coordinator(args).map(|()| ExitCode::SUCCESS),
        Command::Upload(args) => crate::commands::upload(args),
        Command::Submit(args) => crate::commands::submit(args),
        Command::Result(args) => crate::commands::result(args),
        Command::Wait(args) => crate::commands::wait(args),
        Command::Nodes(args) => crate::commands::nodes(args),
        Command::Dag(args) => crate::commands::dag(args),
        Command::Replay(args) => crate::commands::replay(args),
        Command::Bench {
            scenario: BenchScenario::Node { jobs, upload_mib },
        } => crate::bench::node(jobs, upload_mib).map(|()| ExitCode::SUCCESS),
        Command::Bench {
            scenario:
                BenchScenario::Cluster {
                    jobs,
                    module,
                    size,
                    max_iter,
                    prefetch,
                },
        } => crate::bench::cluster(jobs, &module, size, max_iter, prefetch)
            .map(|()| ExitCode::SUCCESS),
        Command::Bench {
            scenario: BenchScenario::Events { events, module },
        } => crate::bench::events(events, &module).map(|()| ExitCode::SUCCESS),
        Command::Bench {
            scenario:
                BenchScenario::Fanin {
                    rounds,
                    maps,
                    module,
                },
        } => crate::bench::fanin(rounds, maps, &module).map(|()| ExitCode::SUCCESS),
        Command::Bench {
            scenario: BenchScenario::Placement { nodes, jobs },
        } => crate::bench::placement(nodes, jobs).map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => crate::demo::run(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|error| {
        eprintln!("wasmesh: error: {error:#}");
        ExitCode::from(2)
    })
}
