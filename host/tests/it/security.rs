//! Issue 10's holes, each pinned by a test that drives real processes the way an
//! attacker would: hand-written node requests, hostile bodies, other tenants' hashes.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::blocking::Client as Http;
use serde_json::{Value, json};
use wasmesh_host::model::HashHex;

use crate::Server;
use crate::server::{WAIT, action, api_code, eventually, start_blocker, upload_test_guest};

pub(crate) const NODE_KEY: &str = "node-secret-0123456789";
pub(crate) const ACME: &str = "acme-key-0123456789";
pub(crate) const GLOBEX: &str = "globex-key-0123456789";
pub(crate) const OPS: &str = "ops-key-0123456789";

/// A tenants file with `acme`, `globex` and the operator `ops`.
pub(crate) fn tenants(dir: &std::path::Path) -> String {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "acme = [\"{ACME}\"]\nglobex = {{ keys = [\"{GLOBEX}\"] }}\n\
             ops = {{ keys = [\"{OPS}\"], role = \"operator\" }}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// A coordinator with the tenants of [`tenants`] and [`NODE_KEY`].
pub(crate) fn keyed_coordinator(dir: &std::path::Path, extra: &[&str]) -> Server {
    let tenants = tenants(dir);
    let mut args = vec!["--tenants", &tenants, "--node-key", NODE_KEY];
    args.extend_from_slice(extra);
    Server::coordinator(&args)
}

/// A POST with a key; the status and JSON body.
pub(crate) fn post(server: &Server, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = Http::new().post(server.at(path)).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// A GET with a key; the status and JSON body.
pub(crate) fn get(server: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = Http::new().get(server.at(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// A node written by hand, speaking the cluster protocol with the node key.
pub(crate) struct FakeNode<'a> {
    coordinator: &'a Server,
    id: &'static str,
}

impl FakeNode<'_> {
    pub(crate) fn join<'a>(coordinator: &'a Server, id: &'static str) -> FakeNode<'a> {
        let (status, _) = post(
            coordinator,
            "/api/v1/cluster/nodes/register",
            Some(NODE_KEY),
            &json!({"id": id, "address": "http://127.0.0.1:9", "slots": 4}),
        );
        assert_eq!(status, 200);
        FakeNode { coordinator, id }
    }

    /// Polls until a lease arrives; its assignment.
    pub(crate) fn lease(&self) -> Value {
        eventually(WAIT, || {
            let (status, answer) = post(
                self.coordinator,
                &format!("/api/v1/cluster/nodes/{}/work", self.id),
                Some(NODE_KEY),
                &json!({"wait_ms": 1000}),
            );
            assert_eq!(status, 200);
            answer["leases"].as_array().and_then(|l| l.first().cloned())
        })
    }

    fn heartbeat(&self, body: &Value) -> Value {
        let (status, answer) = post(
            self.coordinator,
            &format!("/api/v1/cluster/nodes/{}/heartbeat", self.id),
            Some(NODE_KEY),
            body,
        );
        assert_eq!(status, 200, "{answer}");
        answer
    }

    fn report(&self, report: Value) -> Value {
        let (status, answer) = post(
            self.coordinator,
            &format!("/api/v1/cluster/nodes/{}/results", self.id),
            Some(NODE_KEY),
            &json!({"results": [report]}),
        );
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

/// A report of `lease` claiming `output` as its stdout.
fn report_of(lease: &Value, output: HashHex, size: u64) -> Value {
    json!({
        "lease": lease["lease"], "state": "succeeded", "outcome": "exited", "exit_code": 0,
        "output": output, "output_size": size, "stderr": HashHex::empty(),
    })
}

/// Runs the binary to its exit within `within`; kills it and fails if it keeps running.
pub(crate) fn run_to_exit(args: &[&str], within: Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`wasmesh {}` kept running", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression (issue 10, item 1): with client keys but no node key, the node routes
/// were open to anyone, who then received every tenant's leases.
#[test]
fn node_routes_are_never_open_when_clients_need_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coordinator");
    let refused = run_to_exit(
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--api-key",
            ACME,
        ],
        Duration::from_secs(30),
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--node-key"), "{stderr}");

    // Per-node keys: each is good for the node it names only.
    let keys = dir.path().join("nodes.toml");
    std::fs::write(
        &keys,
        "n1 = \"node-one-key-0123456789\"\nn2 = \"node-two-key-0123456789\"\n",
    )
    .unwrap();
    let coordinator =
        Server::coordinator(&["--api-key", ACME, "--node-keys", keys.to_str().unwrap()]);
    let register = |id: &str, key: Option<&str>| {
        post(
            &coordinator,
            "/api/v1/cluster/nodes/register",
            key,
            &json!({"id": id, "address": "http://127.0.0.1:9", "slots": 1}),
        )
        .0
    };
    assert_eq!(register("n1", None), 401);
    assert_eq!(
        register("n1", Some(ACME)),
        401,
        "a client key is no node key"
    );
    assert_eq!(register("n1", Some("node-two-key-0123456789")), 403);
    assert_eq!(register("n1", Some("node-one-key-0123456789")), 200);
    assert_eq!(register("n2", Some("node-two-key-0123456789")), 200);
    for path in ["heartbeat", "work", "results", "leave"] {
        let (status, body) = post(
            &coordinator,
            &format!("/api/v1/cluster/nodes/n1/{path}"),
            Some("node-two-key-0123456789"),
            &json!({}),
        );
        assert_eq!(status, 403, "{path}: n2 acting for n1: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, _) = post(
        &coordinator,
        "/api/v1/cluster/nodes/n1/heartbeat",
        Some("node-one-key-0123456789"),
        &json!({"leases": []}),
    );
    assert_eq!(status, 200);
}

/// Regression (issue 10, item 2): a report (or a checkpoint note) could name any hash
/// in the store and hand it to the job's tenant, making another tenant's data
/// readable.
#[test]
fn a_node_cannot_hand_a_tenant_bytes_it_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = keyed_coordinator(dir.path(), &["--lease", "60s"]);
    let acme = coordinator.client_with_key(ACME);
    let globex = coordinator.client_with_key(GLOBEX);
    let secret = acme.put_blob(b"acme's secret".to_vec()).unwrap();
    let worker = upload_test_guest(&globex);
    let evil = FakeNode::join(&coordinator, "evil");
    let lsn = globex
        .submit(&action(&globex, worker, &["noop"], None), None, None)
        .unwrap();
    let lease = evil.lease();
    assert_eq!(lease["lease"]["lsn"], lsn);

    // A checkpoint note naming the secret without its bytes is dropped, and so is one
    // for a lease the node does not hold.
    let other = json!({"lsn": lsn + 100, "attempt": 1});
    evil.heartbeat(&json!({
        "leases": [lease["lease"]],
        "checkpoints": [
            {"lease": lease["lease"], "hash": secret},
            {"lease": other, "hash": HashHex::of(b"x"),
             "data": base64::engine::general_purpose::STANDARD.encode(b"x")},
        ],
    }));
    let (_, pending) = get(&coordinator, &format!("/compute/jobs/{lsn}"), Some(GLOBEX));
    assert!(pending.get("checkpoint").is_none(), "{pending}");

    // An upload for a lease the node does not hold is refused before any byte counts.
    let refused = Http::new()
        .put(coordinator.at(&format!(
            "/api/v1/cluster/blobs/{}?node=evil&lsn={}&attempt=1",
            HashHex::of(b"mine"),
            lsn + 100
        )))
        .bearer_auth(NODE_KEY)
        .body(b"mine".to_vec())
        .send()
        .unwrap();
    assert_eq!(refused.status(), 409);

    let answer = evil.report(report_of(&lease, secret, 13));
    assert_eq!(answer["accepted"], json!([lease["lease"]]));
    assert_eq!(
        api_code(globex.blob(&secret).unwrap_err()).0,
        404,
        "globex must not read acme's blob"
    );
    let (_, job) = get(&coordinator, &format!("/compute/jobs/{lsn}"), Some(GLOBEX));
    assert_ne!(job["output"], json!(secret), "{job}");
    // Bytes the node really uploads for its lease are the tenant's.
    let retry = evil.lease();
    let mine = b"globex's own output".to_vec();
    let hash = HashHex::of(&mine);
    let token = &retry["lease"];
    let uploaded = Http::new()
        .put(coordinator.at(&format!(
            "/api/v1/cluster/blobs/{hash}?node=evil&lsn={}&attempt={}",
            token["lsn"], token["attempt"]
        )))
        .bearer_auth(NODE_KEY)
        .body(mine.clone())
        .send()
        .unwrap();
    assert!(uploaded.status().is_success(), "{}", uploaded.status());
    evil.report(report_of(&retry, hash, mine.len() as u64));
    let result = globex.wait(lsn, WAIT).unwrap();
    assert_eq!((result.state.as_str(), result.output), ("succeeded", hash));
    assert_eq!(globex.blob(&hash).unwrap(), mine);
}

/// Regression (issue 10, item 3): any tenant key could drain or deregister nodes,
/// list their addresses and read every tenant's groups in the topology.
#[test]
fn fleet_administration_is_for_the_operator_only() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = keyed_coordinator(dir.path(), &["--heartbeat-interval", "100ms"]);
    let _node = Server::start(&[
        "--coordinator",
        &coordinator.url,
        "--node-id",
        "n1",
        "--node-key",
        NODE_KEY,
    ]);
    eventually(WAIT, || {
        let (_, listed) = get(&coordinator, "/api/v1/cluster/nodes", Some(OPS));
        (listed["nodes"][0]["state"] == "ready").then_some(())
    });
    let globex = coordinator.client_with_key(GLOBEX);
    let worker = upload_test_guest(&globex);
    let (status, group) = post(
        &coordinator,
        "/api/v1/cluster/groups",
        Some(GLOBEX),
        &json!({"name": "g", "handlers": [{"name": "h", "worker": worker}],
                "routes": [{"from": "_external", "to": "h", "event_types": ["*"]}]}),
    );
    assert_eq!(status, 201, "{group}");

    for (method, path) in [
        ("GET", "/api/v1/cluster/nodes"),
        ("GET", "/api/v1/cluster/nodes/n1"),
        ("POST", "/api/v1/cluster/nodes/n1/drain"),
        ("DELETE", "/api/v1/cluster/nodes/n1"),
    ] {
        let response = Http::new()
            .request(method.parse().unwrap(), coordinator.at(path))
            .bearer_auth(ACME)
            .send()
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let (status, acme_view) = get(&coordinator, "/api/v1/cluster/topology", Some(ACME));
    assert_eq!(status, 200);
    assert!(acme_view.get("nodes").is_none(), "{acme_view}");
    assert_eq!(
        acme_view["groups"],
        json!([]),
        "globex's group is not acme's"
    );
    let (_, globex_view) = get(&coordinator, "/api/v1/cluster/topology", Some(GLOBEX));
    assert_eq!(globex_view["groups"].as_array().unwrap().len(), 1);
    assert!(globex_view.get("nodes").is_none());
    let (_, full) = get(&coordinator, "/api/v1/cluster/topology", Some(OPS));
    assert_eq!(full["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(full["groups"][0]["tenant"], "globex");
    let (status, details) = get(&coordinator, "/api/v1/cluster/nodes/n1", Some(OPS));
    assert_eq!(status, 200, "{details}");
    // The CLI: a tenant key is refused, the operator's lists and drains.
    let cli = |key: &str, extra: &[&str]| {
        let mut args = vec!["nodes", "--server", &coordinator.url, "--api-key", key];
        args.extend_from_slice(extra);
        crate::wasmesh(&args, b"")
    };
    let as_tenant = cli(ACME, &[]);
    assert_eq!(as_tenant.status.code(), Some(2));
    assert!(
        crate::err(&as_tenant).contains("forbidden"),
        "{}",
        crate::err(&as_tenant)
    );
    let listed = cli(OPS, &[]);
    assert!(
        crate::out(&listed).contains("n1"),
        "{}",
        crate::err(&listed)
    );
    let drained = cli(OPS, &["--drain", "n1"]);
    assert_eq!(drained.status.code(), Some(0), "{}", crate::err(&drained));
    let (_, node) = get(&coordinator, "/api/v1/cluster/nodes/n1", Some(OPS));
    assert_eq!(node["state"], "draining");
}

/// The peak resident memory of a process, in bytes.
pub(crate) fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// A multipart package with a descriptor naming `module` and the given parts.
fn package(boundary: &str, module: HashHex, parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    let descriptor = json!({"name": "big", "module": module}).to_string();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"descriptor\"\r\n\r\n{descriptor}\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    body
}

/// Regression (issue 10, item 7): a POST with an `Idempotency-Key` was buffered whole
/// before any handler limit applied (600 MiB sent, 614 MiB resident).
#[test]
fn a_keyed_upload_is_not_held_in_memory() {
    let server = Server::start(&["--slots", "1"]);
    let bytes: Vec<u8> = (0..(256u32 << 20)).map(|i| (i % 251) as u8).collect();
    let input = HashHex::of(&bytes);
    // A job package whose input is 256 MiB, for a worker that does not exist: the
    // handler streams the chunk to the store and then refuses the job.
    let mut body = Vec::new();
    let part = |name: &str| {
        format!("--b0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
    };
    let unknown = HashHex::of(b"no such worker");
    body.extend_from_slice(part("descriptor").as_bytes());
    body.extend_from_slice(
        json!({"worker": unknown, "input": input})
            .to_string()
            .as_bytes(),
    );
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(part(&input.to_string()).as_bytes());
    body.extend_from_slice(&bytes);
    body.extend_from_slice(b"\r\n--b0undary--\r\n");
    drop(bytes);
    let module = input;
    let before = peak_rss(server.pid());
    let response = Http::new()
        .post(server.at("/compute/jobs"))
        .header("content-type", "multipart/form-data; boundary=b0undary")
        .header("idempotency-key", "upload-1")
        .timeout(Duration::from_secs(120))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(
        response.status(),
        404,
        "no such worker, but every chunk was read"
    );
    let grew = peak_rss(server.pid()).saturating_sub(before);
    assert!(
        grew < 96 << 20,
        "the server grew by {} MiB for a 256 MiB keyed body",
        grew >> 20
    );
    assert!(
        server.client().needs(&[module]).unwrap().is_empty(),
        "the chunk was stored"
    );
}

/// Regression (issue 10, item 8): every staged part of a package kept its file open
/// until the body ended, so 1,009 tiny parts used up a 1,024-descriptor limit.
#[test]
fn package_parts_are_closed_as_they_are_staged_and_bounded() {
    let server = Server::start(&["--slots", "1"]);
    let parts: Vec<(String, Vec<u8>)> = (0..300u32)
        .map(|i| {
            let bytes = i.to_le_bytes().to_vec();
            (HashHex::of(&bytes).to_string(), bytes)
        })
        .collect();
    let module = HashHex::of(&parts[0].1);
    let body = package("b0undary", module, &parts);
    let split = body.windows(10).position(|w| w == b"descriptor").unwrap() - 50;
    let address = server.url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /compute/workers HTTP/1.1\r\nHost: {address}\r\n\
         Content-Type: multipart/form-data; boundary=b0undary\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // Everything but the descriptor: the server stages 300 parts and waits for more.
    stream.write_all(&body[..split]).unwrap();
    let staging = server.data_dir.join("cas").join("staging");
    eventually(WAIT, || {
        (std::fs::read_dir(&staging).unwrap().count() >= 299).then_some(())
    });
    let open = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count();
    assert!(open < 150, "{open} descriptors open with 300 parts staged");
    stream.write_all(&body[split..]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok();
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");

    let send = |body: Vec<u8>| {
        Http::new()
            .post(server.at("/compute/workers"))
            .header("content-type", "multipart/form-data; boundary=b0undary")
            .body(body)
            .send()
            .unwrap()
    };
    let many: Vec<(String, Vec<u8>)> = (0..1100u32)
        .map(|i| {
            let bytes = i.to_le_bytes().to_vec();
            (HashHex::of(&bytes).to_string(), bytes)
        })
        .collect();
    let response = send(package("b0undary", module, &many));
    assert_eq!(response.status(), 400);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_package");
    let twice = vec![parts[0].clone(), parts[0].clone()];
    let response = send(package("b0undary", module, &twice));
    assert_eq!(response.status(), 400, "two parts with one name");
    assert_eq!(
        server
            .client()
            .call(reqwest::Method::GET, "/health", None)
            .unwrap()["status"],
        "healthy"
    );
}

/// Regression (issue 10, item 9): `?priority=` took any i64 into one global order, so
/// one tenant starved all others.
#[test]
fn a_high_priority_orders_only_its_own_tenants_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--slots", "1", "--tenants", &tenants(dir.path())]);
    let acme = server.client_with_key(ACME);
    let globex = server.client_with_key(GLOBEX);
    let acme_worker = upload_test_guest(&acme);
    let globex_worker = upload_test_guest(&globex);
    let blocker = start_blocker(&acme, acme_worker);
    let greedy: Vec<u64> = (0..3)
        .map(|_| {
            acme.submit(
                &action(&acme, acme_worker, &["sleep", "30"], None),
                None,
                Some(i64::MAX),
            )
            .unwrap()
        })
        .collect();
    let modest = globex
        .submit(
            &action(&globex, globex_worker, &["sleep", "30"], None),
            None,
            None,
        )
        .unwrap();
    let raised = acme
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{}/priority", greedy[2]),
            Some(&json!({"priority": 1u64 << 60})),
        )
        .unwrap();
    assert_eq!(
        raised["priority"], 1000,
        "priorities are clamped to -1000..=1000"
    );
    acme.cancel(blocker).unwrap();
    let started = |client: &wasmesh_host::client::Client, lsn| {
        let result = client.wait(lsn, WAIT).unwrap();
        assert_eq!(result.state, "succeeded");
        result.timing.unwrap().started_ms
    };
    let modest_start = started(&globex, modest);
    let greedy_starts: Vec<i64> = greedy.iter().map(|lsn| started(&acme, *lsn)).collect();
    assert!(
        modest_start <= greedy_starts[0],
        "globex at {modest_start}, acme at {greedy_starts:?}"
    );
    // With one slot nobody runs anything when it frees: the tenant served least
    // recently (globex: never; acme ran the blocker) goes first, then they take turns.
    assert!(
        modest_start < greedy_starts[1],
        "globex started at {modest_start}, acme's at {greedy_starts:?}"
    );
}

/// Regression (issue 10, item 10): a cancel that reached a running lease was lost when
/// the attempt then failed on the host: the job was retried and ran again.
#[test]
fn a_cancelled_job_is_never_retried() {
    let coordinator = Server::coordinator(&["--node-key", NODE_KEY, "--lease", "60s"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let evil = FakeNode::join(&coordinator, "flaky");
    let lsn = client
        .submit(&action(&client, worker, &["noop"], None), None, None)
        .unwrap();
    let lease = evil.lease();
    client.cancel(lsn).unwrap();
    let answer = evil.heartbeat(&json!({"leases": [lease["lease"]]}));
    assert_eq!(answer["cancel"], json!([lease["lease"]]));
    let mut failed = report_of(&lease, HashHex::empty(), 0);
    failed["state"] = json!("failed");
    failed["outcome"] = json!("trapped");
    failed["host_failure"] = json!(true);
    evil.report(failed);
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!((result.state.as_str(), result.attempts), ("cancelled", 1));
    let (_, work) = post(
        &coordinator,
        "/api/v1/cluster/nodes/flaky/work",
        Some(NODE_KEY),
        &json!({"wait_ms": 300}),
    );
    assert_eq!(
        work["leases"],
        json!([]),
        "the cancelled job was leased again"
    );
}

/// Regression (issue 10, item 11): a `202 needs` answer was stored under its
/// Idempotency-Key and replayed, so the retry after uploading never submitted.
#[test]
fn a_needs_answer_does_not_use_up_the_idempotency_key() {
    let server = Server::start(&["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let input = b"late input".to_vec();
    let body = json!({"worker": worker, "args": ["echo"], "input": HashHex::of(&input)});
    let submit = || {
        Http::new()
            .post(server.at("/compute/jobs"))
            .header("idempotency-key", "job-1")
            .json(&body)
            .send()
            .unwrap()
    };
    assert_eq!(submit().status(), 202);
    client.put_blob(input.clone()).unwrap();
    let created = submit();
    assert_eq!(created.status(), 201);
    let lsn = created.json::<Value>().unwrap()["lsn"].as_u64().unwrap();
    let replay = submit();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(client.blob(&result.output).unwrap(), input);
}

/// Regression (issue 10, item 14): `needs` trusted the journal alone, so a blob whose
/// file was lost (a crash before it reached the disk) was never asked for again.
#[test]
fn a_blob_missing_on_disk_is_asked_for_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &[]);
    let bytes = b"written, then lost".to_vec();
    let hash = server.client().put_blob(bytes.clone()).unwrap();
    assert!(server.client().needs(&[hash]).unwrap().is_empty());
    assert!(server.terminate());
    let hex = hash.to_string();
    std::fs::remove_file(
        dir.path()
            .join("cas")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(&hex),
    )
    .unwrap();
    let server = Server::start_in(dir.path(), &[]);
    assert_eq!(server.client().needs(&[hash]).unwrap(), vec![hash]);
    server.client().put_blob(bytes.clone()).unwrap();
    assert_eq!(server.client().blob(&hash).unwrap(), bytes);
}

/// Regression (issue 10, item 5): 300 saves of 1 MiB left 300 MiB in the store, never
/// freed. Only the latest checkpoint is kept, saves are rate-limited, and a finished
/// job's checkpoint is deleted.
#[test]
fn checkpoint_spam_leaves_at_most_one_checkpoint() {
    let server = Server::start(&["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let store_bytes = || -> u64 {
        let mut total = 0;
        let mut stack = vec![server.data_dir.join("cas")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let kind = entry.file_type().unwrap();
                if kind.is_dir() && entry.file_name() != "staging" {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    total += entry.metadata().unwrap().len();
                }
            }
        }
        total
    };
    let baseline = store_bytes();
    let lsn = client
        .submit(
            &action(
                &client,
                worker,
                &[
                    "progress-then",
                    "checkpoint-spam",
                    "300",
                    "1048576",
                    "60000",
                ],
                None,
            ),
            None,
            None,
        )
        .unwrap();
    // While it sleeps after its saves: one checkpoint (plus the one being replaced).
    eventually(WAIT, || {
        let (_, pending) = get(&server, &format!("/compute/jobs/{lsn}"), None);
        pending.get("checkpoint").map(|_| ())
    });
    let during = store_bytes() - baseline;
    assert!(
        during <= 2 << 20,
        "{} MiB of checkpoints kept",
        during >> 20
    );
    client.cancel(lsn).unwrap();
    client.wait(lsn, WAIT).unwrap();
    // Deleted once the job's end is settled, which may come just after its result is
    // readable (the test read the store at once and, on a loaded machine, found the
    // checkpoint still there).
    eventually(WAIT, || {
        let after = store_bytes() - baseline;
        (after < 1 << 20).then_some(())
    });
}

/// A loopback listener that counts the connections it is offered and answers each
/// request with `204 No Content`.
pub(crate) fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || answer_http(stream));
        }
    });
    (address, count)
}

/// Reads one HTTP request (headers and a Content-Length body) and answers 204.
fn answer_http<S: Read + Write>(mut stream: S) -> Vec<u8> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut buf) else {
            return request;
        };
        if n == 0 {
            return request;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    let _ = stream
        .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.flush();
    request
}

/// Submits a job on `server` with a webhook on `url` and waits for its delivery to
/// have been attempted; returns the webhook's deliveries.
fn deliver_one(server: &Server, url: &str) -> Value {
    let client = server.client();
    let hook = client
        .call(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(&json!({"url": url, "events": ["job.succeeded"]})),
        )
        .unwrap();
    let id = hook["id"].as_str().unwrap().to_string();
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(&action(&client, worker, &["noop"], None), None, None)
        .unwrap();
    client.wait(lsn, WAIT).unwrap();
    eventually(WAIT, || {
        let log = client
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/webhooks/{id}/deliveries"),
                None,
            )
            .unwrap();
        (log["deliveries"][0]["state"] == "delivered").then_some(log)
    })
}

/// Regression (issue 10, item 12): the webhook client honoured HTTP(S)_PROXY, so a
/// proxy connected for it and the public-address check never saw the endpoint.
#[test]
fn webhooks_never_go_through_a_proxy_from_the_environment() {
    let (proxy, offered) = counting_listener();
    let (receiver, received) = counting_listener();
    let proxy_url = format!("http://{proxy}");
    let server = Server::start_env(
        &["--slots", "1", "--webhook-allow-private"],
        &[
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("ALL_PROXY", &proxy_url),
        ],
    );
    deliver_one(&server, &format!("http://{receiver}/hook"));
    assert!(received.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(
        offered.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the proxy was used"
    );
}

/// Regression (issue 10, item 13): the HTTP client had no TLS backend, so https
/// endpoints were accepted and then failed on every attempt.
#[test]
fn https_webhooks_are_delivered_to_a_receiver_with_a_private_ca() {
    use tokio_rustls::rustls;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::from([
        127, 0, 0, 1,
    ]))];
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (sent, got) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            let sent = sent.clone();
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let stream = rustls::StreamOwned::new(connection, tcp);
                let _ = sent.send(answer_http(stream));
            });
        }
    });
    let server = Server::start(&[
        "--slots",
        "1",
        "--webhook-allow-private",
        "--webhook-ca",
        ca_file.to_str().unwrap(),
    ]);
    let log = deliver_one(&server, &format!("https://{address}/hook"));
    assert_eq!(log["deliveries"][0]["state"], "delivered");
    let request = got.recv_timeout(WAIT).unwrap();
    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
    assert!(text.starts_with("post /hook"), "{text}");
    assert!(text.contains("webhook-signature: v1,"), "{text}");
}

