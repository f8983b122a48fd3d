//! A node's work for its coordinator: long-polls for leases, runs them on the node's
//! own slots (fetching a module or input it lacks from the coordinator's store once;
//! the store and the compiled-module cache keep it), sends small outputs inline and
//! large ones ahead, reports results in batches, and stops leases the coordinator
//! cancels. The membership loop's heartbeats renew the leases held here.
//!
//! An unreachable coordinator never stops running work: results wait in the outbox
//! and are sent when it is back (the coordinator then accepts those whose lease is
//! still current).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cluster::protocol::{Assignment, Report, ResultsAnswer, Token, WorkAnswer, WorkRequest};

/// `protocol::Results` without owning the reports (they stay for a retry).
#[derive(serde::Serialize)]
struct ResultsRef<'a> {
    results: &'a [Report],
}
use crate::model::{HashHex, JobResult, JobState, RunTiming, outcome};
use crate::run::{RunFailure, Runner, result_of};

/// Outputs (and checkpoints) up to this size travel inside the results report (the
/// heartbeat).
pub(crate) const INLINE_BYTES: usize = 256 << 10;

/// How long one work poll waits at the coordinator.
const POLL_WAIT: Duration = Duration::from_secs(5);

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The node's side of leased work.
#[derive(Debug)]
pub struct Agent {
    runner: Arc<Runner>,
    coordinators: Arc<super::Coordinators>,
    node_key: Option<String>,
    http: reqwest::Client,
    held: Mutex<HashMap<u64, (u32, CancellationToken)>>,
    outbox: Mutex<Vec<Report>>,
    reported: Notify,
    /// Notified whenever a held lease ends (for shutdown).
    released: Notify,
    fetching: Mutex<HashMap<HashHex, Arc<tokio::sync::Mutex<()>>>>,
    /// The latest checkpoint of each held lease that saved one.
    checkpoints: Arc<Mutex<HashMap<u64, SavedCheckpoint>>>,
}

/// A leased run's latest checkpoint, until the heartbeat has carried it.
#[derive(Debug)]
struct SavedCheckpoint {
    attempt: u32,
    hash: HashHex,
    bytes: Arc<[u8]>,
    sent: bool,
}

/// Puts each checkpoint a leased run saves on the agent's shelf for the next heartbeat.
struct RemoteCheckpoints {
    shelf: Arc<Mutex<HashMap<u64, SavedCheckpoint>>>,
    token: Token,
}

impl wasmesh_runtime::RunObserver for RemoteCheckpoints {
    fn checkpoint(&self, bytes: &[u8]) {
        lock(&self.shelf).insert(
            self.token.lsn,
            SavedCheckpoint {
                attempt: self.token.attempt,
                hash: HashHex::of(bytes),
                bytes: bytes.into(),
                sent: false,
            },
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn pause(duration: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = stop.cancelled() => {}
    }
}

impl Agent {
    /// This node's id.
    pub fn node_id(&self) -> String {
        self.runner.engine().config().id.clone()
    }

    /// An agent of the node `runner` runs for, working for the coordinator it is with.
    pub fn new(
        runner: Arc<Runner>,
        coordinators: Arc<super::Coordinators>,
        node_key: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runner,
            coordinators,
            node_key,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                // Below the servers' idle timeout (30 s), so a pooled connection is
                // never reused just as the server closes it.
                .pool_idle_timeout(crate::model::CLIENT_IDLE)
                .build()
                .expect("building the agent's HTTP client"),
            held: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            reported: Notify::new(),
            released: Notify::new(),
            fetching: Mutex::new(HashMap::new()),
            checkpoints: Arc::default(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.coordinators.current()));
        match &self.node_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// The leases this node holds (running, or waiting for a slot).
    pub fn held(&self) -> Vec<Token> {
        lock(&self.held)
            .iter()
            .map(|(lsn, (attempt, _))| Token {
                lsn: *lsn,
                attempt: *attempt,
            })
            .collect()
    }

    /// Waits up to `grace` until every lease this node received has run and its report
    /// is queued (at shutdown, after polling stopped: a lease that arrived just before
    /// must not lose its slot to the node's own shutdown).
    pub async fn finish_held(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if lock(&self.held).is_empty() {
                return;
            }
            tokio::select! {
                () = released => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("leases still running at shutdown expire on the coordinator");
                    return;
                }
            }
        }
    }

