//! What nodes and the coordinator say to each other about leased work (the node-key
//! routes under `/api/v1/cluster/nodes/{id}/...`, documented in docs/api.md, "Cluster").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmesh_runtime::Limits;

use crate::model::{ActionDescriptor, HashHex, JobResult, WorkerDescriptor};

/// A lease's fencing token: the job and the attempt the lease is for. A result is
/// accepted only while the job is still running exactly this attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The job.
    pub lsn: u64,
    /// The attempt (1 for the first run).
    pub attempt: u32,
}

/// `POST /api/v1/cluster/nodes/register`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The node's id.
    pub id: String,
    /// Where the node serves its own API.
    pub address: String,
    /// Actions it runs at once.
    pub slots: u64,
    /// Labels placement can match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its ceilings (placement skips nodes whose ceilings are below a job's limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// `POST /api/v1/cluster/nodes/{id}/heartbeat`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Actions running on the node (its own and leased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// Actions of the node's own API (not leased) occupying slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<u64>,
    /// Its slots, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u64>,
    /// The leases it holds; each is renewed for another lease period.
    #[serde(default)]
    pub leases: Vec<Token>,
    /// Checkpoints saved by leased runs since the last heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<CheckpointNote>,
}

/// The latest checkpoint a leased run saved, sent with the heartbeat renewing its
/// lease; the coordinator records it with the job when the lease is current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointNote {
    /// The run's lease.
    pub lease: Token,
    /// The checkpoint's hash.
    pub hash: HashHex,
    /// Its bytes in base64 when small; a large one is PUT to the blob route first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// The answer to a heartbeat.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    /// The node's id.
    pub id: String,
    /// Whether the node is draining (gets no new work).
    pub draining: bool,
    /// Leases to stop: cancelled jobs, and leases the coordinator no longer honours.
    #[serde(default)]
    pub cancel: Vec<Token>,
    /// The listed leases this heartbeat renewed (current, not cancelled): only their
    /// checkpoint notes are recorded. Not sent.
    #[serde(skip)]
    pub renewed: Vec<Token>,
}

/// `POST /api/v1/cluster/nodes/{id}/work`: a long-poll for leases and cancellations.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkRequest {
    /// How long to wait for something to hand out (capped at 10 s).
    #[serde(default)]
    pub wait_ms: u64,
}

/// A job handed to a node under a lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The fencing token the result must carry.
    pub lease: Token,
    /// The worker, as registered with the coordinator.
    pub worker: WorkerDescriptor,
    /// The action.
    pub action: ActionDescriptor,
    /// Small inputs and files (up to 64 KiB each, 1 MiB per lease) travel inline
    /// (base64), keyed by hash, saving the node a fetch and a disk write each; the
    /// run reads them from memory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blobs: BTreeMap<HashHex, String>,
    /// The job's latest checkpoint from an earlier attempt: the run resumes from it
    /// (the node fetches it like an input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<HashHex>,
}

impl Assignment {
    /// Every blob the node may fetch for this lease (and no other: the coordinator
    /// serves a node only blobs of a lease it holds now): the worker's module and
    /// files, the action's input and files, the checkpoint it resumes from.
    pub fn fetches(&self) -> Vec<HashHex> {
        let mut blobs = self.worker.chunks();
        blobs.extend(self.action.chunks());
        blobs.extend(self.checkpoint);
        blobs
    }
}

/// The query of `GET /api/v1/cluster/blobs/{hash}`: the node fetching it.
#[derive(Debug, Deserialize)]
pub struct FetchFor {
    /// The node id, which must hold a lease needing the blob.
    pub node: String,
}

/// The answer to a work poll.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkAnswer {
    /// New leases.
    pub leases: Vec<Assignment>,
    /// Leases to stop.
    pub cancel: Vec<Token>,
}

/// How a leased attempt ended, as the node reports it: the result (the same type the
/// API answers; the coordinator fills in the job's identity, the node, the attempt and
/// the placement from the lease) with the lease it ran under, its small outputs
/// inline, and whether it failed on the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The lease the attempt ran under.
    pub lease: Token,
    /// How it ended.
    #[serde(flatten)]
    pub result: JobResult,
    /// Small blobs travel inline (base64), keyed by hash; larger ones are put to
    /// `/api/v1/cluster/blobs/{hash}` before the report.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blobs: BTreeMap<HashHex, String>,
    /// True when the attempt failed on the host (not the guest's fault): retried.
    #[serde(default)]
    pub host_failure: bool,
}

/// The query of `PUT /api/v1/cluster/blobs/{hash}`: the lease the blob is for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadFor {
    /// The uploading node.
    pub node: String,
    /// The lease's job.
    pub lsn: u64,
    /// The lease's attempt.
    pub attempt: u32,
}

/// `POST /api/v1/cluster/nodes/{id}/results`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Results {
    /// Finished attempts.
    pub results: Vec<Report>,
}

/// The answer to a results report.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ResultsAnswer {
    /// Recorded.
    pub accepted: Vec<Token>,
    /// Refused by fencing: the lease expired and the job was requeued, cancelled or
    /// finished by another attempt. The node drops these.
    pub rejected: Vec<Token>,
}
