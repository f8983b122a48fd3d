//! The `wasmesh` command line: the top-level parser lists the subcommands; each has one
//! file declaring its arguments (`Args`) and one `run` that turns them into calls to the
//! library (`wasmesh_host`).

mod autoscale;
mod bench;
mod client;
mod coordinator;
mod dag;
mod demo;
mod exec;
mod gc;
mod health;
mod local;
mod new_job;
mod node;
mod nodes;
mod replay;
mod result;
mod serve;
mod submit;
mod upload;
mod usage;
mod wait;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// wasmesh: run WebAssembly jobs in a sandbox, locally or across a fleet.
#[derive(Debug, Parser)]
#[command(name = "wasmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one wasm32-wasip1 module locally in the sandbox.
    ///
    /// Guest arguments that start with `-` go after `--`:
    /// `wasmesh exec job.wasm --fuel 1000000 -- --verbose input.txt`.
    Exec(exec::Args),
    /// Run a node: a content-addressed store and a compute server (see docs/api.md);
    /// with `--coordinator`, also a member of that coordinator's fleet.
    Node(Box<node::Args>),
    /// Run a coordinator: the scheduler of a fleet of nodes. It keeps the journal of
    /// every job, leases each runnable one to a node, retries lost ones elsewhere and
    /// routes events to handler groups, behind the same client API as a node.
    Coordinator(Box<coordinator::Args>),
    /// Start a new job: a crate with a `#[job]` that builds for wasm32-wasip1 anywhere.
    New(new_job::Args),
    /// Upload a worker module with the needs dance; prints the worker id.
    Upload(upload::Args),
    /// Submit an action as a job; prints its LSN (or, with --wait, its output).
    Submit(submit::Args),
    /// Show a job's result.
    Result(result::Args),
    /// Submit a workflow file (jobs and the outputs they pass on) as one queue.
    Dag(dag::Args),
    /// Wait until a queue has nothing pending.
    Wait(wait::Args),
    /// List a coordinator's nodes, or drain or deregister one (an operator key).
    Nodes(nodes::Args),
    /// Show what finished jobs consumed, by tenant, worker or queue.
    Usage(usage::Args),
    /// Collect the store's garbage now, or show what would go (`--dry-run`; an
    /// operator key).
    Gc(gc::Args),
    /// Probe a server's health (`/health`, or `/compute/ready` with `--ready`): exit 0
    /// when it answers 200, else 1. The container images' health check.
    Health(health::Args),
    /// Resubmit a recording (from `POST /compute/record/stop`) to a server.
    Replay(replay::Args),
    /// Benchmark scenarios (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        scenario: bench::Args,
    },
    /// The main job: a local cluster (a coordinator and nodes) renders the Mandelbrot set
    /// as 16 tiles, on one node and then on all, into a PNG, with the speed-up.
    Demo(demo::Args),
}

/// Parses a size such as `1048576`, `64MiB` or `1GB`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size such as 1048576, 64MiB or 1GB: {e}"))
}

/// Writes `bytes` to stdout. Every command writes through this (or [`say!`]), so a
/// closed pipe (`wasmesh result 1 | head`) is an error `main` ends the command on
/// quietly, as `cat` and `rg` do, instead of a panic in `println!`.
fn out(bytes: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()
}

/// `println!` through [`out`]: evaluates to an `io::Result<()>`.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cmd::out(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
use say;

/// Whether an error is stdout's reader having gone away.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Exec(args) => exec::run(args),
        Command::Node(args) => node::run(*args),
        Command::Coordinator(args) => coordinator::run(*args),
        Command::New(args) => new_job::run(args),
        Command::Upload(args) => upload::run(args),
        Command::Submit(args) => submit::run(args),
        Command::Result(args) => result::run(args),
        Command::Wait(args) => wait::run(args),
        Command::Nodes(args) => nodes::run(args),
        Command::Dag(args) => dag::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Usage(args) => usage::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Health(args) => health::run(args),
        Command::Bench { scenario } => bench::run(scenario),
        Command::Demo(args) => demo::run(args),
    };
    result.unwrap_or_else(|error| {
        if is_broken_pipe(&error) {
            // The reader has what it wanted; nothing is wrong.
            return ExitCode::SUCCESS;
        }
        eprintln!("wasmesh: error: {error:#}");
        ExitCode::from(2)
    })
}

/// The address `listen` (`host:port`) binds to: the first it resolves to.
pub fn resolve(listen: &str) -> anyhow::Result<std::net::SocketAddr> {
    use anyhow::Context;
    use std::net::ToSocketAddrs;
    listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}: not an address"))?
        .next()
        .with_context(|| format!("--listen {listen}: resolves to no address"))
}
