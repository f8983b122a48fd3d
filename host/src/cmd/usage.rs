//! `wasmesh usage`: what finished jobs consumed, by tenant, worker or queue (a tenant
//! key sees its own; an operator key every tenant's).

use std::process::ExitCode;

use super::client::ServerArgs;
use crate::cmd::say;

/// Arguments of `wasmesh usage`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Group by `tenant`, `worker` or `queue`.
    #[arg(long, default_value = "tenant", value_parser = ["tenant", "worker", "queue"])]
    pub by: String,
    /// Only jobs that finished at or after this Unix time in milliseconds.
    #[arg(long)]
    pub from: Option<i64>,
    /// Only jobs that finished before this Unix time in milliseconds.
    #[arg(long)]
    pub to: Option<i64>,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `wasmesh usage`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut path = format!("/compute/usage?by={}", args.by);
    for (key, value) in [("from", args.from), ("to", args.to)] {
        if let Some(value) = value {
            path.push_str(&format!("&{key}={value}"));
        }
    }
    let answer = args
        .server
        .client()
        .call(reqwest::Method::GET, &path, None)?;
    if args.server.json {
        say!("{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let group = match args.by.as_str() {
        "worker" => "worker",
        "queue" => "queue",
        _ => "",
    };
    let rows = answer["usage"].as_array().cloned().unwrap_or_default();
    let currency = rows
        .iter()
        .find_map(|row| row["cost"]["currency"].as_str())
        .map(str::to_string);
    let stored = group.is_empty();
    say!(
        "{:<16} {:<16} {:>8} {:>16} {:>12} {:>16}{}{}",
        "tenant",
        group,
        "jobs",
        "fuel",
        "wall_s",
        "memory_GiB_s",
        if stored {
            format!(" {:>14}", "stored_GiB_h")
        } else {
            String::new()
        },
        currency
            .as_ref()
            .map_or(String::new(), |c| format!(" {:>14}", format!("cost_{c}")))
    )?;
    for row in &rows {
        let key = match group {
            "worker" => row["worker"]
                .as_str()
                .map_or("-".into(), |w| w[..12].to_string()),
            "queue" => row["queue_id"]
                .as_u64()
                .map_or("(none)".into(), |q| q.to_string()),
            _ => String::new(),
        };
        let number = |field: &str| row[field].as_u64().unwrap_or(0);
        const GIB: f64 = (1u64 << 30) as f64;
        say!(
            "{:<16} {:<16} {:>8} {:>16} {:>12.1} {:>16.3}{}{}",
            row["tenant"].as_str().unwrap_or_default(),
            key,
            number("jobs"),
            number("fuel"),
            number("wall_ms") as f64 / 1000.0,
            number("memory_byte_seconds") as f64 / GIB,
            if stored {
                format!(
                    " {:>14.6}",
                    number("stored_byte_seconds") as f64 / GIB / 3600.0
                )
            } else {
                String::new()
            },
            if currency.is_some() {
                format!(" {:>14.6}", row["cost"]["total"].as_f64().unwrap_or(0.0))
            } else {
                String::new()
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
