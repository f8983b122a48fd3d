//! `wasmesh node`: configuration from flags, `WASMESH_*` environment and a TOML file,
//! then the server (and, with `--coordinator`, its membership in a fleet) with
//! graceful shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use wasmesh_host::api::AppState;
use wasmesh_host::api::exposure::{self, Serving};
use wasmesh_host::cluster::member::{agent::Agent, membership::Membership};
use wasmesh_host::engine::{Engine, NodeConfig};
use wasmesh_host::run::Runner;
use wasmesh_host::store::Journal;
use wasmesh_runtime::Limits;

use super::parse_bytes;
use super::serve::{ListenArgs, UpkeepArgs, WebhookArgs, closing, read_toml, tenant_auth};

/// Arguments of `wasmesh node`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the bound address is
    /// printed on one line at start).
    #[arg(long, env = "WASMESH_LISTEN")]
    pub listen: Option<String>,
    /// Where the store, the database and compiled modules live [default: wasmesh-data].
    #[arg(long, env = "WASMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The journal in PostgreSQL (`postgres://...`, as for `wasmesh coordinator`)
    /// instead of the SQLite file in the data directory: for a node serving clients on
    /// its own. (No environment variable: nodes a coordinator starts inherit its
    /// environment, and each must keep a journal of its own.)
    #[arg(long, value_parser = Journal::parse)]
    pub journal: Option<Journal>,
    /// Actions run at once [default: the CPU count].
    #[arg(long, env = "WASMESH_SLOTS")]
    pub slots: Option<usize>,
    /// An API key for the single tenant `default` (repeatable).
    #[arg(long = "api-key", env = "WASMESH_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// A TOML file of tenants and their keys: `name = ["key", ...]`.
    #[arg(long, env = "WASMESH_TENANTS")]
    pub tenants: Option<PathBuf>,
    /// Operator keys (repeatable): `/metrics` and every tenant's view. On a node
    /// joined to a coordinator without client keys, the only key its API takes
    /// (Prometheus scrapes with it).
    #[arg(long = "admin-key", env = "WASMESH_ADMIN_KEYS", value_delimiter = ',')]
    pub admin_keys: Vec<String>,
    /// A node label, `key=value` (repeatable).
    #[arg(long = "label", env = "WASMESH_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// A TOML file with any of these settings (flags and environment win).
    #[arg(long, env = "WASMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node's id [default: generated once and kept in the data directory].
    #[arg(long, env = "WASMESH_NODE_ID")]
    pub node_id: Option<String>,
    /// Fuel ceiling per action.
    #[arg(long, env = "WASMESH_FUEL")]
    pub fuel: Option<u64>,
    /// Memory ceiling per action, e.g. `512MiB`.
    #[arg(long, env = "WASMESH_MEMORY", value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Wall-time ceiling per action, e.g. `60s`.
    #[arg(long, env = "WASMESH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Stdout ceiling per action, e.g. `64MiB`.
    #[arg(long, env = "WASMESH_OUTPUT_LIMIT", value_parser = parse_bytes)]
    pub output_limit: Option<u64>,
    /// Largest blob the store accepts, e.g. `1GiB`.
    #[arg(long, env = "WASMESH_MAX_BLOB_BYTES", value_parser = parse_bytes)]
    pub max_blob_bytes: Option<u64>,
    /// Idle queues expire after this long, e.g. `15m`.
    #[arg(long, env = "WASMESH_QUEUE_IDLE", value_parser = humantime::parse_duration)]
    pub queue_idle: Option<Duration>,
    /// How long `Idempotency-Key`s and their stored responses are kept (default 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idempotency_retention: Option<Duration>,
    #[command(flatten)]
    pub listening: ListenArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub upkeep: UpkeepArgs,
    /// Join this coordinator: register, heartbeat, re-register after a 404. A
    /// comma-separated list: the node stays with one and moves to the next when that
    /// one stops answering.
    #[arg(long, env = "WASMESH_COORDINATOR")]
    pub coordinator: Option<String>,
    /// With several coordinators, start with the one the node id gives (the number it
    /// ends in, as a StatefulSet pod's, else a hash of it) instead of the first, so
    /// nodes given the same list spread over the coordinators.
    #[arg(long, env = "WASMESH_COORDINATOR_SPREAD", requires = "coordinator")]
    pub coordinator_spread: bool,
    /// The URL the coordinator reaches this node at [default: the bound address].
    #[arg(long, env = "WASMESH_ADVERTISE")]
    pub advertise: Option<String>,
    /// The key nodes present to the coordinator.
    #[arg(long, env = "WASMESH_NODE_KEY")]
    pub node_key: Option<String>,
    /// Shut down (gracefully) when the process that started this one goes: the
    /// coordinator's local autoscaler starts its nodes so.
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

/// The `--config` file: the same settings as the flags (flags win).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    slots: Option<usize>,
    node_id: Option<String>,
    api_keys: Option<Vec<String>>,
    tenants: Option<PathBuf>,
    labels: Option<BTreeMap<String, String>>,
    fuel: Option<u64>,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    output_bytes: Option<u64>,
    max_blob_bytes: Option<u64>,
    queue_idle_secs: Option<u64>,
}

