//! `wasmesh coordinator`: the scheduler of a fleet. It keeps the journal of every job,
//! places each runnable one on a node by lease, retries lost ones elsewhere, routes
//! events to handler groups, and serves the same client API as a node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use wasmesh_host::api::AppState;
use wasmesh_host::api::exposure::{self, Serving};
use wasmesh_host::engine::{Engine, NodeConfig};
use wasmesh_host::store::{Holding, Journal};

use super::parse_bytes;
use super::serve::{ListenArgs, UpkeepArgs, WebhookArgs, closing, tenant_auth};

/// Arguments of `wasmesh coordinator`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "WASMESH_LISTEN", default_value = "127.0.0.1:9100")]
    pub listen: String,
    /// An API key for clients (repeatable).
    #[arg(long = "api-key", env = "WASMESH_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// A TOML file of tenants and their keys (`name = ["key", ...]`); every tenant sees
    /// only its own blobs, workers, queues and jobs, across the whole fleet.
    #[arg(long, env = "WASMESH_TENANTS")]
    pub tenants: Option<PathBuf>,
    /// Operator keys (repeatable): fleet administration (drain, deregister, the node
    /// list, the whole topology); they act as tenant `operator` on the other routes.
    #[arg(long = "admin-key", env = "WASMESH_ADMIN_KEYS", value_delimiter = ',')]
    pub admin_keys: Vec<String>,
    /// The key nodes must present to register and heartbeat (any node id). Required
    /// (or `--node-keys`) when client keys are set.
    #[arg(long, env = "WASMESH_NODE_KEY")]
    pub node_key: Option<String>,
    /// A TOML file of per-node keys (`node-id = "key"`): each key is good for the node
    /// id it names only, so one node cannot register, report or heartbeat as another.
    #[arg(long, env = "WASMESH_NODE_KEYS")]
    pub node_keys: Option<PathBuf>,
    /// How often nodes heartbeat.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// A node silent for this long is unhealthy, and a lease not renewed for this long
    /// expires (its job is requeued as `node_lost`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Where the journal (jobs, queues, workers, results) and the store live.
    #[arg(
        long,
        env = "WASMESH_DATA_DIR",
        default_value = "wasmesh-coordinator-data"
    )]
    pub data_dir: PathBuf,
    /// The journal in PostgreSQL (`postgres://user:password@host:5432/database`)
    /// instead of the SQLite file in the data directory; `?options=-csearch_path%3Dname`
    /// puts it in a schema of its own (created when missing).
    #[arg(long, env = "WASMESH_JOURNAL", value_parser = Journal::parse)]
    pub journal: Option<Journal>,
    /// The blob store's directory, instead of `DATA_DIR/cas`: coordinators sharing a
    /// journal (`--standby`) share it too (a network file system, or one volume).
    #[arg(long, env = "WASMESH_CAS_DIR")]
    pub cas_dir: Option<PathBuf>,
    /// With a PostgreSQL journal another coordinator owns: wait (not listening yet),
    /// and take the journal over when that coordinator stops or stops beating for
    /// `--takeover-after`.
    #[arg(long, requires = "journal", conflicts_with = "shared")]
    pub standby: bool,
    /// With a PostgreSQL journal: share it with the other coordinators started with
    /// `--shared` (and the same `--cas-dir`), all active: any of them takes clients'
    /// requests and nodes; one of them (the leader) runs webhook deliveries,
    /// housekeeping, garbage collection and autoscaling, and expires the leases of
    /// nodes none of them hears.
    #[arg(long, requires = "journal")]
    pub shared: bool,
    /// How long the journal's owner (or a shared journal's leader) may go without
    /// beating (its beat is every second) before a standby (another coordinator)
    /// takes over.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub takeover_after: Duration,
    /// How placement chooses a node.
    #[arg(long, value_enum, default_value = "score")]
    pub placement: wasmesh_host::cluster::placement::Strategy,
    /// Weights of the score's factors, e.g. `capacity=1,locality=0.3,reliability=1,cost=0.2,affinity=0.2`.
    #[arg(long, default_value = "")]
    pub placement_weights: wasmesh_host::cluster::placement::Weights,
    /// Leases a node may hold beyond its slots (queued on the node): a number, or
    /// `auto` (enough to cover ~20 ms of the node's recent run times, at most 8 a slot;
    /// none for jobs longer than that).
    #[arg(long, default_value = "auto")]
    pub prefetch: wasmesh_host::cluster::prefetch::Prefetch,
    /// Handler runs one inject into a group may cause at most (a fan-out past it is
    /// dropped and logged as `"dropped": "budget"`).
    #[arg(long, default_value_t = 1000)]
    pub inject_max_runs: u64,
    /// Bytes of events one inject may route on to handlers at most, e.g. `16MiB`.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes)]
    pub inject_max_bytes: u64,
    /// Bytes the handler runs of one inject may produce (their events and outputs,
    /// stored whether routed or not) before nothing more is routed, e.g. `48MiB`.
    #[arg(long, default_value = "48MiB", value_parser = parse_bytes)]
    pub inject_max_produced_bytes: u64,
    /// Largest blob accepted by the store.
    #[arg(long)]
    pub max_blob_bytes: Option<u64>,
    /// How long `Idempotency-Key`s and their stored responses are kept.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_retention: Duration,
    #[command(flatten)]
    pub listening: ListenArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub upkeep: UpkeepArgs,
    #[command(flatten)]
    pub autoscale: super::autoscale::AutoscaleArgs,
}

