//! `wasmesh replay`: a recording resubmitted, each chunk uploaded with the needs dance.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use wasmesh_host::model::HashHex;

use super::client::ServerArgs;
use crate::cmd::say;

/// Arguments of `wasmesh replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recording directory: `DATA_DIR/recordings/<id>` on the server, the id
    /// `POST /compute/record/stop` returned.
    pub recording: PathBuf,
    /// Submit into this queue (id or token).
    #[arg(long)]
    pub queue: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh replay`: uploads each recorded worker and input with the needs dance and
/// resubmits every recorded action, in order.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;

    let client = args.server.client();
    let lines = std::io::BufReader::new(
        std::fs::File::open(args.recording.join("actions.jsonl"))
            .with_context(|| format!("{} is not a recording", args.recording.display()))?,
    );
    let chunk = |hash: &HashHex| -> anyhow::Result<Vec<u8>> {
        let path = args.recording.join("chunks").join(hash.to_string());
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let mut uploaded = std::collections::HashSet::new();
    let mut lsns = Vec::new();
    for (number, line) in lines.lines().enumerate() {
        let line = line?;
        let entry: Value = serde_json::from_str(&line)
            .with_context(|| format!("line {} of actions.jsonl", number + 1))?;
        let worker: wasmesh_host::model::WorkerDescriptor =
            serde_json::from_value(entry["worker"].clone())?;
        let action: wasmesh_host::model::ActionDescriptor =
            serde_json::from_value(entry["action"].clone())?;
        if uploaded.insert(action.worker) {
            let bytes: Vec<(HashHex, Vec<u8>)> = worker
                .chunks()
                .iter()
                .map(|h| chunk(h).map(|b| (*h, b)))
                .collect::<anyhow::Result<_>>()?;
            let borrowed: Vec<(HashHex, &[u8])> =
                bytes.iter().map(|(h, b)| (*h, b.as_slice())).collect();
            let upload = client.upload_worker(&entry["worker"], &borrowed)?;
            if upload.worker != action.worker {
                bail!(
                    "line {}: the recorded worker hashes to {}, the action names {}",
                    number + 1,
                    upload.worker,
                    action.worker
                );
            }
        }
        let inputs: Vec<Vec<u8>> = action
            .chunks()
            .iter()
            .map(chunk)
            .collect::<anyhow::Result<_>>()?;
        client.ensure_blobs(&inputs.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        lsns.push(client.submit(&entry["action"], args.queue.as_deref(), None)?);
    }
    if args.server.json {
        say!("{}", json!({"jobs": lsns}))?;
    } else {
        say!("replayed {} actions: {:?}", lsns.len(), lsns)?;
    }
    Ok(ExitCode::SUCCESS)
}
