//! `wasmesh node`: configuration from flags, `WASMESH_*` environment and a TOML file,
//! then the server with graceful shutdown.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use wasmesh_runtime::Limits;

use tokio_util::sync::CancellationToken;

use crate::api::{AppState, auth::Auth};
use crate::cli::NodeArgs;
use crate::node::{Node, NodeConfig};

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

/// The `--tenants` file: tenant name -> its keys, or a table with its keys and role
/// (`ops = { keys = ["..."], role = "operator" }`).
#[derive(Debug, Deserialize)]
struct TenantsFile(HashMap<String, TenantEntry>);

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TenantEntry {
    Keys(Vec<String>),
    Table {
        keys: Vec<String>,
        #[serde(default)]
        role: Option<String>,
    },
}

/// Keys shorter than this are refused: a key is a secret, not a password.
const MIN_KEY: usize = 16;

fn read_toml<T: for<'de> Deserialize<'de>>(path: &PathBuf) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Runs `wasmesh node` until SIGINT/SIGTERM.
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let file: ConfigFile = match &args.config {
        Some(path) => read_toml(path)?,
        None => ConfigFile::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("wasmesh-data"));
    let mut config = NodeConfig::new(data_dir);
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
    let auth = tenant_auth(keys, Vec::new(), args.tenants.or(file.tenants).as_ref())?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let (coordinator, advertise, node_key) = (args.coordinator, args.advertise, args.node_key);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
        let address = listener.local_addr()?;
        if !auth.required() && !address.ip().is_loopback() {
            tracing::warn!(%address, "serving without API keys on a non-loopback address: anyone who can reach it can run code");
        }
        let node = Node::open(config)?;
        node.start();
        let membership_stop = CancellationToken::new();
        let (stop_polling, stop_reporting) = (CancellationToken::new(), CancellationToken::new());
        let agent = coordinator.as_ref().map(|coordinator| {
            crate::node::agent::Agent::new(node.clone(), coordinator.clone(), node_key.clone())
        });
        let agent_tasks = agent
            .as_ref()
            .map(|agent| agent.spawn(stop_polling.clone(), stop_reporting.clone()));
        let agent_handle = agent.clone();
        let membership = coordinator.map(|coordinator| {
            crate::node::membership::Membership {
                coordinator,
                advertise: advertise.unwrap_or_else(|| format!("http://{address}")),
                node_key,
                agent,
            }
            .spawn(node.clone(), membership_stop.clone())
        });
        let state = AppState { node: node.clone(), auth: Arc::new(auth) };
        // One line, flushed, that scripts and tests read to find the server.
        println!("wasmesh node {} listening on http://{address}", node.config.id);
        use std::io::Write;
        std::io::stdout().flush()?;
        crate::api::serve(listener, crate::api::app(state), shutdown_signal()).await?;
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
        node.stop(Duration::from_secs(10)).await;
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
        Ok(())
    })
}

/// Client authentication from `--api-key`s (the default tenant), `--admin-key`s (the
/// operator role, acting as tenant `operator`) and a `--tenants` file (tenant -> keys
/// and role); open when none is given.
fn tenant_auth(
    keys: Vec<String>,
    admin_keys: Vec<String>,
    tenants_file: Option<&PathBuf>,
) -> anyhow::Result<Auth> {
    use crate::api::auth::{DEFAULT_TENANT, OPERATOR_TENANT, Role};
    let mut auth = Auth::open();
    for key in &keys {
        auth.add(DEFAULT_TENANT, key, Role::Tenant);
    }
    for key in &admin_keys {
        if key.len() < MIN_KEY {
            bail!("--admin-key: a key has at least {MIN_KEY} characters");
        }
        auth.add(OPERATOR_TENANT, key, Role::Operator);
    }
    if let Some(path) = tenants_file {
        let TenantsFile(entries) = read_toml(path)?;
        for (tenant, entry) in entries {
            let (keys, role) = match entry {
                TenantEntry::Keys(keys) => (keys, None),
                TenantEntry::Table { keys, role } => (keys, role),
            };
            let role = match role.as_deref() {
                None => Role::Tenant,
                Some(name) => Role::parse(name).with_context(|| {
                    format!(
                        "{}: tenant {tenant:?} has role {name:?}; roles are \"tenant\" and \"operator\"",
                        path.display()
                    )
                })?,
            };
            if keys.iter().any(|k| k.len() < MIN_KEY) {
                bail!(
                    "{}: tenant {tenant:?} has a key shorter than {MIN_KEY} characters",
                    path.display()
                );
            }
            for key in &keys {
                auth.add(&tenant, key, role);
            }
        }
    }
    Ok(auth)
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Runs `wasmesh coordinator` until SIGINT/SIGTERM.
pub fn coordinator(args: crate::cli::CoordinatorArgs) -> anyhow::Result<()> {
    use crate::coordinator::node_auth::NodeAuth;
    use crate::coordinator::{CoordinatorConfig, CoordinatorState, Fleet};
    let fleet = Arc::new(Fleet::new(CoordinatorConfig {
        heartbeat_interval: args.heartbeat_interval,
        lease: args.lease,
        placement: args.placement,
        weights: args.placement_weights,
        prefetch: args.prefetch,
        inject_budget: crate::coordinator::budget::InjectBudget {
            runs: args.inject_max_runs.max(1),
            bytes: args.inject_max_bytes,
        },
    }));
    let mut config = NodeConfig::new(args.data_dir.clone());
    config.id = "coordinator".into();
    // The coordinator runs nothing itself; one slot's sandbox validates modules.
    config.slots = 1;
    config.idempotency_retention = args.idempotency_retention;
    config.webhooks = args.webhooks.config()?;
    if let Some(max) = args.max_blob_bytes {
        config.max_blob_bytes = max;
        config.max_request_bytes = config.max_request_bytes.max(max + (16 << 20));
    }
    let auth = Arc::new(tenant_auth(
        args.api_keys,
        args.admin_keys,
        args.tenants.as_ref(),
    )?);
    let node_auth = NodeAuth::new(args.node_key.as_deref(), args.node_keys.as_ref())?;
    if auth.required() && node_auth.is_open() {
        bail!(
            "client keys are set (--api-key/--admin-key/--tenants) but nodes are not \
             authenticated: pass --node-key KEY (or --node-keys FILE), or anyone could \
             register as a node and receive every tenant's work"
        );
    }
    let node_auth = Arc::new(node_auth);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let address = listener.local_addr()?;
        let node = Node::open_with(config, Some(fleet.clone()))?;
        node.start();
        let cluster = crate::coordinator::routes(CoordinatorState {
            node: node.clone(),
            fleet,
            auth: auth.clone(),
            node_auth,
        });
        let router = crate::api::app_with(
            AppState {
                node: node.clone(),
                auth,
            },
            cluster,
        );
        println!("wasmesh coordinator listening on http://{address}");
        use std::io::Write;
        std::io::stdout().flush()?;
        crate::api::serve(listener, router, shutdown_signal()).await?;
        node.stop(Duration::from_secs(1)).await;
        println!("wasmesh coordinator stopped");
        Ok(())
    })
}
