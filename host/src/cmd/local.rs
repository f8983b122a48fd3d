//! A local cluster of real processes on loopback: one coordinator and any number of
//! nodes, each this same `wasmesh` binary, with their data in a temporary directory.
//! The demo and the cluster benchmarks run on it; SIGTERM shuts it down cleanly.
//!
//! It runs as a real deployment should: with fresh random keys for the tenant, the
//! operator and the nodes (the security model of docs/api.md), so a tenant key drives
//! the jobs and only the operator key lists the fleet.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use wasmesh_host::client::Client;

/// One child process and the URL it printed.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its node id (`coordinator` for the coordinator).
    pub id: String,
}

impl Process {
    fn spawn(id: &str, args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the wasmesh binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {id}"))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .with_context(|| format!("reading {id}'s address"))?;
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            let _ = child.kill();
            bail!("{id} did not start: {line:?}");
        };
        let url = url.to_string();
        std::thread::spawn(move || for _ in stdout.lines() {});
        Ok(Self {
            child,
            url,
            id: id.to_string(),
        })
    }

    /// SIGTERM, then waits for a graceful exit (SIGKILL after `grace`).
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32)
            .context("a child process has a positive pid")?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status}", self.id);
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("{} did not stop within {grace:?}", self.id)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A coordinator and its nodes.
#[derive(Debug)]
pub struct LocalCluster {
    /// The coordinator.
    pub coordinator: Process,
    /// The nodes, in the order they were added.
    pub nodes: Vec<Process>,
    /// Coordinators sharing the first one's journal (`add_peer`).
    pub peers: Vec<Process>,
    /// The coordinator's URL, then its peers' and its standby's.
    coordinators: Vec<String>,
    /// A standby coordinator (`add_standby`).
    standby: Option<KillOnDrop>,
    dir: tempfile::TempDir,
    keys: Keys,
}

/// The cluster's keys, made fresh for each cluster.
#[derive(Debug)]
struct Keys {
    tenant: String,
    operator: String,
    node: String,
}

/// A child process killed when dropped.
#[derive(Debug)]
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A coordinator's arguments: on `listen`, its data in `dir/name`, with the keys.
fn coordinator_args(
    dir: &tempfile::TempDir,
    keys: &Keys,
    name: &str,
    listen: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "coordinator",
        "--listen",
        listen,
        "--heartbeat-interval",
        "200ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--data-dir".into());
    args.push(dir.path().join(name).display().to_string());
    for (flag, key) in [
        ("--api-key", &keys.tenant),
        ("--admin-key", &keys.operator),
        ("--node-key", &keys.node),
    ] {
        args.push(flag.into());
        args.push(key.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn fresh_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl LocalCluster {
    /// Starts a coordinator (with `extra` arguments) on 127.0.0.1.
    pub fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wasmesh-cluster-")
            .tempdir()
            .context("creating the cluster's data directory")?;
        let keys = Keys {
            tenant: fresh_key(),
            operator: fresh_key(),
            node: fresh_key(),
        };
        let args = coordinator_args(&dir, &keys, "coordinator", "127.0.0.1:0", extra);
        let coordinator = Process::spawn("coordinator", &args)?;
        Ok(Self {
            coordinators: vec![coordinator.url.clone()],
            coordinator,
            standby: None,
            nodes: Vec::new(),
            peers: Vec::new(),
            dir,
            keys,
        })
    }

    /// Starts a standby coordinator (`--standby` and `extra`: the same PostgreSQL
    /// journal and `--cas-dir`) on a free port; it listens once it takes the journal
    /// over. Nodes added from now on, and clients, know both coordinators.
    pub fn add_standby(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = coordinator_args(&self.dir, &self.keys, "standby", &listen, extra);
        args.push("--standby".into());
        let exe = std::env::current_exe().context("finding the wasmesh binary")?;
        let child = Command::new(exe)
            .args(&args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the standby")?;
        self.coordinators.push(format!("http://{listen}"));
        self.standby = Some(KillOnDrop(child));
        Ok(())
    }

    /// Starts another active coordinator (`extra`: `--shared`, the same PostgreSQL
    /// journal and `--cas-dir` as the first's); its index among the coordinators.
    /// Nodes added from now on, and clients, know every coordinator.
    pub fn add_peer(&mut self, extra: &[&str]) -> anyhow::Result<usize> {
        let name = format!("peer-{}", self.peers.len() + 1);
        let args = coordinator_args(&self.dir, &self.keys, &name, "127.0.0.1:0", extra);
        let peer = Process::spawn(&name, &args)?;
        self.coordinators.push(peer.url.clone());
        self.peers.push(peer);
        Ok(self.coordinators.len() - 1)
    }

    /// The coordinators' URLs, comma-separated, coordinator `first` first (then the
    /// others in order).
    fn coordinators_from(&self, first: usize) -> String {
        let n = self.coordinators.len();
        (0..n)
            .map(|i| self.coordinators[(first + i) % n].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs the coordinator (its standby, if any, takes over).
    pub fn kill_coordinator(&mut self) -> anyhow::Result<()> {
        self.coordinator.child.kill()?;
        self.coordinator.child.wait()?;
        Ok(())
    }

    /// A client of the coordinator (and its peers and standby) with the tenant key.
    pub fn client(&self) -> Client {
        self.client_of(0)
    }

    /// A client with the tenant key of coordinator `first` (then the others).
    pub fn client_of(&self, first: usize) -> Client {
        Client::new(
            self.coordinators_from(first),
            Some(self.keys.tenant.clone()),
        )
    }

    /// A client of the coordinator with the operator key (fleet administration).
    pub fn operator(&self) -> Client {
        self.operator_of(0)
    }

    /// A client with the operator key of coordinator `first` (then the others).
    pub fn operator_of(&self, first: usize) -> Client {
        Client::new(
            self.coordinators_from(first),
            Some(self.keys.operator.clone()),
        )
    }

    /// Starts a node with `slots` slots and waits until the coordinator lists it ready.
    pub fn add_node(&mut self, id: &str, slots: usize) -> anyhow::Result<()> {
        self.add_node_at(id, slots, 0)
    }

    /// Starts a node with `slots` slots that joins coordinator `first` (then the
    /// others), and waits until that coordinator lists it ready.
    pub fn add_node_at(&mut self, id: &str, slots: usize, first: usize) -> anyhow::Result<()> {
        let args: Vec<String> = vec![
            "node".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--node-id".into(),
            id.into(),
            "--slots".into(),
            slots.to_string(),
            "--data-dir".into(),
            self.dir.path().join(id).display().to_string(),
            "--coordinator".into(),
            self.coordinators_from(first),
            "--node-key".into(),
            self.keys.node.clone(),
        ];
        self.nodes.push(Process::spawn(id, &args)?);
        let client = self.operator_of(first);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = client.call(reqwest::Method::GET, "/api/v1/cluster/nodes", None)?;
            let ready = listed["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["id"] == Value::String(id.into()) && n["state"] == "ready");
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {id} did not register within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the nodes, then the coordinator, each with SIGTERM.
    pub fn shutdown(self) -> anyhow::Result<()> {
        for node in self.nodes {
            node.stop(Duration::from_secs(15))?;
        }
        for peer in self.peers {
            peer.stop(Duration::from_secs(15))?;
        }
        self.coordinator.stop(Duration::from_secs(15))?;
        drop(self.standby);
        drop(self.dir);
        Ok(())
    }
}
