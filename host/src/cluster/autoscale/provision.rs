//! Provisioners: what turns the autoscaler's decisions into nodes. `static` does
//! nothing (the signal is still computed and exported, for an external autoscaler);
//! `local` starts and stops `wasmesh node` processes on this machine; `nomad` sets a
//! task group's count through Nomad's HTTP API; `kubernetes` patches the nodes
//! StatefulSet's scale subresource through the API server.
//!
//! Scale-in always drains first: the autoscaler marks the nodes that will go
//! draining (no new leases), waits until they hold none, and only then asks the
//! provisioner to remove them. Where the orchestrator chooses which replicas go
//! (Kubernetes removes the highest ordinals of a StatefulSet, Nomad the highest
//! allocation indexes of a group), `leaving` names those.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cluster::fleet::Member;

/// What the autoscaler asks of an orchestrator.
pub trait Provisioner: Send + Sync + std::fmt::Debug {
    /// Its name (`static`, `local`, `nomad`, `kubernetes`).
    fn kind(&self) -> &'static str;

    /// Nodes asked for and not yet gone (running or starting); `None` when it does
    /// not manage nodes (static).
    fn requested(&self) -> Option<u32>;

    /// Asks for `count` nodes (more than now).
    fn grow(&self, count: u32, reason: &str) -> anyhow::Result<()>;

    /// The nodes that go when the fleet shrinks to `count`: the orchestrator's
    /// choice where it has one, else the idlest.
    fn leaving(&self, count: u32, members: &[Member]) -> Vec<String>;

    /// Shrinks to `count`; `leaving` (drained, holding no lease) go.
    fn shrink(&self, count: u32, leaving: &[String], reason: &str) -> anyhow::Result<()>;

    /// The coordinator is stopping: nodes that are its own processes stop with it.
    fn stop_all(&self) {}
}

/// No scaling: the fleet is what registers.
#[derive(Debug)]
pub struct Static;

