//! `wasmesh wait`: waits until a queue has nothing pending, with a progress bar.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

use super::client::ServerArgs;
use crate::cmd::say;

/// Arguments of `wasmesh wait`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue (id or token).
    pub queue: String,
    /// How long to wait.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh wait`: waits until a queue has nothing pending.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.server.client();
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} jobs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let status = client.wait_queue(&args.queue, args.timeout, |status| {
        let counts = &status["counts"];
        let count = |key: &str| counts[key].as_u64().unwrap_or(0);
        let done = count("succeeded") + count("failed") + count("cancelled");
        bar.set_length(done + count("queued") + count("running"));
        bar.set_position(done);
        bar.set_message(format!("{} failed", count("failed")));
    })?;
    bar.finish_and_clear();
    if args.server.json {
        say!("{status}")?;
    } else {
        let counts = &status["counts"];
        say!(
            "queue {}: {} succeeded, {} failed, {} cancelled",
            args.queue,
            counts["succeeded"],
            counts["failed"],
            counts["cancelled"]
        )?;
    }
    if status["counts"]["failed"].as_u64().unwrap_or(0) > 0 {
        bail!("some jobs failed");
    }
    Ok(ExitCode::SUCCESS)
}
