//! What `wasmesh node` and `wasmesh coordinator` share: webhook settings, client keys
//! from flags and the tenants file, and the shutdown signal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use wasmesh_host::api::auth::Auth;
use wasmesh_host::engine::quota::{Quota, Quotas};

/// How webhook deliveries are retried (node and coordinator).
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// The wait before a failed delivery's first retry; it doubles per attempt, with
    /// jitter, up to an hour.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_retry_base: Duration,
    /// Attempts per delivery before it fails.
    #[arg(long, default_value_t = 8)]
    pub webhook_attempts: u32,
    /// Consecutive failed attempts after which an endpoint is disabled.
    #[arg(long, default_value_t = 20)]
    pub webhook_disable_after: u32,
    /// Let webhook endpoints be loopback, private or link-local addresses (for a
    /// receiver on this machine or network; off, tenants cannot make the server call
    /// into its own network).
    #[arg(long)]
    pub webhook_allow_private: bool,
    /// A PEM file of extra root certificates for https webhook endpoints (a private
    /// CA); the built-in webpki roots are always trusted.
    #[arg(long, value_name = "PEM")]
    pub webhook_ca: Option<PathBuf>,
}

impl WebhookArgs {
    /// As the node's configuration (reads `--webhook-ca`).
    pub fn config(&self) -> anyhow::Result<wasmesh_host::webhooks::WebhookConfig> {
        use anyhow::Context;
        let mut extra_roots = Vec::new();
        if let Some(path) = &self.webhook_ca {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate bundle", path.display()))?;
            anyhow::ensure!(
                !extra_roots.is_empty(),
                "{}: no certificate in it",
                path.display()
            );
        }
        Ok(wasmesh_host::webhooks::WebhookConfig {
            retry_base: self.webhook_retry_base,
            max_attempts: self.webhook_attempts.max(1),
            disable_after: self.webhook_disable_after.max(1),
            allow_private: self.webhook_allow_private,
            extra_roots,
            ..Default::default()
        })
    }
}

/// How the listener guards itself (node and coordinator).
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Serve without API keys on an address other hosts can reach (refused
    /// otherwise): anyone who reaches it can run code.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// A connection that sends no complete request head for this long (new, or
    /// between requests) is closed.
    #[arg(long, env = "WASMESH_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Open connections at most [default: the descriptor limit less 256].
    #[arg(long, env = "WASMESH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections of one peer (address, or IPv6 /64) at most [default: half of
    /// --max-connections].
    #[arg(long, env = "WASMESH_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,
}

impl ListenArgs {
    /// The listener's limits.
    pub fn limits(&self) -> wasmesh_host::api::Limits {
        let mut limits = wasmesh_host::api::Limits::for_this_process();
        limits.idle = self.idle_timeout.max(Duration::from_millis(100));
        if let Some(max) = self.max_connections {
            limits.connections = max.max(1);
            limits.per_peer = (max / 2).max(1);
        }
        if let Some(max) = self.max_connections_per_peer {
            limits.per_peer = max.max(1);
        }
        limits
    }
}

/// How the server keeps its books (node and coordinator): how long the journal keeps
/// what is done, the fair share what was used and the store what nothing needs, and
/// what usage costs.
#[derive(Debug, Clone, clap::Args)]
pub struct UpkeepArgs {
    /// Finished results older than this are retired from the completed lists (and
    /// cancelled queues idle this long are deleted), e.g. `7d`.
    #[arg(long, env = "WASMESH_RESULT_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub result_retention: Duration,
    /// Finished webhook deliveries older than this are deleted from the log.
    #[arg(long, env = "WASMESH_DELIVERY_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub delivery_retention: Duration,
    /// A tenant's past use of slots counts half after this long in the fair share.
    #[arg(long, env = "WASMESH_FAIR_SHARE_HALF_LIFE", default_value = "15m", value_parser = humantime::parse_duration)]
    pub fair_share_half_life: Duration,
    /// Garbage collection leaves blobs used within this long alone.
    #[arg(long, env = "WASMESH_GC_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_grace: Duration,
    /// Garbage is collected this often (`0s`: only by `wasmesh gc`).
    #[arg(long, env = "WASMESH_GC_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub gc_interval: Duration,
    /// A price list (TOML: `currency`, `fuel`, `wall_second`, `memory_gib_second`,
    /// `stored_gib_hour`) turning usage into cost in `GET /compute/usage`.
    #[arg(long, env = "WASMESH_PRICES")]
    pub prices: Option<PathBuf>,
}

