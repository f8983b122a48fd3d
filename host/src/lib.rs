//! wasmesh host: the node host (`wasmesh node`: store, workers, jobs, queues over
//! HTTP), the coordinator (`wasmesh coordinator`: the same API in front of a fleet of
//! nodes), the `wasmesh` command line, local execution (`wasmesh exec`), a local
//! cluster of processes, and the demo.

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod coordinator;
pub mod dag;
pub mod demo;
pub mod exec;
pub mod local;
pub mod model;
pub mod node;
pub mod serve;
