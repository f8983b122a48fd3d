//! `wasmesh dag FILE`: a small workflow (jobs, their inputs and the outputs they pass
//! on) described in a TOML or JSON file, submitted as one queue.
//!
//! ```toml
//! [workers.wordcount]
//! module = "../target/wasm32-wasip1/release/wordcount.wasm"  # relative to this file
//!
//! [[jobs]]
//! name = "map-1"
//! worker = "wordcount"
//! args = ["map"]
//! input = { path = "shards/1.txt" }
//!
//! [[jobs]]
//! name = "reduce"
//! worker = "wordcount"
//! args = ["reduce"]
//! files = { "1.json" = { output_of = "map-1" } }
//! ```
//!
//! An input (`input`, or a value of `files`) is a hash, `{ path = FILE }`,
//! `{ text = "..." }` or `{ output_of = JOB }`. `after = [JOB, ...]` orders jobs
//! without passing data. Jobs are submitted in waves (each a batch whose dependencies
//! have LSNs already); the server runs each job when what it names has succeeded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::client::Client;
use crate::model::{HashHex, JobResult};

/// A workflow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dag {
    /// Workers by the name jobs use for them.
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerSpec>,
    /// The queue the jobs go into.
    #[serde(default)]
    pub queue: QueueSpec,
    /// The jobs, in any order.
    pub jobs: Vec<JobSpec>,
}

/// A worker: a module file (uploaded with the needs dance) or an uploaded worker's id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// The `.wasm`, relative to the workflow file.
    pub module: Option<PathBuf>,
    /// An already registered worker.
    pub id: Option<HashHex>,
    /// Environment for each of its actions.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The queue's policy (`POST /compute/queues/remote`'s body).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_guest_failures: Option<bool>,
}

/// One job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique within the file.
    pub name: String,
    /// A key of `workers`, or a worker id.
    pub worker: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    input: Option<Source>,
    #[serde(default)]
    files: BTreeMap<String, Source>,
    #[serde(default)]
    after: Vec<String>,
}

/// Where an input's bytes come from.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Source {
    Hash(HashHex),
    Path { path: PathBuf },
    Text { text: String },
    OutputOf { output_of: String },
}

impl JobSpec {
    fn sources(&self) -> impl Iterator<Item = &Source> {
        self.input.iter().chain(self.files.values())
    }

    /// The jobs whose outputs this one takes.
    fn consumes(&self) -> impl Iterator<Item = &str> {
        self.sources().filter_map(|source| match source {
            Source::OutputOf { output_of } => Some(output_of.as_str()),
            _ => None,
        })
    }

