//! `wasmesh upload`: a worker module (and its files) with the needs dance.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value, json};
use wasmesh_host::model::HashHex;

use super::client::{ServerArgs, pairs, spinner};
use crate::cmd::say;

/// Arguments of `wasmesh upload`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The module.
    pub module: PathBuf,
    /// Worker name [default: the file's stem].
    #[arg(long)]
    pub name: Option<String>,
    /// Worker version.
    #[arg(long)]
    pub version: Option<String>,
    /// A file mounted under /worker, as `path=FILE` (repeatable).
    #[arg(long = "file", value_name = "PATH=FILE")]
    pub files: Vec<String>,
    /// An environment variable for every action, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub envs: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh upload`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.module
            .file_stem()
            .map_or("worker".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut chunks: Vec<(HashHex, Vec<u8>)> = vec![(HashHex::of(&wasm), wasm)];
    let mut files = Map::new();
    for (path, file) in pairs(&args.files, "--file")? {
        let bytes = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
        let hash = HashHex::of(&bytes);
        files.insert(path, json!(hash));
        chunks.push((hash, bytes));
    }
    let mut descriptor = json!({"name": name, "module": chunks[0].0});
    if let Some(version) = &args.version {
        descriptor["version"] = json!(version);
    }
    if !files.is_empty() {
        descriptor["files"] = Value::Object(files);
    }
    let envs = pairs(&args.envs, "--env")?;
    if !envs.is_empty() {
        descriptor["env"] = Value::Object(envs.into_iter().map(|(k, v)| (k, json!(v))).collect());
    }
    let bar = spinner(&format!("uploading {name}"));
    let borrowed: Vec<(HashHex, &[u8])> = chunks.iter().map(|(h, b)| (*h, b.as_slice())).collect();
    let upload = args.server.client().upload_worker(&descriptor, &borrowed)?;
    bar.finish_and_clear();
    if args.server.json {
        say!(
            "{}",
            json!({"worker": upload.worker, "sent_chunks": upload.sent_chunks, "sent_bytes": upload.sent_bytes})
        )?;
    } else {
        say!("{}", upload.worker)?;
    }
    Ok(ExitCode::SUCCESS)
}