/// Runs `wasmesh coordinator` until SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use wasmesh_host::api::cluster::CoordinatorState;
    use wasmesh_host::api::cluster::node_auth::NodeAuth;
    use wasmesh_host::cluster::{CoordinatorConfig, Fleet};
    let fleet = Arc::new(Fleet::new(CoordinatorConfig {
        heartbeat_interval: args.heartbeat_interval,
        lease: args.lease,
        placement: args.placement,
        weights: args.placement_weights,
        prefetch: args.prefetch,
        inject_budget: wasmesh_host::cluster::budget::InjectBudget {
            runs: args.inject_max_runs.max(1),
            bytes: args.inject_max_bytes,
            produced: args.inject_max_produced_bytes,
        },
    }));
    let mut config = NodeConfig::new(args.data_dir.clone());
    config.journal = args.journal.clone();
    config.holding = if args.shared {
        Holding::Shared(args.takeover_after)
    } else if args.standby {
        Holding::Standby(args.takeover_after)
    } else {
        Holding::Alone
    };
    config.cas_dir = args.cas_dir.clone();
    config.id = "coordinator".into();
    // The coordinator runs nothing itself; one slot's sandbox validates modules.
    config.slots = 1;
    config.idempotency_retention = args.idempotency_retention;
    config.webhooks = args.webhooks.config()?;
    args.upkeep.apply(&mut config)?;
    if let Some(max) = args.max_blob_bytes {
        config.max_blob_bytes = max;
        config.max_request_bytes = config.max_request_bytes.max(max + (16 << 20));
    }
    let (auth, quotas) = tenant_auth(args.api_keys, args.admin_keys, args.tenants.as_ref())?;
    config.quotas = quotas;
    let node_auth = NodeAuth::new(args.node_key.as_deref(), args.node_keys.as_ref())?;
    let serving = Serving::Coordinator {
        nodes_authenticated: !node_auth.is_open(),
    };
    let node_auth = Arc::new(node_auth);
    let bind = super::resolve(&args.listen)?;
    let auth = Arc::new(exposure::admit(
        serving,
        auth,
        bind,
        args.listening.insecure_no_auth,
    )?);
    let limits = args.listening.limits();
    if args.autoscale.kind == super::autoscale::Kind::Local
        && args.node_key.is_none()
        && args.node_keys.is_some()
    {
        bail!("--autoscale local starts nodes with --node-key: pass it (not only --node-keys)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // The journal first: a standby listens only once it owns it, so clients and
        // nodes trying it meanwhile move on at once.
        let engine = Engine::open_with(config, fleet.clone())?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let address = listener.local_addr()?;
        engine.start();
        wasmesh_host::cluster::start(&engine, &fleet);
        let autoscaling = args.autoscale.build(
            &format!("http://{address}"),
            &args.data_dir,
            args.node_key.as_deref(),
        )?;
        autoscaling.start(engine.clone(), fleet.clone());
        let cluster = wasmesh_host::api::cluster::routes(CoordinatorState {
            engine: engine.clone(),
            fleet: fleet.clone(),
            auth: auth.clone(),
            node_auth,
            autoscaling: autoscaling.clone(),
        });
        let router = wasmesh_host::api::app_with(
            AppState {
                engine: engine.clone(),
                auth,
                fleet: Some(fleet),
            },
            cluster,
        );
        println!("wasmesh coordinator listening on http://{address}");
        use std::io::Write;
        std::io::stdout().flush()?;
        wasmesh_host::api::serve(listener, router, limits, closing(engine.clone())).await?;
        engine.stop();
        // Off the runtime: it waits for the local nodes to stop.
        tokio::task::spawn_blocking(move || autoscaling.stop()).await?;
        println!("wasmesh coordinator stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
