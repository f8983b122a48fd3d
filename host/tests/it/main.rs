//! End-to-end tests of the `wasmesh` binary (one test binary, a module per area).

mod attacks;
mod autoscale;
mod browser;
mod cas;
mod checkpoints;
mod cli;
mod cluster;
mod deadlines;
mod demo;
mod details;
mod events;
mod exec;
mod failover;
mod fairness;
mod gc;
mod groups;
mod idempotency;
mod jobs;
mod journal_postgres;
mod layers;
mod listing;
mod matrix;
mod queues;
mod quotas;
mod retention;
mod scheduling;
mod security;
mod server;
mod tenants;
mod ui;
mod usage;
mod webhooks;
mod workflows;

use std::path::Path;
use std::process::{Command, Output, Stdio};

pub use server::Server;

/// Runs the real `wasmesh` binary with `args`, feeding `stdin`.
pub fn wasmesh(args: &[&str], stdin: &[u8]) -> Output {
    wasmesh_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, stdin)
}

/// Runs the real `wasmesh` binary in `dir`.
pub fn wasmesh_in(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning wasmesh");
    let mut pipe = child.stdin.take().expect("stdin pipe");
    pipe.write_all(stdin).expect("writing stdin");
    drop(pipe);
    child.wait_with_output().expect("waiting for wasmesh")
}

/// Starts a node with `flag` naming a file holding `contents` (in a fresh directory)
/// and expects it to refuse to start; returns what it said on stderr.
pub fn refused_at_start(flag: &str, file: &str, contents: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    std::fs::write(&path, contents).unwrap();
    let output = wasmesh(
        &[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            flag,
            path.to_str().unwrap(),
        ],
        b"",
    );
    assert!(!output.status.success(), "the node started");
    err(&output)
}

/// Text of stdout.
pub fn out(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Text of stderr.
pub fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