    /// Checkpoints saved since the last heartbeat carried them: (lease, hash, bytes).
    pub fn unsent_checkpoints(&self) -> Vec<(Token, HashHex, Arc<[u8]>)> {
        lock(&self.checkpoints)
            .iter()
            .filter(|(_, saved)| !saved.sent)
            .map(|(lsn, saved)| {
                let token = Token {
                    lsn: *lsn,
                    attempt: saved.attempt,
                };
                (token, saved.hash, saved.bytes.clone())
            })
            .collect()
    }

    /// The coordinator has these checkpoints (unless a newer one was saved since).
    pub fn checkpoints_sent(&self, sent: &[(Token, HashHex)]) {
        let mut shelf = lock(&self.checkpoints);
        for (token, hash) in sent {
            if let Some(saved) = shelf.get_mut(&token.lsn)
                && saved.attempt == token.attempt
                && saved.hash == *hash
            {
                saved.sent = true;
            }
        }
    }

    /// Stops the runs of these leases (those this node holds).
    pub fn cancel(&self, tokens: &[Token]) {
        let held = lock(&self.held);
        for token in tokens {
            if let Some((attempt, cancel)) = held.get(&token.lsn)
                && *attempt == token.attempt
            {
                tracing::info!(lsn = token.lsn, "the coordinator cancelled a lease");
                cancel.cancel();
            }
        }
    }

    /// Polls for work until `stop_polling`; reports results until `stop_reporting`
    /// (then flushes what is left, giving up after a few tries).
    pub fn spawn(
        self: &Arc<Self>,
        stop_polling: CancellationToken,
        stop_reporting: CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
        let poll = tokio::spawn(self.clone().poll_loop(stop_polling));
        let report = tokio::spawn(self.clone().report_loop(stop_reporting));
        (poll, report)
    }

