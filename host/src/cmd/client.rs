//! What the client commands share: where the server is, `NAME=VALUE` pairs, and a
//! spinner on a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;
use wasmesh_host::client::Client;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The node or coordinator to talk to (a comma-separated list: the next is tried
    /// when one does not answer).
    #[arg(long, env = "WASMESH_SERVER", default_value = "http://127.0.0.1:9000")]
    pub server: String,
    /// API key, when the server requires one.
    #[arg(long, env = "WASMESH_API_KEY")]
    pub api_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ServerArgs {
    /// A client of that server with that key.
    pub fn client(&self) -> Client {
        Client::new(&self.server, self.api_key.clone())
    }
}

/// `NAME=VALUE` arguments of `flag`, split.
pub fn pairs(items: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{flag} {item:?}: expected NAME=VALUE"))
        })
        .collect()
}

/// A spinner on stderr when it is a terminal (hidden otherwise, so logs stay clean).
pub fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
