//! `wasmesh health`: a probe of a server's `/health` (or `/compute/ready`), for
//! container health checks that have no curl: exits 0 when it answers 200, else 1.

use std::process::ExitCode;
use std::time::Duration;

use crate::cmd::say;

/// Arguments of `wasmesh health`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node or coordinator to probe [default: this container's own listener].
    #[arg(long, env = "WASMESH_HEALTH_URL")]
    pub server: Option<String>,
    /// Probe `/compute/ready` (accepting work) instead of `/health` (alive).
    #[arg(long)]
    pub ready: bool,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The server a probe without `--server` asks: the address this process's
/// `WASMESH_LISTEN` names, on loopback when it listens on every interface.
fn own_server() -> String {
    let listen = std::env::var("WASMESH_LISTEN").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let local = listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{local}")
}

/// `wasmesh health`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let server = args.server.unwrap_or_else(own_server);
    let path = if args.ready {
        "/compute/ready"
    } else {
        "/health"
    };
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let answer = reqwest::blocking::Client::builder()
        .timeout(args.timeout)
        .build()?
        .get(&url)
        .send();
    match answer {
        Ok(response) if response.status().is_success() => {
            say!("{}", response.text().unwrap_or_default())?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(response) => {
            eprintln!("wasmesh health: {url}: {}", response.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("wasmesh health: {url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