    async fn poll_loop(self: Arc<Self>, stop: CancellationToken) {
        let path = format!(
            "/api/v1/cluster/nodes/{}/work",
            self.runner.engine().config().id
        );
        let mut backoff = MIN_BACKOFF;
        while !stop.is_cancelled() {
            let send = self
                .request(reqwest::Method::POST, &path)
                .timeout(POLL_WAIT + Duration::from_secs(10))
                .json(&WorkRequest {
                    wait_ms: POLL_WAIT.as_millis() as u64,
                })
                .send();
            // Not cut short by `stop`: the answer may carry leases. At shutdown the
            // node says it is leaving first, which makes this poll answer at once.
            let response = send.await;
            match response {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    // Not registered (yet): the membership loop is on it.
                    pause(Duration::from_millis(100), &stop).await;
                }
                Ok(r) if r.status().is_success() => match r.json::<WorkAnswer>().await {
                    Ok(answer) => {
                        backoff = MIN_BACKOFF;
                        self.cancel(&answer.cancel);
                        for assignment in answer.leases {
                            self.start(assignment);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable work from the coordinator");
                        pause(backoff, &stop).await;
                    }
                },
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "the coordinator refused a work poll");
                    pause(backoff, &stop).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "work poll failed");
                    pause(backoff, &stop).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Tells the coordinator this node is leaving: first (`last == false`) so that it
    /// gets no new work and the leases it has not received go back to the queue; last,
    /// once its results are reported, to be deregistered. Best effort: when the
    /// coordinator is unreachable, leases expire instead.
    pub async fn leave(&self, last: bool) {
        let path = format!(
            "/api/v1/cluster/nodes/{}/leave",
            self.runner.engine().config().id
        );
        let sent = self
            .request(reqwest::Method::POST, &path)
            .timeout(Duration::from_secs(5))
            .json(&serde_json::json!({ "final": last }))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = %r.status(), "the coordinator refused the leave"),
            Err(e) => {
                tracing::warn!(error = %e, "could not tell the coordinator this node is leaving")
            }
        }
    }

    fn start(self: &Arc<Self>, assignment: Assignment) {
        let token = assignment.lease;
        let cancel = CancellationToken::new();
        lock(&self.held).insert(token.lsn, (token.attempt, cancel.clone()));
        let agent = self.clone();
        tokio::spawn(async move {
            let report = agent.execute(assignment, cancel).await;
            {
                let mut held = lock(&agent.held);
                if held
                    .get(&token.lsn)
                    .is_some_and(|(a, _)| *a == token.attempt)
                {
                    held.remove(&token.lsn);
                    lock(&agent.checkpoints).remove(&token.lsn);
                }
            }
            lock(&agent.outbox).push(report);
            agent.reported.notify_one();
            agent.released.notify_waiters();
        });
    }

    async fn execute(&self, assignment: Assignment, cancel: CancellationToken) -> Report {
        let token = assignment.lease;
        let permit = tokio::select! {
            permit = self.runner.slots().clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
            () = cancel.cancelled() => return failed(token, JobState::Cancelled, outcome::CANCELLED, "cancelled before it ran", false),
        };
        // Small inputs and files ride inline: decoded and verified here, kept in memory.
        let mut inline: HashMap<HashHex, Arc<[u8]>> = HashMap::new();
        for (hash, data) in &assignment.blobs {
            match base64::engine::general_purpose::STANDARD.decode(data) {
                Ok(bytes) if HashHex::of(&bytes) == *hash => {
                    inline.insert(*hash, bytes.into());
                }
                _ => {
                    let message = format!("the inline blob does not hash to {hash}");
                    return failed(token, JobState::Failed, outcome::TRAPPED, &message, true);
                }
            }
        }
        // Everything else the run reads comes from the store: the module, the worker's
        // files, and the action's input and files unless they came inline.
        // (The checkpoint is read from the store below, whatever came inline.)
        let fetched = assignment
            .fetches()
            .into_iter()
            .filter(|hash| !inline.contains_key(hash) || assignment.checkpoint == Some(*hash));
        for hash in fetched {
            if let Err(message) = self.fetch(hash).await {
                return failed(token, JobState::Failed, outcome::TRAPPED, &message, true);
            }
        }
        // An earlier attempt's checkpoint: this run resumes from it.
        let resume = match assignment.checkpoint {
            Some(hash) => match self.runner.engine().cas().read(&hash) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    let message = format!("reading checkpoint {hash}: {e}");
                    return failed(token, JobState::Failed, outcome::TRAPPED, &message, true);
                }
            },
            None => None,
        };
        let keeper: Arc<dyn wasmesh_runtime::RunObserver> = Arc::new(RemoteCheckpoints {
            shelf: self.checkpoints.clone(),
            token,
        });
        let runner = self.runner.clone();
        let started = Instant::now();
        let started_ms = RunTiming::now_ms();
        let run = tokio::task::spawn_blocking(move || {
            let run = runner.run_prepared(
                &assignment.worker,
                &assignment.action,
                &inline,
                resume,
                Some(keeper),
                cancel,
            );
            drop(permit);
            run
        })
        .await;
        self.runner
            .engine()
            .metrics()
            .observe_run(started.elapsed());
        let run = match run {
            Ok(Ok(run)) => run,
            Ok(Err(RunFailure::Host(message))) => {
                return failed(
                    token,
                    JobState::Failed,
                    outcome::TRAPPED,
                    &format!("host error: {message}"),
                    true,
                );
            }
            Ok(Err(RunFailure::Final(message))) => {
                return failed(token, JobState::Failed, outcome::TRAPPED, &message, false);
            }
            Err(e) => {
                return failed(
                    token,
                    JobState::Failed,
                    outcome::TRAPPED,
                    &format!("host error: {e}"),
                    true,
                );
            }
        };
        let timing = RunTiming {
            started_ms,
            finished_ms: started_ms + started.elapsed().as_millis() as i64,
        };
        let result = result_of(
            &run,
            HashHex::of(&run.stdout),
            HashHex::of(&run.stderr),
            timing,
        );
        self.runner.engine().metrics().finished(result.state);
        let mut report = Report {
            lease: token,
            result,
            blobs: BTreeMap::new(),
            host_failure: false,
        };
        for bytes in [run.stdout, run.stderr] {
            if let Err(message) = self.ship(&mut report, bytes).await {
                return failed(token, JobState::Failed, outcome::TRAPPED, &message, true);
            }
        }
        report
    }

    /// Puts an output where the coordinator will find it: inline when small, else
    /// uploaded ahead of the report.
    async fn ship(&self, report: &mut Report, bytes: Vec<u8>) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        let hash = HashHex::of(&bytes);
        if bytes.len() <= INLINE_BYTES {
            report.blobs.insert(
                hash,
                base64::engine::general_purpose::STANDARD.encode(&bytes),
            );
            return Ok(());
        }
        let response = self
            .request(
                reqwest::Method::PUT,
                &upload_path(&self.runner.engine().config().id, report.lease, &hash),
            )
            .timeout(Duration::from_secs(300))
            .body(bytes)
            .send()
            .await
            .map_err(|e| format!("sending output {hash} to the coordinator: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "the coordinator refused output {hash}: {}",
                response.status()
            ));
        }
        Ok(())
    }

    /// Makes sure the blob is in this node's store, fetching it from the coordinator
    /// once (concurrent runs needing the same blob wait for one download). A blob
    /// already here is marked as used now, so the node's garbage collection (which
    /// sees no job of its own naming it) leaves it for a grace period.
    async fn fetch(&self, hash: HashHex) -> Result<(), String> {
        if self.runner.engine().cas().touch(&hash).unwrap_or(false) {
            return Ok(());
        }
        let gate = lock(&self.fetching).entry(hash).or_default().clone();
        let _guard = gate.lock().await;
        if self.runner.engine().cas().contains(&hash) {
            return Ok(());
        }
        let fetched = async {
            let response = self
                .request(
                    reqwest::Method::GET,
                    &fetch_path(&self.runner.engine().config().id, &hash),
                )
                .timeout(Duration::from_secs(300))
                .send()
                .await
                .map_err(|e| format!("fetching blob {hash}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!(
                    "fetching blob {hash}: the coordinator answered {}",
                    response.status()
                ));
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| format!("fetching blob {hash}: {e}"))?;
            let runner = self.runner.clone();
            tokio::task::spawn_blocking(move || {
                let cas = runner.engine().cas();
                let staged = cas
                    .stage_bytes(hash, &bytes)
                    .map_err(|e| format!("storing blob {hash}: {e}"))?;
                cas.commit(staged)
                    .map_err(|e| format!("storing blob {hash}: {e}"))
            })
            .await
            .map_err(|e| format!("storing blob {hash}: {e}"))?
        }
        .await;
        lock(&self.fetching).remove(&hash);
        if fetched.is_ok() {
            tracing::debug!(%hash, "fetched a blob from the coordinator");
        }
        fetched
    }

    async fn report_loop(self: Arc<Self>, stop: CancellationToken) {
        let path = format!(
            "/api/v1/cluster/nodes/{}/results",
            self.runner.engine().config().id
        );
        let mut backoff = MIN_BACKOFF;
        let mut tries_after_stop = 0;
        loop {
            let notified = self.reported.notified();
            let batch = std::mem::take(&mut *lock(&self.outbox));
            if batch.is_empty() {
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = notified => {}
                    () = stop.cancelled() => {}
                }
                continue;
            }
            let count = batch.len();
            let sent = self
                .request(reqwest::Method::POST, &path)
                .timeout(Duration::from_secs(60))
                .json(&ResultsRef { results: &batch })
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => {
                    backoff = MIN_BACKOFF;
                    if let Ok(answer) = r.json::<ResultsAnswer>().await
                        && !answer.rejected.is_empty()
                    {
                        tracing::info!(rejected = ?answer.rejected, "the coordinator refused stale results");
                    }
                    continue;
                }
                Ok(r) => format!("the coordinator answered {}", r.status()),
                Err(e) => e.to_string(),
            };
            tracing::warn!(count, error = %failure, "reporting results failed; retrying");
            lock(&self.outbox).splice(0..0, batch);
            if stop.is_cancelled() {
                tries_after_stop += 1;
                if tries_after_stop >= 3 {
                    tracing::warn!(
                        "giving up reporting at shutdown; the coordinator requeues those jobs when their leases expire"
                    );
                    return;
                }
            }
            // Not cut short by `stop`: at shutdown the reports are worth the wait.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// A report of an attempt that produced no run of its own.
fn failed(token: Token, state: JobState, outcome: &str, message: &str, host: bool) -> Report {
    Report {
        lease: token,
        result: JobResult::without_run(state, outcome, message),
        blobs: BTreeMap::new(),
        host_failure: host,
    }
}

/// Where a blob of one of this node's leases is fetched from.
pub(crate) fn fetch_path(node: &str, hash: &HashHex) -> String {
    let query: String = reqwest::Url::parse_with_params("http://fetch/", [("node", node)])
        .ok()
        .and_then(|url| url.query().map(str::to_string))
        .unwrap_or_default();
    format!("/api/v1/cluster/blobs/{hash}?{query}")
}

/// Where a blob produced under `lease` is uploaded (the coordinator accepts it only
/// for a current lease of this node).
pub(crate) fn upload_path(node: &str, lease: Token, hash: &HashHex) -> String {
    let query: String = reqwest::Url::parse_with_params(
        "http://upload/",
        [
            ("node", node.to_string()),
            ("lsn", lease.lsn.to_string()),
            ("attempt", lease.attempt.to_string()),
        ],
    )
    .ok()
    .and_then(|url| url.query().map(str::to_string))
    .unwrap_or_default();
    format!("/api/v1/cluster/blobs/{hash}?{query}")
}