impl UpkeepArgs {
    /// Sets them in a node's configuration (reading the price list).
    pub fn apply(&self, config: &mut wasmesh_host::engine::NodeConfig) -> anyhow::Result<()> {
        config.result_retention = self.result_retention;
        config.delivery_retention = self.delivery_retention;
        config.fair_share_half_life = self.fair_share_half_life;
        config.gc_grace = self.gc_grace;
        config.gc_interval = self.gc_interval;
        if let Some(path) = &self.prices {
            let prices: wasmesh_host::model::Prices = read_toml(path)?;
            prices
                .validate()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            config.prices = Some(prices);
        }
        Ok(())
    }
}

pub fn read_toml<T: for<'de> Deserialize<'de>>(path: &PathBuf) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Client authentication from `--api-key`s (the default tenant), `--admin-key`s (the
/// operator role, acting as tenant `operator`) and a `--tenants` file (tenant -> keys,
/// or a table with keys, role and quotas; `[defaults]` holds every tenant's quotas);
/// open when none is given.
pub fn tenant_auth(
    keys: Vec<String>,
    admin_keys: Vec<String>,
    tenants_file: Option<&PathBuf>,
) -> anyhow::Result<(Auth, Quotas)> {
    use wasmesh_host::api::auth::{DEFAULT_TENANT, OPERATOR_TENANT, Role};
    let mut auth = Auth::open();
    for key in &keys {
        auth.add(
            "--api-key (WASMESH_API_KEY)",
            DEFAULT_TENANT,
            key,
            Role::Tenant,
        )?;
    }
    for key in &admin_keys {
        auth.add(
            "--admin-key (WASMESH_ADMIN_KEYS)",
            OPERATOR_TENANT,
            key,
            Role::Operator,
        )?;
    }
    let Some(path) = tenants_file else {
        return Ok((auth, Quotas::default()));
    };
    let file = path.display();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let entries: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut defaults = Quota::default();
    let mut quotas = HashMap::new();
    for (tenant, entry) in entries {
        let reserved = wasmesh_host::model::RESERVED_TENANTS.contains(&tenant.as_str());
        if reserved && (tenant != "defaults" || !entry.is_table() || entry.get("keys").is_some()) {
            bail!(
                "{file}:{}: {tenant:?} is reserved ({}): name the customer otherwise",
                line_of(&text, &tenant),
                match tenant.as_str() {
                    OPERATOR_TENANT => "the principal of --admin-key",
                    DEFAULT_TENANT => "the principal of --api-key",
                    _ => "the table of every tenant's quotas",
                }
            );
        }
        if tenant == "defaults" {
            defaults = entry
                .try_into()
                .with_context(|| format!("{file}: [defaults] (quotas for every tenant)"))?;
            defaults
                .validate()
                .map_err(|e| anyhow::anyhow!("{file}: [defaults]: {e}"))?;
            continue;
        }
        // A list of keys, or a table of `keys`, `role` and quotas (the rest of the
        // table is read as a `Quota`, so an unknown field is refused by name).
        let context = || format!("{file}: tenant {tenant:?}");
        let (keys, role, quota): (Vec<String>, Option<String>, Quota) = match entry {
            toml::Value::Table(mut table) => {
                let keys = table
                    .remove("keys")
                    .with_context(|| format!("{}: a table needs `keys`", context()))?
                    .try_into()
                    .with_context(context)?;
                let role = table
                    .remove("role")
                    .map(toml::Value::try_into)
                    .transpose()
                    .with_context(context)?;
                let quota = toml::Value::Table(table).try_into().with_context(context)?;
                (keys, role, quota)
            }
            list => (
                list.try_into().with_context(context)?,
                None,
                Quota::default(),
            ),
        };
        let role = match role.as_deref() {
            None => Role::Tenant,
            Some(name) => Role::parse(name).with_context(|| {
                format!(
                    "{file}: tenant {tenant:?} has role {name:?}; roles are \"tenant\" and \"operator\""
                )
            })?,
        };
        for key in &keys {
            auth.add(&format!("{file}: tenant {tenant:?}"), &tenant, key, role)?;
        }
        quota
            .validate()
            .map_err(|e| anyhow::anyhow!("{file}: tenant {tenant:?}: {e}"))?;
        quotas.insert(tenant, quota);
    }
    Ok((auth, Quotas::new(defaults, quotas)))
}

/// The line (from 1) of `text` where the TOML key or table `name` is defined.
fn line_of(text: &str, name: &str) -> usize {
    let quoted = format!("\"{name}\"");
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches('[').trim_start();
            [name, quoted.as_str()].iter().any(|n| {
                line.strip_prefix(n)
                    .is_some_and(|rest| rest.trim_start().starts_with(['=', ']', '.']))
            })
        })
        .map_or(0, |i| i + 1)
}

/// The shutdown signal, after which the change feed's subscriptions end (they would
/// hold the graceful shutdown open forever).
pub async fn closing(engine: std::sync::Arc<wasmesh_host::engine::Engine>) {
    shutdown_signal().await;
    engine.feed().close();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