    /// The jobs this one waits for: its `output_of`s and its `after`s.
    fn dependencies(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .consumes()
            .chain(self.after.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

impl Dag {
    /// Reads a workflow file: TOML when it ends in `.toml`, JSON otherwise.
    pub fn load(path: &Path) -> anyhow::Result<Dag> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let dag: Dag = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        } else {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        };
        dag.waves()?;
        Ok(dag)
    }

    /// The jobs in waves: each job comes after every job it depends on. Refuses
    /// duplicate and unknown names, unknown workers and cycles.
    pub fn waves(&self) -> anyhow::Result<Vec<Vec<usize>>> {
        let mut index = HashMap::new();
        for (i, job) in self.jobs.iter().enumerate() {
            if index.insert(job.name.as_str(), i).is_some() {
                bail!("two jobs are named {:?}", job.name);
            }
            if !self.workers.contains_key(&job.worker) && job.worker.parse::<HashHex>().is_err() {
                bail!(
                    "job {:?}: worker {:?} is neither in [workers] nor a worker id",
                    job.name,
                    job.worker
                );
            }
        }
        let mut depth: Vec<Option<usize>> = vec![None; self.jobs.len()];
        let mut waves: Vec<Vec<usize>> = Vec::new();
        // Kahn's algorithm by rounds: a round places every job whose dependencies are
        // placed; a round that places nothing means a cycle.
        let mut placed = 0;
        while placed < self.jobs.len() {
            let mut wave = Vec::new();
            for (i, job) in self.jobs.iter().enumerate() {
                if depth[i].is_some() {
                    continue;
                }
                let mut ready = true;
                for name in job.dependencies() {
                    let Some(&dep) = index.get(name) else {
                        bail!("job {:?} depends on {name:?}, which is not a job", job.name);
                    };
                    if depth[dep].is_none_or(|d| d >= waves.len()) {
                        ready = false;
                    }
                }
                if ready {
                    wave.push(i);
                }
            }
            if wave.is_empty() {
                let stuck: Vec<&str> = (0..self.jobs.len())
                    .filter(|i| depth[*i].is_none())
                    .map(|i| self.jobs[i].name.as_str())
                    .collect();
                bail!("the jobs {stuck:?} depend on each other in a cycle");
            }
            for &i in &wave {
                depth[i] = Some(waves.len());
            }
            placed += wave.len();
            waves.push(wave);
        }
        Ok(waves)
    }
}

/// What submitting a workflow gave.
#[derive(Debug, Serialize)]
pub struct Submitted {
    /// The remote queue's token.
    pub queue: String,
    /// Its id.
    pub queue_id: u64,
    /// Each job's LSN by name.
    pub jobs: BTreeMap<String, u64>,
    /// Jobs whose output no other job takes: the workflow's results.
    pub sinks: Vec<String>,
}

/// Uploads what the workflow needs and submits its jobs into a new remote queue.
pub fn submit(client: &Client, dag: &Dag, base: &Path) -> anyhow::Result<Submitted> {
    let waves = dag.waves()?;
    let mut workers = HashMap::new();
    for (name, spec) in &dag.workers {
        let id = match (&spec.module, spec.id) {
            (Some(module), None) => {
                let path = base.join(module);
                let wasm =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let mut descriptor = json!({"name": name, "module": HashHex::of(&wasm)});
                if !spec.env.is_empty() {
                    descriptor["env"] = json!(spec.env);
                }
                client
                    .upload_worker(&descriptor, &[(HashHex::of(&wasm), &wasm)])?
                    .worker
            }
            (None, Some(id)) => id,
            _ => bail!("worker {name:?}: give exactly one of `module` and `id`"),
        };
        workers.insert(name.as_str(), id);
    }
    // Every local input, read once and stored with one needs round trip; the files'
    // hashes go into the actions.
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut files: HashMap<&Path, HashHex> = HashMap::new();
    for job in &dag.jobs {
        for source in job.sources() {
            match source {
                Source::Path { path } if !files.contains_key(path.as_path()) => {
                    let full = base.join(path);
                    let bytes = std::fs::read(&full)
                        .with_context(|| format!("job {:?}: {}", job.name, full.display()))?;
                    files.insert(path, HashHex::of(&bytes));
                    blobs.push(bytes);
                }
                Source::Text { text } => blobs.push(text.clone().into_bytes()),
                _ => {}
            }
        }
    }
    let borrowed: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    client.ensure_blobs(&borrowed)?;
    let queue = client.call(
        reqwest::Method::POST,
        "/compute/queues/remote",
        Some(&serde_json::to_value(&dag.queue)?),
    )?;
    let token = queue["queue_token"]
        .as_str()
        .context("no queue_token in the answer")?
        .to_string();
    let queue_id = queue["queue_id"].as_u64().context("no queue_id")?;
    let mut lsns: BTreeMap<String, u64> = BTreeMap::new();
    for wave in waves {
        let actions = wave
            .iter()
            .map(|&i| action(&dag.jobs[i], &files, &workers, &lsns))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let submitted = client.submit_batch(&actions, Some(&token))?;
        for (&i, lsn) in wave.iter().zip(submitted) {
            lsns.insert(dag.jobs[i].name.clone(), lsn);
        }
    }
    let sinks = dag
        .jobs
        .iter()
        .filter(|job| {
            !dag.jobs
                .iter()
                .any(|other| other.consumes().any(|name| name == job.name))
        })
        .map(|job| job.name.clone())
        .collect();
    Ok(Submitted {
        queue: token,
        queue_id,
        jobs: lsns,
        sinks,
    })
}

/// A job's action descriptor: local files by their hashes (`local`, by path), text by
/// its hash, references by LSN.
fn action(
    job: &JobSpec,
    local: &HashMap<&Path, HashHex>,
    workers: &HashMap<&str, HashHex>,
    lsns: &BTreeMap<String, u64>,
) -> anyhow::Result<Value> {
    let worker = match workers.get(job.worker.as_str()) {
        Some(id) => *id,
        None => job.worker.parse()?,
    };
    let value = |source: &Source| -> anyhow::Result<Value> {
        Ok(match source {
            Source::Hash(hash) => json!(hash),
            Source::Path { path } => json!(local[path.as_path()]),
            Source::Text { text } => json!(HashHex::of(text.as_bytes())),
            Source::OutputOf { output_of } => json!({"output_of": lsns[output_of]}),
        })
    };
    let mut action = json!({"worker": worker});
    if let Some(input) = &job.input {
        action["input"] = value(input)?;
    }
    if !job.files.is_empty() {
        let mut files = Map::new();
        for (name, source) in &job.files {
            files.insert(name.clone(), value(source)?);
        }
        action["files"] = Value::Object(files);
    }
    if !job.args.is_empty() {
        action["args"] = json!(job.args);
    }
    if !job.env.is_empty() {
        action["env"] = json!(job.env);
    }
    let after: Vec<u64> = job.after.iter().map(|name| lsns[name]).collect();
    if !after.is_empty() {
        action["after"] = json!(after);
    }
    Ok(action)
}

/// Waits for the queue and reads every job's result.
pub fn results(
    client: &Client,
    submitted: &Submitted,
    timeout: std::time::Duration,
) -> anyhow::Result<BTreeMap<String, JobResult>> {
    client.wait_queue(&submitted.queue, timeout, |_| {})?;
    let mut results = BTreeMap::new();
    for (name, lsn) in &submitted.jobs {
        let result = client
            .result(*lsn)?
            .with_context(|| format!("job {name} ({lsn}) has no result"))?;
        results.insert(name.clone(), result);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(jobs: Value) -> Dag {
        serde_json::from_value(json!({
            "workers": {"w": {"id": HashHex::empty()}},
            "jobs": jobs,
        }))
        .unwrap()
    }

    fn job(name: &str, refs: &[&str], after: &[&str]) -> Value {
        let files: Map<String, Value> = refs
            .iter()
            .map(|r| (format!("{r}.json"), json!({"output_of": r})))
            .collect();
        json!({"name": name, "worker": "w", "files": files, "after": after})
    }

    #[test]
    fn jobs_come_in_waves_after_what_they_depend_on() {
        // Listed out of order: the reduce first, a job after it, the maps last.
        let d = dag(json!([
            job("reduce", &["m1", "m2"], &[]),
            job("report", &[], &["reduce"]),
            job("m1", &[], &[]),
            job("m2", &[], &["m1"]),
        ]));
        let names: Vec<Vec<&str>> = d
            .waves()
            .unwrap()
            .iter()
            .map(|wave| wave.iter().map(|&i| d.jobs[i].name.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            vec![vec!["m1"], vec!["m2"], vec!["reduce"], vec!["report"]]
        );
    }

    #[test]
    fn bad_workflows_are_refused_with_the_reason() {
        let cases = [
            (
                dag(json!([job("a", &[], &[]), job("a", &[], &[])])),
                "two jobs",
            ),
            (dag(json!([job("a", &["nope"], &[])])), "not a job"),
            (
                dag(json!([job("a", &["b"], &[]), job("b", &[], &["a"])])),
                "cycle",
            ),
            (
                dag(json!([{"name": "a", "worker": "unknown"}])),
                "neither in [workers]",
            ),
        ];
        for (d, reason) in cases {
            let err = d.waves().unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn inputs_are_hashes_paths_texts_or_references() {
        let spec: JobSpec = serde_json::from_value(json!({
            "name": "j", "worker": "w",
            "input": {"text": "hi"},
            "files": {"a": HashHex::empty(), "b": {"path": "x"}, "c": {"output_of": "k"}},
        }))
        .unwrap();
        assert_eq!(spec.dependencies(), vec!["k"]);
        let typo: Result<JobSpec, _> =
            serde_json::from_value(json!({"name": "j", "worker": "w", "input": {"pth": "x"}}));
        assert!(typo.is_err());
    }
}
