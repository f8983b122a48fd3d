//! The cluster: a coordinator's engine runs its jobs on a fleet of nodes.
//!
//! - `protocol`: the node <-> coordinator messages (leaf wire types).
//! - `fleet`: registered nodes (soft state: a restarted coordinator learns them again
//!   from their next heartbeat) and leases with fencing tokens; the engine's
//!   `Driver` on a coordinator.
//! - `placement`: which node gets a job, and why (pure, unit-tested); `prefetch`: how
//!   many leases a node may hold beyond its slots.
//! - `driver`: the placement and lease-expiry loops, and a report turned into a fenced
//!   result; `orphans`: leases the journal holds for a heard node that no fleet here
//!   holds (their coordinator died before the node received them), requeued after a
//!   lease period.
//! - `groups`: event-handler groups (routing and the hop engine), `budget` their
//!   per-inject limits.
//! - `member`: a node's side (its agent for leased work, and its membership).
//! - `autoscale`: how many nodes the work needs (`policy`, pure) and the provisioners
//!   that start and stop them (`provision`: static, local, nomad, kubernetes).
//!
//! Jobs, queues, workers and results live in the engine's journal, so a coordinator
//! killed at any point and restarted loses nothing accepted; running jobs' leases are
//! restored from it and renewed by their nodes' heartbeats.

pub mod autoscale;
pub mod budget;
pub mod driver;
pub mod fleet;
pub mod groups;
pub mod member;
pub mod orphans;
pub mod placement;
pub mod prefetch;
pub mod protocol;
pub mod shared;

use std::sync::Arc;

use crate::engine::Engine;
pub use fleet::{CoordinatorConfig, Fleet};

/// Starts a coordinator's loops: placement and lease expiry (the engine's own loops
/// are started by `Engine::start`).
pub fn start(engine: &Arc<Engine>, fleet: &Arc<Fleet>) {
    tokio::spawn(driver::place_loop(engine.clone(), fleet.clone()));
    tokio::spawn(driver::expiry_loop(engine.clone(), fleet.clone()));
    tokio::spawn(orphans::orphan_loop(engine.clone(), fleet.clone()));
    if engine.store().is_shared() {
        tokio::spawn(shared::shared_loop(engine.clone(), fleet.clone()));
    }
}
