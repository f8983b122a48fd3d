//! `wasmesh dag`: a workflow file submitted as one queue, optionally waited for.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wasmesh_host::model::JobState;

use super::client::{ServerArgs, spinner};
use crate::cmd::{out, say};

/// Arguments of `wasmesh dag`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workflow file (TOML when it ends in `.toml`, else JSON); see docs/api.md.
    pub file: PathBuf,
    /// Wait for every job and write the outputs of the jobs nothing depends on.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh dag`: submits a workflow file as one queue.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dag = wasmesh_host::dag::Dag::load(&args.file)?;
    let base = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let client = args.server.client();
    let submitted = wasmesh_host::dag::submit(&client, &dag, base)?;
    if !args.wait {
        if args.server.json {
            say!("{}", serde_json::to_string_pretty(&submitted)?)?;
        } else {
            say!("queue {}", submitted.queue)?;
            for (name, lsn) in &submitted.jobs {
                say!("{lsn}\t{name}")?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bar = spinner(&format!("{} jobs", submitted.jobs.len()));
    let results = wasmesh_host::dag::results(&client, &submitted, args.timeout)?;
    bar.finish_and_clear();
    let all_succeeded = results.values().all(|r| r.state == JobState::Succeeded);
    if args.server.json {
        let mut body = serde_json::to_value(&submitted)?;
        body["results"] = serde_json::to_value(&results)?;
        say!("{}", serde_json::to_string_pretty(&body)?)?;
    } else {
        for (name, result) in &results {
            let cached = if result.cached { " (cached)" } else { "" };
            eprintln!(
                "{}\t{name}\t{} {}{cached}",
                result.lsn, result.state, result.outcome
            );
        }
        for sink in &submitted.sinks {
            out(&client.blob(&results[sink].output)?)?;
        }
    }
    Ok(if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