/// Runs `wasmesh node` until SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file: ConfigFile = match &args.config {
        Some(path) => read_toml(path)?,
        None => ConfigFile::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("wasmesh-data"));
    let mut config = NodeConfig::new(data_dir);
    config.journal = args.journal;
    if let Some(slots) = args.slots.or(file.slots) {
        config.slots = slots.max(1);
    }
    config.id = match args.node_id.or(file.node_id) {
        Some(id) => id,
        None => stable_node_id(&config.data_dir)?,
    };
    let defaults = Limits::default();
    config.limits = Limits {
        fuel: args.fuel.or(file.fuel).unwrap_or(defaults.fuel),
        memory_bytes: args
            .memory
            .or(file.memory_bytes)
            .unwrap_or(defaults.memory_bytes),
        timeout_ms: args
            .timeout
            .map(|t| t.as_millis() as u64)
            .or(file.timeout_ms)
            .unwrap_or(defaults.timeout_ms),
        output_bytes: args
            .output_limit
            .or(file.output_bytes)
            .unwrap_or(defaults.output_bytes),
    };
    if let Some(max) = args.max_blob_bytes.or(file.max_blob_bytes) {
        config.max_blob_bytes = max;
        config.max_request_bytes = config.max_request_bytes.max(max + (16 << 20));
    }
    if let Some(idle) = args
        .queue_idle
        .or(file.queue_idle_secs.map(Duration::from_secs))
    {
        config.queue_idle = idle;
    }
    if let Some(retention) = args.idempotency_retention {
        config.idempotency_retention = retention;
    }
    config.webhooks = args.webhooks.config()?;
    args.upkeep.apply(&mut config)?;
    config.labels = file.labels.unwrap_or_default();
    for label in &args.labels {
        let (key, value) = label
            .split_once('=')
            .with_context(|| format!("--label {label:?}: expected key=value"))?;
        config.labels.insert(key.into(), value.into());
    }

    let keys: Vec<String> = args
        .api_keys
        .into_iter()
        .chain(file.api_keys.unwrap_or_default())
        .collect();
    let (auth, quotas) = tenant_auth(
        keys,
        args.admin_keys,
        args.tenants.or(file.tenants).as_ref(),
    )?;
    config.quotas = quotas;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let (coordinator, advertise, node_key) = (args.coordinator, args.advertise, args.node_key);
    if let Some(key) = &node_key {
        wasmesh_host::api::auth::check_key("--node-key (WASMESH_NODE_KEY)", key)?;
    }
    let serving = Serving::Node {
        joined: coordinator.is_some(),
    };
    let auth = exposure::admit(
        serving,
        auth,
        super::resolve(&listen)?,
        args.listening.insecure_no_auth,
    )?;
    let limits = args.listening.limits();
    let spread = args.coordinator_spread.then(|| config.id.clone());
    let exit_with_parent = args.exit_with_parent;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let address = listener.local_addr()?;
        let engine = Engine::open(config)?;
        engine.start();
        let runner = Runner::new(engine.clone());
        runner.start();
        let membership_stop = CancellationToken::new();
        let (stop_polling, stop_reporting) = (CancellationToken::new(), CancellationToken::new());
        let coordinators = coordinator.as_deref().map(|list| {
            let coordinators = wasmesh_host::cluster::member::Coordinators::new(list);
            Arc::new(match &spread {
                Some(id) => coordinators.spread(id),
                None => coordinators,
            })
        });
        let agent = coordinators
            .as_ref()
            .map(|coordinators| Agent::new(runner.clone(), coordinators.clone(), node_key.clone()));
        let agent_tasks = agent
            .as_ref()
            .map(|agent| agent.spawn(stop_polling.clone(), stop_reporting.clone()));
        let agent_handle = agent.clone();
        let membership = coordinators.map(|coordinators| {
            Membership {
                coordinators,
                advertise: advertise.unwrap_or_else(|| format!("http://{address}")),
                node_key,
                agent,
            }
            .spawn(engine.clone(), membership_stop.clone())
        });
        let state = AppState::new(engine.clone(), Arc::new(auth));
        // One line, flushed, that scripts and tests read to find the server.
        println!(
            "wasmesh node {} listening on http://{address}",
            engine.config().id
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        let app = wasmesh_host::api::app(state);
        let closed = closing(engine.clone());
        let orphaned = async move {
            if !exit_with_parent {
                return std::future::pending().await;
            }
            let parent = rustix::process::getppid();
            while rustix::process::getppid() == parent {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            tracing::warn!("the process that started this node is gone: shutting down");
        };
        let stop = async move {
            tokio::select! {
                () = closed => {}
                () = orphaned => {}
            }
        };
        wasmesh_host::api::serve(listener, app, limits, stop).await?;
        tracing::info!("shutting down: waiting for running jobs");
        // No new leases (those not yet received go back to the coordinator's queue);
        // running ones finish (heartbeats keep renewing them), their results are
        // reported, then the node leaves the fleet.
        if let Some(agent) = &agent_handle {
            agent.leave(false).await;
        }
        stop_polling.cancel();
        let report_task = match agent_tasks {
            Some((poll, report)) => {
                // The last poll may still bring leases: run them before the slots close.
                let _ = poll.await;
                if let Some(agent) = &agent_handle {
                    agent.finish_held(Duration::from_secs(10)).await;
                }
                Some(report)
            }
            None => None,
        };
        engine.stop();
        runner.drain(Duration::from_secs(10)).await;
        stop_reporting.cancel();
        if let Some(report) = report_task {
            let _ = report.await;
        }
        // Heartbeats stop first, or the next one would register the node again.
        membership_stop.cancel();
        if let Some(thread) = membership {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(agent) = &agent_handle {
            agent.leave(true).await;
        }
        println!("wasmesh node stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A node id that survives restarts: generated once, kept in the data directory.
fn stable_node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}
