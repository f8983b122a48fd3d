//! `wasmesh nodes`: a coordinator's fleet (an operator key): list, drain, deregister.

use std::process::ExitCode;

use super::client::ServerArgs;
use crate::cmd::say;

/// Arguments of `wasmesh nodes` (fleet administration: an operator key).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Drain this node: no new work, its running jobs finish.
    #[arg(long, value_name = "ID", conflicts_with = "deregister")]
    pub drain: Option<String>,
    /// Deregister this node.
    #[arg(long, value_name = "ID")]
    pub deregister: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh nodes`: the coordinator's nodes, or drains or deregisters one.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.server.client();
    let answer = match (&args.drain, &args.deregister) {
        (Some(id), _) => client.call(
            reqwest::Method::POST,
            &format!("/api/v1/cluster/nodes/{id}/drain"),
            None,
        )?,
        (None, Some(id)) => client.call(
            reqwest::Method::DELETE,
            &format!("/api/v1/cluster/nodes/{id}"),
            None,
        )?,
        (None, None) => client.call(reqwest::Method::GET, "/api/v1/cluster/nodes", None)?,
    };
    let listing = args.drain.is_none() && args.deregister.is_none();
    if args.server.json || !listing {
        say!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<20} {:<10} {:>5} {:>7}  address",
        "id",
        "state",
        "slots",
        "running"
    )?;
    for node in answer["nodes"].as_array().into_iter().flatten() {
        say!(
            "{:<20} {:<10} {:>5} {:>7}  {}",
            node["id"].as_str().unwrap_or_default(),
            node["state"].as_str().unwrap_or_default(),
            node["slots"],
            node["running"],
            node["address"].as_str().unwrap_or_default()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
