//! A node's membership in a coordinator: register, heartbeat with its load, register
//! again after a 404 (the coordinator restarted or forgot it), back off exponentially
//! (1 s .. 30 s) while the coordinator is unreachable. Running work is never affected
//! by the coordinator being away.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::agent::{Agent, INLINE_BYTES};
use crate::cluster::protocol::{CheckpointNote, Heartbeat, HeartbeatAnswer, Registration};
use crate::engine::Engine;

/// Where and how to join.
#[derive(Clone, Debug)]
pub struct Membership {
    /// The coordinators it may join, and the one it is with (shared with the agent).
    pub coordinators: Arc<super::Coordinators>,
    /// The URL the coordinator reaches this node at.
    pub advertise: String,
    /// The node key, if the coordinator requires one.
    pub node_key: Option<String>,
    /// The leased work, whose leases the heartbeats renew.
    pub agent: Option<Arc<Agent>>,
}

/// Heartbeats that get no answer in a row before a node with other coordinators moves.
const MISSED_BEFORE_MOVING: u32 = 2;

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Membership {
    /// Runs the membership loop on its own thread until `stop` is cancelled.
    pub fn spawn(self, node: Arc<Engine>, stop: CancellationToken) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("wasmesh-membership".into())
            .spawn(move || self.run(&node, &stop))
            .expect("spawning the membership thread")
    }

    fn post(
        &self,
        http: &reqwest::blocking::Client,
        path: &str,
        body: &impl serde::Serialize,
    ) -> reqwest::Result<reqwest::blocking::Response> {
        let mut request = http
            .post(format!("{}{path}", self.coordinators.current()))
            .json(body);
        if let Some(key) = &self.node_key {
            request = request.bearer_auth(key);
        }
        request.send()
    }

    /// The checkpoints leased runs saved since the last heartbeat: small ones inline,
    /// large ones uploaded to the coordinator's blob route first.
    fn checkpoint_notes(&self, http: &reqwest::blocking::Client) -> Vec<CheckpointNote> {
        let Some(agent) = &self.agent else {
            return Vec::new();
        };
        let mut notes = Vec::new();
        for (lease, hash, bytes) in agent.unsent_checkpoints() {
            let data = if bytes.len() <= INLINE_BYTES {
                Some(base64::engine::general_purpose::STANDARD.encode(&bytes))
            } else {
                let mut request = http
                    .put(format!(
                        "{}{}",
                        self.coordinators.current(),
                        super::agent::upload_path(&agent.node_id(), lease, &hash)
                    ))
                    .timeout(Duration::from_secs(300))
                    .body(bytes.to_vec());
                if let Some(key) = &self.node_key {
                    request = request.bearer_auth(key);
                }
                match request.send() {
                    Ok(response) if response.status().is_success() => None,
                    Ok(response) => {
                        tracing::warn!(status = %response.status(), "the coordinator refused a checkpoint");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sending a checkpoint failed");
                        continue;
                    }
                }
            };
            notes.push(CheckpointNote { lease, hash, data });
        }
        notes
    }

    fn run(&self, node: &Engine, stop: &CancellationToken) {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            // Below the servers' idle timeout (30 s), so a pooled connection is
            // never reused just as the server closes it.
            .pool_idle_timeout(crate::model::CLIENT_IDLE)
            .build()
            .expect("building the membership client");
        let id = node.config().id.clone();
        let mut backoff = MIN_BACKOFF;
        let mut interval = None;
        // Coordinators tried in a row without an answer, and heartbeats missed in a row.
        let (mut unanswered, mut missed) = (0usize, 0u32);
        let wait = |d: Duration| {
            // Wakes early when the node stops.
            let deadline = std::time::Instant::now() + d;
            while std::time::Instant::now() < deadline && !stop.is_cancelled() {
                std::thread::sleep(Duration::from_millis(20).min(d));
            }
        };
        while !stop.is_cancelled() {
            let (queued, running) = node.load();
            let Some(every) = interval else {
                let registration = Registration {
                    id: id.clone(),
                    address: self.advertise.clone(),
                    slots: node.config().slots as u64,
                    labels: node.config().labels.clone(),
                    limits: Some(node.config().limits),
                };
                match self.post(&http, "/api/v1/cluster/nodes/register", &registration) {
                    Ok(response) if response.status().is_success() => {
                        let answer: Value = response.json().unwrap_or(Value::Null);
                        let ms = answer["heartbeat_interval_ms"]
                            .as_u64()
                            .unwrap_or(1000)
                            .max(10);
                        interval = Some(Duration::from_millis(ms));
                        backoff = MIN_BACKOFF;
                        unanswered = 0;
                        tracing::info!(coordinator = %self.coordinators.current(), "registered with the coordinator");
                    }
                    Ok(response) => {
                        tracing::warn!(status = %response.status(), "the coordinator refused the registration");
                        wait(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, coordinator = %self.coordinators.current(), "the coordinator is unreachable");
                        unanswered += 1;
                        if self.coordinators.len() > 1 {
                            let next = self.coordinators.move_on();
                            tracing::info!(coordinator = %next, "trying the next coordinator");
                        }
                        // Around the whole list without an answer: back off.
                        if unanswered % self.coordinators.len() == 0 {
                            wait(backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                continue;
            };
            let leases = self.agent.as_ref().map(|a| a.held()).unwrap_or_default();
            let checkpoints = self.checkpoint_notes(&http);
            let beat = Heartbeat {
                running: Some((running + leases.len()) as u64),
                local: Some(running as u64),
                slots: Some(node.config().slots as u64),
                leases,
                checkpoints,
            };
            let _ = queued;
            match self.post(
                &http,
                &format!("/api/v1/cluster/nodes/{id}/heartbeat"),
                &beat,
            ) {
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                    tracing::info!("the coordinator does not know this node; registering again");
                    interval = None;
                    continue;
                }
                Ok(response) if response.status().is_success() => {
                    backoff = MIN_BACKOFF;
                    missed = 0;
                    if let Some(agent) = &self.agent {
                        let sent: Vec<_> =
                            beat.checkpoints.iter().map(|c| (c.lease, c.hash)).collect();
                        agent.checkpoints_sent(&sent);
                        if let Ok(answer) = response.json::<HeartbeatAnswer>() {
                            agent.cancel(&answer.cancel);
                        }
                    }
                    wait(every);
                }
                Ok(response) => {
                    tracing::warn!(status = %response.status(), "heartbeat refused");
                    wait(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed");
                    missed += 1;
                    if self.coordinators.len() > 1 && missed >= MISSED_BEFORE_MOVING {
                        // It stopped answering: join the next one, keeping the leases
                        // held (the fence decides which reports count).
                        let next = self.coordinators.move_on();
                        tracing::warn!(coordinator = %next, "moving to the next coordinator");
                        (interval, missed) = (None, 0);
                        continue;
                    }
                    wait(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