impl Provisioner for Static {
    fn kind(&self) -> &'static str {
        "static"
    }
    fn requested(&self) -> Option<u32> {
        None
    }
    fn grow(&self, _count: u32, _reason: &str) -> anyhow::Result<()> {
        Ok(())
    }
    fn leaving(&self, _count: u32, _members: &[Member]) -> Vec<String> {
        Vec::new()
    }
    fn shrink(&self, _count: u32, _leaving: &[String], _reason: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// `wasmesh node` processes on this machine, members of this coordinator.
#[derive(Debug)]
pub struct Local {
    /// The `wasmesh` binary.
    pub exe: PathBuf,
    /// The coordinator's URL, as the nodes reach it.
    pub coordinator: String,
    /// The key they present.
    pub node_key: Option<String>,
    /// Where their data directories go (one per node id).
    pub dir: PathBuf,
    /// Slots of each.
    pub slots: u32,
    /// Labels of each (the policy's `node_labels`).
    pub labels: BTreeMap<String, String>,
    children: Mutex<(u32, BTreeMap<String, Child>)>,
}

impl Local {
    /// A provisioner of local nodes.
    pub fn new(
        exe: PathBuf,
        coordinator: String,
        node_key: Option<String>,
        dir: PathBuf,
        slots: u32,
        labels: BTreeMap<String, String>,
    ) -> Self {
        Self {
            exe,
            coordinator,
            node_key,
            dir,
            slots,
            labels,
            children: Mutex::new((0, BTreeMap::new())),
        }
    }

    fn stop(mut child: Child) {
        // SIGTERM: the node drains what it runs and leaves; reaped off this thread.
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
}

impl Provisioner for Local {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn requested(&self) -> Option<u32> {
        let mut children = self.children.lock().expect("children");
        // A node that died on its own is no longer asked for: it will be replaced.
        children
            .1
            .retain(|_, child| matches!(child.try_wait(), Ok(None)));
        Some(children.1.len() as u32)
    }

    fn grow(&self, count: u32, _reason: &str) -> anyhow::Result<()> {
        let mut children = self.children.lock().expect("children");
        while (children.1.len() as u32) < count {
            children.0 += 1;
            let id = format!("auto-{}", children.0);
            let data = self.dir.join(&id);
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            let log = std::fs::File::create(self.dir.join(format!("{id}.log")))?;
            let mut command = Command::new(&self.exe);
            command
                .args(["node", "--listen", "127.0.0.1:0", "--node-id", &id])
                .arg("--exit-with-parent")
                .arg("--data-dir")
                .arg(&data)
                .args(["--coordinator", &self.coordinator])
                .args(["--slots", &self.slots.to_string()])
                .args(self.labels.iter().map(|(k, v)| format!("--label={k}={v}")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            if let Some(key) = &self.node_key {
                command.env("WASMESH_NODE_KEY", key);
            }
            let child = command
                .spawn()
                .with_context(|| format!("starting {}", self.exe.display()))?;
            tracing::info!(node = %id, "autoscaler started a local node");
            children.1.insert(id, child);
        }
        Ok(())
    }

    fn leaving(&self, count: u32, members: &[Member]) -> Vec<String> {
        let children = self.children.lock().expect("children");
        let mut own: Vec<(u64, &String)> = children
            .1
            .keys()
            .map(|id| {
                let leased = members.iter().find(|m| &m.id == id).map_or(0, |m| m.leased);
                (leased, id)
            })
            .collect();
        // The idlest go, newest first among equals.
        own.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)));
        let extra = children.1.len().saturating_sub(count as usize);
        own.into_iter()
            .take(extra)
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn shrink(&self, _count: u32, leaving: &[String], _reason: &str) -> anyhow::Result<()> {
        let mut children = self.children.lock().expect("children");
        for id in leaving {
            if let Some(child) = children.1.remove(id) {
                tracing::info!(node = %id, "autoscaler stopped a local node");
                Self::stop(child);
            }
        }
        Ok(())
    }

    fn stop_all(&self) {
        let children = std::mem::take(&mut self.children.lock().expect("children").1);
        for (_, mut child) in children {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let _ = child.wait();
        }
    }
}

/// An orchestrator that keeps a count of node replicas and, scaling in, removes the
/// highest indexes first (a StatefulSet's ordinals, a Nomad group's allocation
/// indexes): what the Nomad and Kubernetes provisioners share.
trait Replicas: Send + Sync + std::fmt::Debug {
    /// The provisioner's name.
    fn kind(&self) -> &'static str;
    /// The count last read or set (read once, then kept as set).
    fn count(&self) -> &Mutex<Option<u32>>;
    /// Reads the orchestrator's count.
    fn read(&self) -> anyhow::Result<u32>;
    /// Sets it.
    fn write(&self, count: u32, reason: &str) -> anyhow::Result<()>;
    /// The node id of replica `index`.
    fn node_id(&self, index: u32) -> String;
}

impl<R: Replicas> Provisioner for R {
    fn kind(&self) -> &'static str {
        Replicas::kind(self)
    }

    fn requested(&self) -> Option<u32> {
        if let Some(count) = *self.count().lock().expect("count") {
            return Some(count);
        }
        let count = self
            .read()
            .inspect_err(|e| tracing::warn!(error = %e, "reading the node count"))
            .ok()?;
        *self.count().lock().expect("count") = Some(count);
        Some(count)
    }

    fn grow(&self, count: u32, reason: &str) -> anyhow::Result<()> {
        self.write(count, reason)?;
        *self.count().lock().expect("count") = Some(count);
        Ok(())
    }

    fn leaving(&self, count: u32, _members: &[Member]) -> Vec<String> {
        let current = self.requested().unwrap_or(count);
        (count..current).map(|i| self.node_id(i)).collect()
    }

    fn shrink(&self, count: u32, _leaving: &[String], reason: &str) -> anyhow::Result<()> {
        // Setting the count is the same either way; the orchestrator picks who goes.
        self.grow(count, reason)
    }
}

/// An HTTP client for an orchestrator's API (with its CA when it has one), made on
/// first use: on the autoscaler's own thread, since a blocking client cannot be made
/// inside the async runtime.
#[derive(Debug)]
struct Http {
    ca: Option<PathBuf>,
    client: OnceLock<reqwest::blocking::Client>,
}

impl Http {
    fn new(ca: Option<PathBuf>) -> Self {
        Self {
            ca,
            client: OnceLock::new(),
        }
    }

    fn get(&self) -> anyhow::Result<&reqwest::blocking::Client> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = self.ca.as_deref().filter(|p| p.exists()) {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(self
            .client
            .get_or_init(|| builder.build().expect("an HTTP client")))
    }
}

fn checked(response: reqwest::blocking::Response, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let body = response.text().unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{what}: {status}: {}",
            body.chars().take(500).collect::<String>()
        );
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A Nomad job's task group, scaled with `POST /v1/job/{job}/scale`.
#[derive(Debug)]
pub struct Nomad {
    /// Nomad's address, e.g. `http://127.0.0.1:4646`.
    pub addr: String,
    /// The job's id.
    pub job: String,
    /// The nodes' task group.
    pub group: String,
    /// The job's namespace, if not the default.
    pub namespace: Option<String>,
    /// An ACL token (`X-Nomad-Token`).
    pub token: Option<String>,
    /// Node ids are this prefix and the allocation index (`node-${NOMAD_ALLOC_INDEX}`).
    pub node_prefix: String,
    http: Http,
    count: Mutex<Option<u32>>,
}

impl Nomad {
    /// A provisioner of the group `group` of Nomad job `job`.
    pub fn new(
        addr: String,
        job: String,
        group: String,
        namespace: Option<String>,
        token: Option<String>,
        node_prefix: String,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            addr: addr.trim_end_matches('/').to_string(),
            job,
            group,
            namespace,
            token,
            node_prefix,
            http: Http::new(None),
            count: Mutex::new(None),
        })
    }

    fn url(&self) -> String {
        let mut url = format!("{}/v1/job/{}/scale", self.addr, self.job);
        if let Some(ns) = &self.namespace {
            url.push_str(&format!("?namespace={ns}"));
        }
        url
    }

    fn with_token(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(token) => request.header("X-Nomad-Token", token),
            None => request,
        }
    }

    fn scale(&self, count: u32, reason: &str) -> anyhow::Result<()> {
        let body = json!({
            "Count": count,
            "Target": {"Group": self.group},
            "Message": format!("wasmesh autoscaler: {reason}"),
        });
        let response = self
            .with_token(self.http.get()?.post(self.url()))
            .json(&body)
            .send()?;
        checked(response, "scaling the Nomad task group")?;
        Ok(())
    }
}