/// Uploads the test guest as a handler running `args` (from its environment).
pub(crate) fn handler_worker(client: &wasmesh_host::client::Client, args: &str) -> HashHex {
    let wasm = wasmesh_test_support::guest_bytes(wasmesh_test_support::TEST_GUEST);
    let module = HashHex::of(&wasm);
    client
        .upload_worker(
            &json!({"name": "handler", "module": module, "env": {"TEST_GUEST_ARGS": args}}),
            &[(module, &wasm)],
        )
        .unwrap()
        .worker
}

/// Runs a node on `coordinator`, deploys a group whose one handler (the test guest
/// running `args`) routes its `Spam` events to itself, and injects one event; the
/// group's id and the inject's answer.
pub(crate) fn inject_into_a_flood(coordinator: &Server, args: &str) -> (String, Value) {
    let _node = crate::scheduling::node(coordinator, "n1", &["--slots", "2"]);
    let client = coordinator.client();
    let worker = handler_worker(&client, args);
    let (status, group) = post(
        coordinator,
        "/api/v1/cluster/groups",
        None,
        &json!({"name": "flood", "handlers": [{"name": "h", "worker": worker}],
                "routes": [{"from": "_external", "to": "h", "event_types": ["*"]},
                           {"from": "h", "to": "h", "event_types": ["Spam"]}]}),
    );
    assert_eq!(status, 201, "{group}");
    let id = group["id"].as_str().unwrap().to_string();
    let (status, answer) = post(
        coordinator,
        &format!("/api/v1/cluster/groups/{id}/inject"),
        None,
        &json!({"event_type": "Go", "fields": {}}),
    );
    assert_eq!(status, 200, "{answer}");
    (id, answer)
}

