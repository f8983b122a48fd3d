//! A small blocking client of the wasmesh HTTP API, used by the CLI and the tests: the
//! needs dance for uploads, submission, results and waiting.
//!
//! It takes a list of servers (`http://a:9100,http://b:9100`): a request that gets no
//! answer from one (it could not connect, or the connection failed before an answer
//! came) goes to the next, which is then used from there on. Submissions carry an
//! `Idempotency-Key`, the same on every try, so a submission retried after its answer
//! was lost is not doubled by a server that had already taken it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::model::{HashHex, JobResult};

/// A client error: the server's error code and message, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The contract's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The request did not get an answer.
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The answer was not what the contract promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// Waiting took too long.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The worker id.
    pub worker: HashHex,
    /// Chunks the server asked for (and was sent).
    pub sent_chunks: usize,
    /// Bytes of chunks sent.
    pub sent_bytes: u64,
}

/// The client.
#[derive(Debug, Clone)]
pub struct Client {
    servers: Arc<Vec<String>>,
    /// The server that answered last (requests start there).
    current: Arc<AtomicUsize>,
    api_key: Option<String>,
    http: reqwest::blocking::Client,
}

fn api_error(response: reqwest::blocking::Response) -> ClientError {
    let status = response.status().as_u16();
    let body: Value = response.json().unwrap_or(Value::Null);
    ClientError::Api {
        status,
        code: body["error"]["code"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        message: body["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string(),
    }
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:9000`), or of the
    /// first of a comma-separated list that answers.
    pub fn new(base: impl Into<String>, api_key: Option<String>) -> Self {
        let base = base.into();
        let mut servers: Vec<String> = base
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            servers.push(base);
        }
        Self {
            servers: Arc::new(servers),
            current: Arc::default(),
            api_key,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                // Below the servers' idle timeout (30 s), so a pooled connection is
                // never reused just as the server closes it.
                .pool_idle_timeout(crate::model::CLIENT_IDLE)
                .build()
                .expect("building an HTTP client"),
        }
    }

    /// The base URL of the server in use (the one that answered last).
    pub fn base(&self) -> &str {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Sends `method path`, made by `prepare` (body, headers), to the server in use;
    /// when it gets no answer, to the next server in the list, in turn.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        prepare: impl Fn(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response, ClientError> {
        let count = self.servers.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut failed = None;
        for i in 0..count {
            let index = (first + i) % count;
            let mut builder = self
                .http
                .request(method.clone(), format!("{}{path}", self.servers[index]));
            if let Some(key) = &self.api_key {
                builder = builder.header("x-api-key", key);
            }
            match prepare(builder).send() {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                // No answer: the next server may give one.
                Err(e) if count > 1 && (e.is_connect() || e.is_request() || e.is_timeout()) => {
                    tracing::warn!(server = %self.servers[index], error = %e, "no answer; trying the next server");
                    failed = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(failed.expect("a server was tried").into())
    }

    fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.json_keyed(method, path, body, None)
    }

    /// A fresh `Idempotency-Key` for one submission, when there is another server to
    /// retry it on (with one server nothing is retried, and the key would cost the
    /// server a stored answer for nothing).
    fn idempotency_key(&self) -> Option<String> {
        (self.servers.len() > 1)
            .then(|| format!("wasmesh-client-{}", uuid::Uuid::new_v4().simple()))
    }

    /// [`Client::json`] with an `Idempotency-Key`, the same on every server tried.
    fn json_keyed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON serializes")));
        let response = self.send(method, path, |mut builder| {
            if let Some(body) = &body {
                builder = builder
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            if let Some(key) = idempotency_key {
                builder = builder.header("idempotency-key", key);
            }
            builder
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error(response));
        }
        Ok((status, response.json().unwrap_or(Value::Null)))
    }

    /// `POST /cas/needs`.
    pub fn needs(&self, hashes: &[HashHex]) -> Result<Vec<HashHex>, ClientError> {
        let (_, body) = self.json(
            reqwest::Method::POST,
            "/cas/needs",
            Some(&json!({"hashes": hashes})),
        )?;
        serde_json::from_value(body["needs"].clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `PUT /cas/{hash}` of `bytes`; returns the hash.
    pub fn put_blob(&self, bytes: Vec<u8>) -> Result<HashHex, ClientError> {
        let hash = HashHex::of(&bytes);
        let bytes = Bytes::from(bytes);
        let response = self.send(reqwest::Method::PUT, &format!("/cas/{hash}"), |builder| {
            builder.body(bytes.clone())
        })?;
        if !response.status().is_success() {
            return Err(api_error(response));
        }
        Ok(hash)
    }

    /// Stores blobs the server lacks (the needs dance for inputs).
    pub fn ensure_blobs(&self, blobs: &[&[u8]]) -> Result<Vec<HashHex>, ClientError> {
        let hashes: Vec<HashHex> = blobs.iter().map(|b| HashHex::of(b)).collect();
        let needs = self.needs(&hashes)?;
        for (hash, bytes) in hashes.iter().zip(blobs) {
            if needs.contains(hash) {
                self.put_blob(bytes.to_vec())?;
            }
        }
        Ok(hashes)
    }

    /// `GET /cas/{hash}`.
    pub fn blob(&self, hash: &HashHex) -> Result<Vec<u8>, ClientError> {
        let response = self.send(reqwest::Method::GET, &format!("/cas/{hash}"), |b| b)?;
        if !response.status().is_success() {
            return Err(api_error(response));
        }
        Ok(response.bytes()?.to_vec())
    }

    /// Registers a worker with the needs dance: the descriptor first, then a package
    /// with only the chunks the server asked for.
    pub fn upload_worker(
        &self,
        descriptor: &Value,
        chunks: &[(HashHex, &[u8])],
    ) -> Result<Upload, ClientError> {
        let (status, body) =
            self.json(reqwest::Method::POST, "/compute/workers", Some(descriptor))?;
        let worker: HashHex = serde_json::from_value(body["worker"].clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if status != StatusCode::ACCEPTED {
            return Ok(Upload {
                worker,
                sent_chunks: 0,
                sent_bytes: 0,
            });
        }
        let needs: Vec<HashHex> = serde_json::from_value(body["needs"].clone())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let wanted: Vec<(HashHex, &[u8])> = chunks
            .iter()
            .filter(|(hash, _)| needs.contains(hash))
            .map(|(hash, bytes)| (*hash, *bytes))
            .collect();
        let sent_chunks = wanted.len();
        let sent_bytes = wanted.iter().map(|(_, b)| b.len() as u64).sum();
        if sent_chunks < needs.len() {
            return Err(ClientError::Protocol(format!(
                "the server needs {} chunks the client does not have",
                needs.len() - sent_chunks
            )));
        }
        let (content_type, body) = package(&descriptor.to_string(), &wanted);
        let body = Bytes::from(body);
        let response = self.send(reqwest::Method::POST, "/compute/workers", |builder| {
            builder
                .header(reqwest::header::CONTENT_TYPE, &content_type)
                .body(body.clone())
        })?;
        if !response.status().is_success() {
            return Err(api_error(response));
        }
        Ok(Upload {
            worker,
            sent_chunks,
            sent_bytes,
        })
    }

    /// Submits one action (into `queue` when given); returns its LSN.
    pub fn submit(
        &self,
        action: &Value,
        queue: Option<&str>,
        priority: Option<i64>,
    ) -> Result<u64, ClientError> {
        self.submit_waiting(action, queue, priority, Duration::ZERO)
            .map(|(lsn, _)| lsn)
    }

    /// Submits one action and waits on the server up to `wait` for its result, in one
    /// round trip (`?wait_ms=`); returns its LSN and the result if it finished by then.
    pub fn submit_waiting(
        &self,
        action: &Value,
        queue: Option<&str>,
        priority: Option<i64>,
        wait: Duration,
    ) -> Result<(u64, Option<JobResult>), ClientError> {
        let mut path = match queue {
            Some(q) => format!("/compute/queues/{q}/jobs"),
            None => "/compute/jobs".into(),
        };
        let mut query = Vec::new();
        if let Some(p) = priority {
            query.push(format!("priority={p}"));
        }
        if !wait.is_zero() {
            query.push(format!("wait_ms={}", wait.as_millis()));
        }
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let key = self.idempotency_key();
        let (status, mut body) =
            self.json_keyed(reqwest::Method::POST, &path, Some(action), key.as_deref())?;
        if status == StatusCode::ACCEPTED {
            return Err(ClientError::Protocol(format!(
                "the server still needs chunks: {}",
                body["needs"]
            )));
        }
        let lsn = body["lsn"]
            .as_u64()
            .ok_or_else(|| ClientError::Protocol(format!("no lsn in {body}")))?;
        let result = match body.get_mut("result").map(Value::take) {
            Some(result) => Some(serde_json::from_value(result).map_err(|e| {
                ClientError::Protocol(format!("a result that does not parse: {e}"))
            })?),
            None => None,
        };
        Ok((lsn, result))
    }

    /// Submits a batch of actions in one request (into `queue` when given; all or
    /// none are accepted); returns their LSNs in order.
    pub fn submit_batch(
        &self,
        actions: &[Value],
        queue: Option<&str>,
    ) -> Result<Vec<u64>, ClientError> {
        let path = match queue {
            Some(q) => format!("/compute/queues/{q}/jobs"),
            None => "/compute/jobs".into(),
        };
        let batch = json!({ "actions": actions });
        let key = self.idempotency_key();
        let (status, body) =
            self.json_keyed(reqwest::Method::POST, &path, Some(&batch), key.as_deref())?;
        if status == StatusCode::ACCEPTED {
            return Err(ClientError::Protocol(format!(
                "the server still needs chunks: {}",
                body["needs"]
            )));
        }
        body["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().map(|j| j["lsn"].as_u64()).collect())
            .ok_or_else(|| ClientError::Protocol(format!("no lsns in {body}")))
    }

    /// Cancels a job: a queued one never runs, a running one is stopped.
    pub fn cancel(&self, lsn: u64) -> Result<(), ClientError> {
        self.json(
            reqwest::Method::POST,
            &format!("/compute/jobs/{lsn}/cancel"),
            None,
        )
        .map(|_| ())
    }

    /// The job's result, or `None` while it is pending.
    pub fn result(&self, lsn: u64) -> Result<Option<JobResult>, ClientError> {
        self.result_within(lsn, Duration::ZERO)
    }

    /// The job's result, waiting on the server (long-poll) up to `wait` for it to
    /// finish; `None` if it is still pending then.
    pub fn result_within(
        &self,
        lsn: u64,
        wait: Duration,
    ) -> Result<Option<JobResult>, ClientError> {
        let path = format!("/compute/jobs/{lsn}?wait_ms={}", wait.as_millis());
        let response = self.send(reqwest::Method::GET, &path, |b| b)?;
        match response.status() {
            StatusCode::ACCEPTED => Ok(None),
            StatusCode::OK => response
                .json()
                .map(Some)
                .map_err(|e| ClientError::Protocol(e.to_string())),
            _ => Err(api_error(response)),
        }
    }

    /// Waits until the job finishes, with long-polls of up to 30 s each, so a finished
    /// job is seen as soon as its result is written.
    pub fn wait(&self, lsn: u64, timeout: Duration) -> Result<JobResult, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(result) = self.result_within(lsn, left.min(Duration::from_secs(30)))? {
                return Ok(result);
            }
            if left.is_zero() {
                return Err(ClientError::Timeout(format!("job {lsn}")));
            }
        }
    }

    /// `GET /compute/queues/{q}`.
    pub fn queue(&self, q: &str) -> Result<Value, ClientError> {
        self.json(reqwest::Method::GET, &format!("/compute/queues/{q}"), None)
            .map(|(_, body)| body)
    }

    /// Waits until the queue has nothing pending (long-polls of up to a second, so
    /// `progress` sees the counts about once a second); returns its final status.
    pub fn wait_queue(
        &self,
        q: &str,
        timeout: Duration,
        mut progress: impl FnMut(&Value),
    ) -> Result<Value, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(Duration::from_secs(1)).as_millis();
            let (_, status) = self.json(
                reqwest::Method::GET,
                &format!("/compute/queues/{q}?wait_ms={wait}"),
                None,
            )?;
            progress(&status);
            if status["is_complete"] == json!(true) {
                return Ok(status);
            }
            if left.is_zero() {
                return Err(ClientError::Timeout(format!("queue {q}")));
            }
        }
    }

    /// Any JSON call, for commands not wrapped above.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        self.json(method, path, body).map(|(_, body)| body)
    }
}

/// A multipart package (`multipart/form-data`: the descriptor, then one part per
/// chunk, named by its hash) built in one buffer: its content type and body.
///
/// Not reqwest's blocking `Form`: that streams a body through a reader in 8 KiB
/// pieces, each a hand-off to the client's I/O thread, which made a 256 MiB package
/// take twice as long as a raw `PUT /cas` of the same bytes.
fn package(descriptor: &str, chunks: &[(HashHex, &[u8])]) -> (String, Vec<u8>) {
    let boundary = format!("wasmesh-{}", uuid::Uuid::new_v4().simple());
    let size = descriptor.len() + chunks.iter().map(|(_, b)| b.len() + 256).sum::<usize>();
    let mut body = Vec::with_capacity(size + 512);
    let mut part = |name: &str, extra: &str, content_type: &str, bytes: &[u8]| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    part("descriptor", "", "application/json", descriptor.as_bytes());
    for (hash, bytes) in chunks {
        let extra = format!("; filename=\"{hash}\"");
        part(&hash.to_string(), &extra, "application/octet-stream", bytes);
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
