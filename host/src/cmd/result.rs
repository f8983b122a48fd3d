//! `wasmesh result`: a job's result, or its stdout.

use std::process::ExitCode;

use serde_json::json;

use super::client::ServerArgs;
use crate::cmd::{out, say};

/// Arguments of `wasmesh result`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job's LSN.
    pub lsn: u64,
    /// Write the job's stdout instead of the result.
    #[arg(long)]
    pub output: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh result`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.server.client();
    match client.result(args.lsn)? {
        None => {
            say!(
                "{}",
                if args.server.json {
                    json!({"lsn": args.lsn, "state": "pending"}).to_string()
                } else {
                    "pending".into()
                }
            )?;
            Ok(ExitCode::from(3))
        }
        Some(result) if args.output => {
            out(&client.blob(&result.output)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(result) => {
            say!("{}", serde_json::to_string_pretty(&result)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