/// Regression (issue 10, item 4): a handler routing to itself and emitting 1,000
/// events of 16 KiB grew the coordinator to 2 GiB and its journal by 3.2 GiB in 45 s;
/// the hop limit bounds depth, not breadth.
#[test]
fn one_inject_cannot_fan_out_past_its_budget() {
    let coordinator = Server::coordinator(&[
        "--heartbeat-interval",
        "100ms",
        "--inject-max-runs",
        "12",
        "--inject-max-bytes",
        "1MiB",
    ]);
    let (id, answer) = inject_into_a_flood(&coordinator, "fanout 100 16384");
    let chain = answer["chain"].as_array().unwrap();
    let runs = chain.iter().filter(|c| c.get("lsn").is_some()).count();
    assert!(runs <= 12, "{runs} handler runs past a budget of 12");
    let dropped = chain.last().unwrap();
    assert_eq!(dropped["dropped"], "budget", "{dropped}");
    assert!(dropped["events"].as_u64().unwrap() > 0);
    let (_, log) = get(
        &coordinator,
        &format!("/api/v1/cluster/groups/{id}/events"),
        None,
    );
    let entries = log["events"].as_array().unwrap();
    assert_eq!(entries.last().unwrap()["dropped"], "budget");
    // Each event is stored once and shown in full: the second run's event is the
    // first run's first output.
    assert_eq!(entries[0]["event"]["event_type"], "Go");
    assert_eq!(
        entries[1]["event"], entries[0]["output_events"][0],
        "{}",
        entries[1]
    );
    let (status, _) = get(&coordinator, "/health", None);
    assert_eq!(status, 200);
}

