//! `wasmesh exec`: one action run locally in the sandbox, like `wasmtime run` but under
//! wasmesh's limits and with wasmesh's typed outcomes.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;
use wasmesh_runtime::{Config, Limits, Mount, Outcome, RunReport, RunSpec, Sandbox};

use std::path::PathBuf;
use std::time::Duration;

use super::parse_bytes;

/// Arguments of `wasmesh exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// Where compiled modules are kept between runs, as `wasmtime run` keeps its
    /// compile cache [default: `$XDG_CACHE_HOME/wasmesh/modules`, else
    /// `~/.cache/wasmesh/modules`].
    #[arg(long, env = "WASMESH_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile the module afresh and keep nothing.
    #[arg(long)]
    pub no_cache: bool,
}

/// The compile cache's directory: `--cache-dir`, else the user's cache directory.
fn cache_dir(args: &Args) -> Option<PathBuf> {
    if args.no_cache {
        return None;
    }
    if let Some(dir) = &args.cache_dir {
        return Some(dir.clone());
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(home.join("wasmesh").join("modules"))
}

/// Exit status for a trap, as a process killed by SIGABRT would report it.
pub const EXIT_TRAPPED: u8 = 134;
/// Exit status when a limit (fuel, memory, wall time, output) stopped the guest.
pub const EXIT_LIMIT: u8 = 125;
/// Exit status when the run was cancelled.
pub const EXIT_CANCELLED: u8 = 130;

/// The process exit status for an outcome: the guest's own code, or one of the
/// constants above.
pub fn exit_status(outcome: &Outcome) -> u8 {
    match outcome {
        // WASI exit codes are 0..=125 by convention; anything else is reported as 1.
        Outcome::Exited(code) => u8::try_from(*code).unwrap_or(1),
        Outcome::Trapped(_) => EXIT_TRAPPED,
        Outcome::Cancelled => EXIT_CANCELLED,
        _ => EXIT_LIMIT,
    }
}

/// Runs `wasmesh exec`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let stdin = read_input(args.input.as_deref())?;

    // A local run belongs to whoever started it: the limits asked for are the ceilings,
    // and anything not asked for keeps the sandbox default.
    let defaults = Limits::default();
    let limits = Limits {
        fuel: args.fuel.unwrap_or(defaults.fuel),
        memory_bytes: args.memory.unwrap_or(defaults.memory_bytes),
        timeout_ms: args.timeout.map_or(defaults.timeout_ms, |t| {
            t.as_millis().try_into().unwrap_or(u64::MAX)
        }),
        output_bytes: args.output_limit.unwrap_or(defaults.output_bytes),
    };
    let config = Config {
        limits,
        max_instances: 4,
        cache_dir: cache_dir(&args),
        ..Config::default()
    };
    // A cache directory that cannot be made costs the cache, not the run.
    let sandbox = match Sandbox::new(config.clone()) {
        Err(e) if config.cache_dir.is_some() => {
            tracing::warn!(error = %e, "running without the compile cache");
            Sandbox::new(Config {
                cache_dir: None,
                ..config
            })?
        }
        other => other?,
    };
    let module = sandbox
        .load(&wasm)
        .with_context(|| format!("loading {}", args.module.display()))?;

    let program = args
        .module
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module.wasm".into());
    let mut spec = RunSpec::new().program(program).args(args.args).stdin(stdin);
    for pair in &args.envs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair:?}: expected KEY=VALUE"))?;
        spec = spec.env(key, value);
    }
    // Like `wasmtime run`: the guest sees exactly the directories it is given (no
    // preopen the user did not ask for), `/` included.
    for dir in &args.dirs {
        let (host, guest) = dir.split_once("::").unwrap_or((dir, dir));
        if !std::path::Path::new(host).is_dir() {
            bail!("--dir {dir:?}: {host} is not a directory");
        }
        spec = spec.mount(Mount::dir(host, guest, true));
    }
    if !args.tmp {
        spec = spec.without_tmp();
    }

    let report = sandbox.run(&module, spec)?;
    let status = exit_status(&report.outcome);
    if args.json {
        let mut out = std::io::stdout().lock();
        let mut value = report_json(&report);
        let stats = sandbox.cache().stats();
        value["module_cache"] = json!(if stats.disk_hits > 0 {
            "disk_hit"
        } else if sandbox.config().cache_dir.is_some() {
            "compiled"
        } else {
            "off"
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        std::io::stdout().write_all(&report.stdout)?;
        std::io::stderr().write_all(&report.stderr)?;
        if !matches!(report.outcome, Outcome::Exited(_)) {
            eprintln!("wasmesh: the guest {}", report.outcome);
        }
    }
    Ok(ExitCode::from(status))
}

fn read_input(input: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match input {
        Some("-") => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading stdin")?;
        }
        Some(path) => {
            bytes = std::fs::read(path).with_context(|| format!("reading --input {path}"))?
        }
        None if !std::io::stdin().is_terminal() => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading stdin")?;
        }
        None => {}
    }
    Ok(bytes)
}

/// The `--json` report: outcome, exit code, trap message, output and usage.
pub fn report_json(report: &RunReport) -> serde_json::Value {
    let (exit_code, message) = match &report.outcome {
        Outcome::Exited(code) => (Some(*code), None),
        Outcome::Trapped(message) => (None, Some(message.clone())),
        _ => (None, None),
    };
    json!({
        "outcome": report.outcome.name(),
        "success": report.outcome.is_success(),
        "exit_code": exit_code,
        "message": message,
        "stdout": String::from_utf8_lossy(&report.stdout),
        "stdout_bytes": report.stdout.len(),
        "stderr": String::from_utf8_lossy(&report.stderr),
        "events": report.events,
        "progress": report.progress,
        "logs": report.logs,
        "checkpoint_bytes": report.checkpoint.as_ref().map(Vec::len),
        "usage": {
            "fuel": report.usage.fuel,
            "wall_ms": report.usage.wall.as_secs_f64() * 1000.0,
            "instantiate_ms": report.usage.instantiate.as_secs_f64() * 1000.0,
            "peak_memory_bytes": report.usage.peak_memory_bytes,
        },
    })
}
