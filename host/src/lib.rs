//! wasmesh host: the `wasmesh` command line, local execution (`wasmesh exec`) and the
//! local demo. The node host and the coordinator build on this crate.

pub mod cli;
pub mod demo;
pub mod exec;