/// Regression (issue 10, item 15): in a batch inject, handler runs ran on the other
/// node when their own had no free slot, and the group's placements were not updated.
#[test]
fn handler_runs_stay_on_their_node_while_it_is_healthy() {
    let coordinator = Server::coordinator(&["--heartbeat-interval", "100ms"]);
    let _n1 = crate::scheduling::node(&coordinator, "n1", &["--slots", "1"]);
    let _n2 = crate::scheduling::node(&coordinator, "n2", &["--slots", "1"]);
    let client = coordinator.client();
    let worker = handler_worker(&client, "sleep 50");
    let (status, group) = post(
        &coordinator,
        "/api/v1/cluster/groups",
        None,
        &json!({"name": "pinned", "handlers": [
                    {"name": "a", "worker": worker, "node_affinity": "n1"},
                    {"name": "b", "worker": worker, "node_affinity": "n2"}],
                "routes": [{"from": "_external", "to": "a", "event_types": ["A"]},
                           {"from": "_external", "to": "b", "event_types": ["B"]}]}),
    );
    assert_eq!(status, 201, "{group}");
    let id = group["id"].as_str().unwrap();
    let events: Vec<Value> = (0..24)
        .map(|i| json!({"event_type": if i % 4 == 0 { "B" } else { "A" }, "fields": {"i": i}}))
        .collect();
    let (status, answer) = post(
        &coordinator,
        &format!("/api/v1/cluster/groups/{id}/inject"),
        None,
        &json!({"events": events}),
    );
    assert_eq!(status, 200, "{answer}");
    for result in answer["results"].as_array().unwrap() {
        let expected = if result["routed_to"] == "a" {
            "n1"
        } else {
            "n2"
        };
        assert_eq!(result["node"], expected, "{result}");
        let lsn = result["lsn"].as_u64().unwrap();
        let job = client.result(lsn).unwrap().unwrap();
        assert_eq!(job.placement.unwrap()["strategy"], "pinned");
    }
}
