//! A node's membership in a fleet: `membership` registers and heartbeats (renewing its
//! leases and carrying their checkpoints), `agent` long-polls leased work and runs it
//! on the node's slots, reporting results in batches.

pub mod agent;
pub mod membership;
