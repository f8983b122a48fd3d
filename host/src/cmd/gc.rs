//! `wasmesh gc`: collect the store's garbage now, or with `--dry-run` show what a
//! collection would free (an operator key).

use std::process::ExitCode;

use super::client::ServerArgs;
use crate::cmd::say;

/// Arguments of `wasmesh gc`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Delete nothing: list what a collection would free now.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh gc`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = format!("/compute/gc?dry_run={}", args.dry_run);
    let answer = args
        .server
        .client()
        .call(reqwest::Method::POST, &path, None)?;
    if args.server.json {
        say!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let number = |field: &str| answer[field].as_u64().unwrap_or(0);
    if args.dry_run {
        for hash in answer["freed"].as_array().into_iter().flatten() {
            say!("{}", hash.as_str().unwrap_or_default())?;
        }
    }
    let verb = if args.dry_run { "would free" } else { "freed" };
    say!(
        "{verb} {} blobs ({} bytes) and {} ownership rows; the store holds {} blobs ({} bytes){}",
        number("blobs"),
        number("bytes"),
        number("rows"),
        number("store_blobs"),
        number("store_bytes"),
        if args.dry_run { " now" } else { " after" }
    )?;
    Ok(ExitCode::SUCCESS)
}