impl Replicas for Nomad {
    fn kind(&self) -> &'static str {
        "nomad"
    }

    fn count(&self) -> &Mutex<Option<u32>> {
        &self.count
    }

    fn read(&self) -> anyhow::Result<u32> {
        // `GET .../scale`: the group's desired count.
        let response = self.with_token(self.http.get()?.get(self.url())).send()?;
        let answer = checked(response, "reading the Nomad job's scale")?;
        let desired = answer["TaskGroups"][&self.group]["Desired"].as_u64();
        Ok(desired.context("no Desired count for the group")? as u32)
    }

    fn write(&self, count: u32, reason: &str) -> anyhow::Result<()> {
        self.scale(count, reason)
    }

    fn node_id(&self, index: u32) -> String {
        format!("{}{index}", self.node_prefix)
    }
}

/// The nodes StatefulSet, scaled through its `scale` subresource.
#[derive(Debug)]
pub struct Kubernetes {
    /// The API server, e.g. `https://kubernetes.default.svc`.
    pub api: String,
    /// The StatefulSet's namespace.
    pub namespace: String,
    /// The StatefulSet (its pods, and so its node ids, are `NAME-0`, `NAME-1`, ...).
    pub statefulset: String,
    /// The service account token's file (read at each request: it is rotated).
    pub token_file: PathBuf,
    http: Http,
    replicas: Mutex<Option<u32>>,
}

impl Kubernetes {
    /// A provisioner of StatefulSet `statefulset` in `namespace`; `ca` is the API
    /// server's CA (the service account's `ca.crt`).
    pub fn new(
        api: String,
        namespace: String,
        statefulset: String,
        token_file: PathBuf,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            api: api.trim_end_matches('/').to_string(),
            namespace,
            statefulset,
            token_file,
            http: Http::new(ca),
            replicas: Mutex::new(None),
        })
    }

    fn url(&self) -> String {
        format!(
            "{}/apis/apps/v1/namespaces/{}/statefulsets/{}/scale",
            self.api, self.namespace, self.statefulset
        )
    }

    fn bearer(&self) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading {}", self.token_file.display()))?;
        Ok(format!("Bearer {}", token.trim()))
    }

    fn scale(&self, replicas: u32) -> anyhow::Result<()> {
        let response = self
            .http
            .get()?
            .patch(self.url())
            .header("Authorization", self.bearer()?)
            .header("Content-Type", "application/merge-patch+json")
            .header("Accept", "application/json")
            .body(json!({"spec": {"replicas": replicas}}).to_string())
            .send()?;
        checked(response, "patching the StatefulSet's scale")?;
        Ok(())
    }
}

impl Replicas for Kubernetes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn count(&self) -> &Mutex<Option<u32>> {
        &self.replicas
    }

    fn read(&self) -> anyhow::Result<u32> {
        let response = self
            .http
            .get()?
            .get(self.url())
            .header("Authorization", self.bearer()?)
            .header("Accept", "application/json")
            .send()?;
        let scale = checked(response, "reading the StatefulSet's scale")?;
        Ok(scale["spec"]["replicas"].as_u64().unwrap_or(0) as u32)
    }

    fn write(&self, count: u32, _reason: &str) -> anyhow::Result<()> {
        self.scale(count)
    }

    /// A StatefulSet's pods are `NAME-0`, `NAME-1`, ...
    fn node_id(&self, index: u32) -> String {
        format!("{}-{index}", self.statefulset)
    }
}
