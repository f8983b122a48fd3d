//! The wasmesh sandbox: runs one WebAssembly action under fuel, memory, wall-time and
//! output limits, with no ambient authority.
//!
//! A [`Sandbox`] owns one wasmtime engine configured for many tenants (fuel metering,
//! epoch interruption driven by a ticker thread, the pooling allocator with
//! copy-on-write memory images, a bounded wasm stack) and a [`ModuleCache`] of
//! compiled modules keyed by their BLAKE3 hash. Every run gets WASI preview 1 with
//! stdin from memory, captured and capped stdout/stderr, the arguments and environment
//! it was given and nothing else, read-only directories for its files, and a fresh
//! writable `/tmp` that is removed afterwards. How a run ended is a typed [`Outcome`];
//! the host never matches on strings.
//!
//! ```no_run
//! use wasmesh_runtime::{Config, Outcome, RunSpec, Sandbox};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sandbox = Sandbox::new(Config::default())?;
//! let wasm = std::fs::read("hash.wasm")?;
//! let module = sandbox.load(&wasm)?;
//! let report = sandbox.run(&module, RunSpec::new().stdin(b"hello".to_vec()))?;
//! match report.outcome {
//!     Outcome::Exited(0) => println!("{}", String::from_utf8_lossy(&report.stdout)),
//!     other => eprintln!("job failed: {other}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! **Invariant:** this crate knows nothing about HTTP, queues or the store; it runs
//! one module with what the caller hands it.
#![deny(missing_docs)]

mod abi;
mod cache;
mod config;
mod error;
mod io;
mod mounts;
mod outcome;
mod sandbox;
mod scratch;

pub use cache::{CacheStats, CompiledModule, ModuleCache};
pub use config::{Config, FUEL_YIELD_INTERVAL, Limits, LimitsRequest};
pub use error::RuntimeError;
pub use mounts::{FileSource, Mount, check_file_name};
pub use outcome::{Event, LogLevel, LogLine, Outcome, RunReport, Usage};
pub use sandbox::{RunObserver, RunSpec, Sandbox};
pub use tokio_util::sync::CancellationToken;

/// The BLAKE3-256 hash that names modules (and every other blob in wasmesh).
pub type Hash = blake3::Hash;
