//! The coordinator's autoscaler flags, and the provisioner they make.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use wasmesh_host::cluster::autoscale::Autoscaling;
use wasmesh_host::cluster::autoscale::policy::Policy;
use wasmesh_host::cluster::autoscale::provision::{Kubernetes, Local, Nomad, Provisioner, Static};

/// Which provisioner scales the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// No scaling; the signal is still computed and exported (for KEDA and the like).
    Static,
    /// `wasmesh node` processes on this machine.
    Local,
    /// A Nomad job's task group (`POST /v1/job/{job}/scale`).
    Nomad,
    /// A StatefulSet's scale subresource.
    Kubernetes,
}

/// Where a pod's service account files are.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Autoscaling flags of `wasmesh coordinator`.
#[derive(Debug, clap::Args)]
pub struct AutoscaleArgs {
    /// What scales the fleet.
    #[arg(
        long = "autoscale",
        env = "WASMESH_AUTOSCALE",
        value_enum,
        default_value = "static"
    )]
    pub kind: Kind,
    /// Fewest nodes (0: scale to zero when idle).
    #[arg(long, env = "WASMESH_MIN_NODES", default_value_t = 0)]
    pub min_nodes: u32,
    /// Most nodes.
    #[arg(long, env = "WASMESH_MAX_NODES", default_value_t = 10)]
    pub max_nodes: u32,
    /// Slots of a node the autoscaler starts (and assumed of nodes not yet seen).
    #[arg(long, default_value_t = 2)]
    pub node_slots: u32,
    /// A label, `key=value`, of the nodes the autoscaler adds (repeatable; `local`
    /// starts its nodes with them): work of workers requiring labels they lack does
    /// not make it add nodes.
    #[arg(long = "autoscale-node-label", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Least time between two scale-ups.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub scale_up_cooldown: Duration,
    /// Least time after any change before a scale-down.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub scale_down_cooldown: Duration,
    /// A scale-down goes only to the highest need seen over this window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub scale_down_stabilization: Duration,
    /// How long a runnable job may wait (queues may set their own `target_wait_ms`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub target_wait: Duration,
    /// How often the autoscaler evaluates.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub autoscale_interval: Duration,
    /// Nomad's address (nomad).
    #[arg(long, env = "NOMAD_ADDR", default_value = "http://127.0.0.1:4646")]
    pub nomad_addr: String,
    /// The Nomad job (nomad).
    #[arg(long, default_value = "wasmesh")]
    pub nomad_job: String,
    /// The nodes' task group (nomad).
    #[arg(long, default_value = "node")]
    pub nomad_group: String,
    /// The job's namespace (nomad).
    #[arg(long, env = "NOMAD_NAMESPACE")]
    pub nomad_namespace: Option<String>,
    /// An ACL token with the scale-job capability (nomad).
    #[arg(long, env = "NOMAD_TOKEN", hide_env_values = true)]
    pub nomad_token: Option<String>,
    /// Node ids are this and the allocation index (nomad; deploy/nomad's `node-`).
    #[arg(long, default_value = "node-")]
    pub nomad_node_prefix: String,
    /// The API server (kubernetes).
    #[arg(long, default_value = "https://kubernetes.default.svc")]
    pub k8s_api: String,
    /// The nodes StatefulSet (kubernetes).
    #[arg(long, env = "WASMESH_K8S_STATEFULSET")]
    pub k8s_statefulset: Option<String>,
    /// Its namespace [default: the pod's own].
    #[arg(long, env = "WASMESH_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// The service account token [default: the pod's].
    #[arg(long)]
    pub k8s_token_file: Option<PathBuf>,
    /// The API server's CA [default: the pod's service account's].
    #[arg(long)]
    pub k8s_ca_file: Option<PathBuf>,
}

impl AutoscaleArgs {
    /// The policy the flags give; refuses bounds that contradict each other.
    fn policy(&self) -> anyhow::Result<Policy> {
        if self.min_nodes > self.max_nodes {
            bail!(
                "--min-nodes {} is above --max-nodes {}",
                self.min_nodes,
                self.max_nodes
            );
        }
        if self.node_slots == 0 || self.target_wait.is_zero() || self.autoscale_interval.is_zero() {
            bail!("--node-slots, --target-wait and --autoscale-interval must be above zero");
        }
        let mut node_labels = std::collections::BTreeMap::new();
        for label in &self.node_labels {
            let (key, value) = label
                .split_once('=')
                .with_context(|| format!("--autoscale-node-label {label:?}: expected key=value"))?;
            node_labels.insert(key.to_string(), value.to_string());
        }
        Ok(Policy {
            node_labels,
            min_nodes: self.min_nodes,
            max_nodes: self.max_nodes,
            slots_per_node: self.node_slots,
            scale_up_cooldown: self.scale_up_cooldown,
            scale_down_cooldown: self.scale_down_cooldown,
            stabilization: self.scale_down_stabilization,
            target_wait: self.target_wait,
        })
    }

    /// The autoscaler of a coordinator reached at `url`, with its data in `data_dir`
    /// and `node_key` for the nodes it starts itself.
    pub fn build(
        &self,
        url: &str,
        data_dir: &Path,
        node_key: Option<&str>,
    ) -> anyhow::Result<Arc<Autoscaling>> {
        let policy = self.policy()?;
        let provisioner: Box<dyn Provisioner> = match self.kind {
            Kind::Static => Box::new(Static),
            Kind::Local => Box::new(Local::new(
                std::env::current_exe().context("finding the wasmesh binary")?,
                url.to_string(),
                node_key.map(str::to_string),
                data_dir.join("autoscaled"),
                self.node_slots,
                policy.node_labels.clone(),
            )),
            Kind::Nomad => Box::new(Nomad::new(
                self.nomad_addr.clone(),
                self.nomad_job.clone(),
                self.nomad_group.clone(),
                self.nomad_namespace.clone(),
                self.nomad_token.clone(),
                self.nomad_node_prefix.clone(),
            )?),
            Kind::Kubernetes => {
                let statefulset = self
                    .k8s_statefulset
                    .clone()
                    .context("--autoscale kubernetes needs --k8s-statefulset")?;
                let sa = Path::new(SERVICE_ACCOUNT);
                let namespace = match &self.k8s_namespace {
                    Some(ns) => ns.clone(),
                    None => std::fs::read_to_string(sa.join("namespace"))
                        .context("--k8s-namespace, or the pod's service account namespace")?
                        .trim()
                        .to_string(),
                };
                Box::new(Kubernetes::new(
                    self.k8s_api.clone(),
                    namespace,
                    statefulset,
                    self.k8s_token_file
                        .clone()
                        .unwrap_or_else(|| sa.join("token")),
                    Some(
                        self.k8s_ca_file
                            .clone()
                            .unwrap_or_else(|| sa.join("ca.crt")),
                    ),
                )?)
            }
        };
        Ok(Autoscaling::new(
            policy,
            provisioner,
            self.autoscale_interval,
        ))
    }
}
