//! How a node (or a coordinator's engine) is set up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use wasmesh_runtime::Limits;

use super::quota::Quotas;
use crate::webhooks::WebhookConfig;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's id (reported in results and sysinfo).
    pub id: String,
    /// Where the store, the database and the module cache live.
    pub data_dir: PathBuf,
    /// The journal, when it is not the SQLite file `wasmesh.db` in `data_dir`.
    pub journal: Option<crate::store::Journal>,
    /// The blob store, when it is not `data_dir/cas` (a directory coordinators sharing
    /// a journal share too).
    pub cas_dir: Option<PathBuf>,
    /// How a PostgreSQL journal is held: alone, as a standby (`wasmesh coordinator
    /// --standby`) or shared with other coordinators (`--shared`).
    pub holding: crate::store::Holding,
    /// Actions run at once.
    pub slots: usize,
    /// Ceilings for every action.
    pub limits: Limits,
    /// Largest blob accepted by the store.
    pub max_blob_bytes: u64,
    /// Largest request body (a package with its chunks).
    pub max_request_bytes: u64,
    /// Largest JSON body.
    pub max_json_bytes: usize,
    /// Labels placement can match.
    pub labels: BTreeMap<String, String>,
    /// Retries of a job outside any queue after a host-side failure.
    pub default_max_retries: u32,
    /// An active queue idle this long with nothing pending expires (is cancelled).
    pub queue_idle: Duration,
    /// Finished results older than this are retired (off the completed lists), and
    /// cancelled queues idle this long are deleted.
    pub result_retention: Duration,
    /// Finished webhook deliveries older than this are deleted from the log.
    pub delivery_retention: Duration,
    /// How long an `Idempotency-Key` and its stored response are kept.
    pub idempotency_retention: Duration,
    /// How webhook deliveries are retried.
    pub webhooks: WebhookConfig,
    /// Per-tenant quotas and fair-share weights (none by default).
    pub quotas: Quotas,
    /// The price list turning usage into cost (`GET /compute/usage`), if any.
    pub prices: Option<crate::model::Prices>,
    /// Garbage collection leaves blobs used (uploaded, named, answered as held)
    /// within this long alone.
    pub gc_grace: Duration,
    /// Garbage is collected this often (zero: only when asked, `POST /compute/gc`).
    pub gc_interval: Duration,
    /// How fast a tenant's past use of slots is forgotten by the fair share: it
    /// counts half after this long.
    pub fair_share_half_life: Duration,
}

impl NodeConfig {
    /// Defaults for a node keeping its data in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            id: "node-1".into(),
            data_dir,
            journal: None,
            holding: crate::store::Holding::Alone,
            cas_dir: None,
            slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: Limits::default(),
            max_blob_bytes: 1 << 30,
            max_request_bytes: 1 << 30,
            max_json_bytes: 16 << 20,
            labels: BTreeMap::new(),
            default_max_retries: 3,
            queue_idle: Duration::from_secs(15 * 60),
            idempotency_retention: Duration::from_secs(24 * 60 * 60),
            result_retention: Duration::from_secs(7 * 24 * 60 * 60),
            delivery_retention: Duration::from_secs(7 * 24 * 60 * 60),
            webhooks: WebhookConfig::default(),
            quotas: Quotas::default(),
            fair_share_half_life: super::scheduler::DEFAULT_HALF_LIFE,
            prices: None,
            gc_grace: Duration::from_secs(60 * 60),
            gc_interval: Duration::from_secs(60 * 60),
        }
    }
}
