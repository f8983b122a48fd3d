//! `wasmesh submit`: one action as a job, optionally waited for.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Map, Value, json};
use wasmesh_host::model::{HashHex, JobState};

use super::client::{ServerArgs, pairs, spinner};
use crate::cmd::{out, say};

/// Arguments of `wasmesh submit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The worker id (from `wasmesh upload`).
    pub worker: String,
    /// File whose bytes are the action's stdin (`-` for this process's stdin).
    #[arg(long)]
    pub input: Option<String>,
    /// An argument for the guest (repeatable, in order).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// An input file mounted under /input, as `path=FILE` (repeatable).
    #[arg(long = "file", value_name = "PATH=FILE")]
    pub files: Vec<String>,
    /// An environment variable, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub envs: Vec<String>,
    /// The queue (id or token) to submit into.
    #[arg(long)]
    pub queue: Option<String>,
    /// Priority (higher runs first).
    #[arg(long)]
    pub priority: Option<i64>,
    /// Wait for the result and write the job's stdout.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh submit`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let worker: HashHex = args.worker.parse().context("the worker id")?;
    let client = args.server.client();
    let mut action = json!({"worker": worker});
    if let Some(input) = &args.input {
        let bytes = if input == "-" {
            let mut buffer = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer)?;
            buffer
        } else {
            std::fs::read(input).with_context(|| format!("reading {input}"))?
        };
        action["input"] = json!(client.ensure_blobs(&[&bytes])?[0]);
    }
    if !args.args.is_empty() {
        action["args"] = json!(args.args);
    }
    let envs = pairs(&args.envs, "--env")?;
    if !envs.is_empty() {
        action["env"] = Value::Object(envs.into_iter().map(|(k, v)| (k, json!(v))).collect());
    }
    let files = pairs(&args.files, "--file")?;
    if !files.is_empty() {
        let mut map = Map::new();
        for (path, file) in files {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
            map.insert(path, json!(client.ensure_blobs(&[&bytes])?[0]));
        }
        action["files"] = Value::Object(map);
    }
    // With --wait, the submission itself waits on the server (one round trip when the
    // job is quick); a longer job is then long-polled.
    let wait = if args.wait {
        args.timeout.min(std::time::Duration::from_secs(30))
    } else {
        std::time::Duration::ZERO
    };
    let (lsn, early) =
        client.submit_waiting(&action, args.queue.as_deref(), args.priority, wait)?;
    if !args.wait {
        if args.server.json {
            say!("{}", json!({"lsn": lsn}))?;
        } else {
            say!("{lsn}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let result = match early {
        Some(result) => result,
        None => {
            let bar = spinner(&format!("job {lsn}"));
            let result = client.wait(lsn, args.timeout)?;
            bar.finish_and_clear();
            result
        }
    };
    if args.server.json {
        say!("{}", serde_json::to_string_pretty(&result)?)?;
    } else {
        out(&client.blob(&result.output)?)?;
        std::io::Write::write_all(&mut std::io::stderr(), &client.blob(&result.stderr)?)?;
        if result.state != JobState::Succeeded {
            eprintln!("wasmesh: job {lsn} {} ({})", result.state, result.outcome);
        }
    }
    Ok(ExitCode::from(match (result.state, result.exit_code) {
        (JobState::Succeeded, _) => 0,
        (_, Some(code)) => u8::try_from(code).unwrap_or(1).max(1),
        _ => crate::cmd::exec::EXIT_LIMIT,
    }))
}
