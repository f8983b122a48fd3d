//! A real `wasmesh node` process on 127.0.0.1:0 for the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::HashHex;
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

/// The switch that runs the suite on PostgreSQL: with `WASMESH_TEST_JOURNAL` set to a
/// server's URL (scripts/test.sh sets it for its second pass), every node and
/// coordinator the tests start keeps its journal there, in a schema of its own named
/// after its data directory (so a restart on the same directory finds its journal).
pub fn journal_args(args: &[&str], data_dir: &Path) -> Vec<String> {
    let Ok(base) = std::env::var("WASMESH_TEST_JOURNAL") else {
        return Vec::new();
    };
    let server = matches!(args.first(), Some(&"node" | &"coordinator"));
    if base.is_empty() || !server || args.contains(&"--journal") {
        return Vec::new();
    }
    let path = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = blake3::hash(path.to_string_lossy().as_bytes()).to_hex();
    let joiner = if base.contains('?') { '&' } else { '?' };
    vec![
        "--journal".into(),
        format!("{base}{joiner}options=-csearch_path%3Dw_{}", &hash[..16]),
    ]
}

/// A running node; killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// A node on a fresh data directory.
    pub fn start(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(temp.path(), args);
        server._temp = Some(temp);
        server
    }

    /// A node on a fresh data directory with these extra environment variables.
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut server = Self::start_in_env(temp.path(), args, envs);
        server._temp = Some(temp);
        server
    }

    /// A node on `data_dir` (which outlives it, for restarts).
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_in_env(data_dir, args, &[])
    }

    /// A node on `data_dir` with these extra environment variables.
    pub fn start_in_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut full = vec![
            "node",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("UTF-8 path"),
        ];
        full.extend_from_slice(args);
        Self::spawn_env(&full, data_dir, envs)
    }

    /// A coordinator on 127.0.0.1:0 with a fresh data directory.
    pub fn coordinator(args: &[&str]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut server = Self::coordinator_in(temp.path(), args);
        server._temp = Some(temp);
        server
    }

    /// A coordinator on a fresh data directory with these extra environment variables.
    pub fn coordinator_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut server = Self::coordinator_in_env(temp.path(), args, envs);
        server._temp = Some(temp);
        server
    }

    /// A coordinator on `data_dir` (which outlives it, for restarts).
    pub fn coordinator_in(data_dir: &Path, args: &[&str]) -> Self {
        Self::coordinator_in_env(data_dir, args, &[])
    }

    /// A coordinator on `data_dir` with these extra environment variables.
    pub fn coordinator_in_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut full = vec![
            "coordinator",
            "--data-dir",
            data_dir.to_str().expect("UTF-8 path"),
        ];
        if !args.contains(&"--listen") {
            full.extend(["--listen", "127.0.0.1:0"]);
        }
        full.extend_from_slice(args);
        Self::spawn_env(&full, data_dir, envs)
    }

    /// The process id (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn_env(args: &[&str], data_dir: &Path, envs: &[(&str, &str)]) -> Self {
        // A test about the SQLite file opts out with `WASMESH_TEST_JOURNAL=""`.
        let opted_out = envs.iter().any(|(k, _)| *k == "WASMESH_TEST_JOURNAL");
        let journal = if opted_out {
            Vec::new()
        } else {
            journal_args(args, data_dir)
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
            .args(args)
            .args(&journal)
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning wasmesh node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        // The node prints one line with its address once it is bound; it exits (EOF)
        // if it cannot start.
        stdout
            .read_line(&mut line)
            .expect("reading the node's first line");
        let url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("the node did not print its address: {line:?}"))
            .to_string();
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        Self {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
        }
    }

    /// A client without a key.
    pub fn client(&self) -> Client {
        Client::new(&self.url, None)
    }

    /// A client with a key.
    pub fn client_with_key(&self, key: &str) -> Client {
        Client::new(&self.url, Some(key.into()))
    }

    /// A raw HTTP client.
    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::new()
    }

    /// The text of `/metrics`, with `key` when the server needs one.
    pub fn metrics(&self, key: Option<&str>) -> String {
        let mut request = self.http().get(self.at("/metrics"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send().unwrap().text().unwrap()
    }

    /// `self.url + path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Kills the node with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill(mut self) {
        self.child.kill().expect("killing the node");
        self.child.wait().expect("reaping the node");
    }

    /// Waits for the process to end by itself; returns its exit status.
    pub fn exited(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("reaping the node")
    }

    /// Sends SIGTERM and waits for a graceful exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("sending SIGTERM");
        self.child.wait().expect("reaping the node").success()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads the test guest; returns its worker id.
pub fn upload_test_guest(client: &Client) -> HashHex {
    let wasm = guest_bytes(TEST_GUEST);
    let module = HashHex::of(&wasm);
    client
        .upload_worker(
            &json!({"name": "test-guest", "module": module}),
            &[(module, &wasm)],
        )
        .expect("upload")
        .worker
}

/// An action of the test guest with these args (and optional stdin).
pub fn action(client: &Client, worker: HashHex, args: &[&str], stdin: Option<&[u8]>) -> Value {
    let mut action = json!({"worker": worker, "args": args});
    if let Some(bytes) = stdin {
        action["input"] = json!(client.ensure_blobs(&[bytes]).unwrap()[0]);
    }
    action
}

/// Submits the test guest with these arguments; returns the job's LSN.
pub fn submit(client: &Client, worker: HashHex, args: &[&str]) -> u64 {
    client
        .submit(&action(client, worker, args, None), None, None)
        .unwrap()
}

/// Submits a job that holds a slot for a minute and returns once it is running.
pub fn start_blocker(client: &Client, worker: HashHex) -> u64 {
    let lsn = client
        .submit(
            &action(client, worker, &["progress-then", "sleep", "60000"], None),
            None,
            None,
        )
        .unwrap();
    eventually(WAIT, || (job_state(client, lsn) == "running").then_some(()));
    lsn
}

/// A job's state: `queued`/`running` while pending, then its final state.
pub fn job_state(client: &Client, lsn: u64) -> String {
    let body = client
        .call(reqwest::Method::GET, &format!("/compute/jobs/{lsn}"), None)
        .unwrap();
    body["state"].as_str().unwrap_or_default().to_string()
}

/// The status and error code of a client error.
pub fn api_code(error: wasmesh_host::client::ClientError) -> (u16, String) {
    match error {
        wasmesh_host::client::ClientError::Api { status, code, .. } => (status, code),
        other => panic!("expected an API error, got {other}"),
    }
}

/// Polls `check` until it returns Some or `within` passes.
pub fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The usual wait for a job.
pub const WAIT: Duration = Duration::from_secs(60);
