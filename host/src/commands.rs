//! Client commands of the CLI: `upload`, `submit`, `result`, `wait`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::model::HashHex;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The node or coordinator to talk to.
    #[arg(long, env = "WASMESH_SERVER", default_value = "http://127.0.0.1:9000")]
    pub server: String,
    /// API key, when the server requires one.
    #[arg(long, env = "WASMESH_API_KEY")]
    pub api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ServerArgs {
    fn client(&self) -> Client {
        Client::new(&self.server, self.api_key.clone())
    }
}

/// Arguments of `wasmesh upload`.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
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

/// Arguments of `wasmesh submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
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

/// Arguments of `wasmesh result`.
#[derive(Debug, clap::Args)]
pub struct ResultArgs {
    /// The job's LSN.
    pub lsn: u64,
    /// Write the job's stdout instead of the result.
    #[arg(long)]
    pub output: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `wasmesh nodes` (fleet administration: an operator key).
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// Drain this node: no new work, its running jobs finish.
    #[arg(long, value_name = "ID", conflicts_with = "deregister")]
    pub drain: Option<String>,
    /// Deregister this node.
    #[arg(long, value_name = "ID")]
    pub deregister: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `wasmesh dag`.
#[derive(Debug, clap::Args)]
pub struct DagArgs {
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
pub fn dag(args: DagArgs) -> anyhow::Result<ExitCode> {
    let dag = crate::dag::Dag::load(&args.file)?;
    let base = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let client = args.server.client();
    let submitted = crate::dag::submit(&client, &dag, base)?;
    if !args.wait {
        if args.server.json {
            println!("{}", serde_json::to_string_pretty(&submitted)?);
        } else {
            println!("queue {}", submitted.queue);
            for (name, lsn) in &submitted.jobs {
                println!("{lsn}\t{name}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bar = spinner(&format!("{} jobs", submitted.jobs.len()));
    let results = crate::dag::results(&client, &submitted, args.timeout)?;
    bar.finish_and_clear();
    let all_succeeded = results.values().all(|r| r.state == "succeeded");
    if args.server.json {
        let mut body = serde_json::to_value(&submitted)?;
        body["results"] = serde_json::to_value(&results)?;
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        for (name, result) in &results {
            let cached = if result.cached { " (cached)" } else { "" };
            eprintln!(
                "{}\t{name}\t{} {}{cached}",
                result.lsn, result.state, result.outcome
            );
        }
        for sink in &submitted.sinks {
            std::io::stdout().write_all(&client.blob(&results[sink].output)?)?;
        }
    }
    Ok(if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Arguments of `wasmesh wait`.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// The queue (id or token).
    pub queue: String,
    /// How long to wait.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn pairs(items: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{flag} {item:?}: expected NAME=VALUE"))
        })
        .collect()
}

fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// `wasmesh upload`.
pub fn upload(args: UploadArgs) -> anyhow::Result<ExitCode> {
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
        println!(
            "{}",
            json!({"worker": upload.worker, "sent_chunks": upload.sent_chunks, "sent_bytes": upload.sent_bytes})
        );
    } else {
        println!("{}", upload.worker);
    }
    Ok(ExitCode::SUCCESS)
}

/// `wasmesh submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
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
    let lsn = client.submit(&action, args.queue.as_deref(), args.priority)?;
    if !args.wait {
        if args.server.json {
            println!("{}", json!({"lsn": lsn}));
        } else {
            println!("{lsn}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bar = spinner(&format!("job {lsn}"));
    let result = client.wait(lsn, args.timeout)?;
    bar.finish_and_clear();
    if args.server.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        std::io::stdout().write_all(&client.blob(&result.output)?)?;
        std::io::stderr().write_all(&client.blob(&result.stderr)?)?;
        if result.state != "succeeded" {
            eprintln!("wasmesh: job {lsn} {} ({})", result.state, result.outcome);
        }
    }
    Ok(ExitCode::from(
        match (result.state.as_str(), result.exit_code) {
            ("succeeded", _) => 0,
            (_, Some(code)) => u8::try_from(code).unwrap_or(1).max(1),
            _ => crate::exec::EXIT_LIMIT,
        },
    ))
}

/// `wasmesh result`.
pub fn result(args: ResultArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client();
    match client.result(args.lsn)? {
        None => {
            println!(
                "{}",
                if args.server.json {
                    json!({"lsn": args.lsn, "state": "pending"}).to_string()
                } else {
                    "pending".into()
                }
            );
            Ok(ExitCode::from(3))
        }
        Some(result) if args.output => {
            std::io::stdout().write_all(&client.blob(&result.output)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(result) => {
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `wasmesh nodes`: the coordinator's nodes, or drains or deregisters one.
pub fn nodes(args: NodesArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client();
    let answer = match (&args.drain, &args.deregister) {
        (Some(id), _) => client.call(
            reqwest::Method::POST,
            &format!("/api/v1/cluster/nodes/{id}/drain"),
            None,
        )?,
        (None, Some(id)) => client.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/cluster/nodes/{id}"),
            None,
        )?,
        (None, None) => client.call(reqwest::Method::GET, "/api/v1/cluster/nodes", None)?,
    };
    let listing = args.drain.is_none() && args.deregister.is_none();
    if args.server.json || !listing {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<10} {:>5} {:>7}  address",
        "id", "state", "slots", "running"
    );
    for node in answer["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<10} {:>5} {:>7}  {}",
            node["id"].as_str().unwrap_or_default(),
            node["state"].as_str().unwrap_or_default(),
            node["slots"],
            node["running"],
            node["address"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `wasmesh wait`: waits until a queue has nothing pending.
pub fn wait(args: WaitArgs) -> anyhow::Result<ExitCode> {
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
        println!("{status}");
    } else {
        let counts = &status["counts"];
        println!(
            "queue {}: {} succeeded, {} failed, {} cancelled",
            args.queue, counts["succeeded"], counts["failed"], counts["cancelled"]
        );
    }
    if status["counts"]["failed"].as_u64().unwrap_or(0) > 0 {
        bail!("some jobs failed");
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `wasmesh replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The recording directory (the `path` that `POST /compute/record/stop` returned).
    pub recording: PathBuf,
    /// Submit into this queue (id or token).
    #[arg(long)]
    pub queue: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh replay`: uploads each recorded worker and input with the needs dance and
/// resubmits every recorded action, in order.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
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
        let worker: crate::model::WorkerDescriptor =
            serde_json::from_value(entry["worker"].clone())?;
        let action: crate::model::ActionDescriptor =
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
        println!("{}", json!({"jobs": lsns}));
    } else {
        println!("replayed {} actions: {:?}", lsns.len(), lsns);
    }
    Ok(ExitCode::SUCCESS)
}
