//! wasmesh host: the node host (store, workers, jobs, queues over HTTP), the
//! coordinator (the same API in front of a fleet of nodes), and the blocking client.
//! The `wasmesh` binary's commands (`src/cmd/`) are a thin shell over this library.
//!
//! Layers, each importing only the ones after it (see ARCHITECTURE.md):
//! `api` -> `cluster` -> `run` -> `engine` -> {`webhooks`, `store`, `cas`} -> `model`.

pub mod api;
pub mod cas;
pub mod client;
pub mod cluster;
pub mod dag;
pub mod engine;
pub mod model;
pub mod run;
pub mod store;
pub mod webhooks;
