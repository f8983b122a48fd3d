//! Issue 25's holes (the second outside review), each pinned by a test that drives
//! real processes over loopback the way the attacker did. Each test names the item.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::blocking::Client as Http;
use serde_json::{Value, json};
use wasmesh_host::model::{HashHex, JobState};

use crate::Server;
use crate::security::{
    ACME, FakeNode, GLOBEX, NODE_KEY, OPS, get, keyed_coordinator, peak_rss, post, run_to_exit,
    tenants,
};
use crate::server::{WAIT, action, eventually, upload_test_guest};

/// A node of `coordinator` with its node key and `extra` flags.
fn fleet_node(coordinator: &Server, extra: &[&str]) -> Server {
    let mut args = vec!["--coordinator", &coordinator.url, "--node-key", NODE_KEY];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The status of `method path` with `key`.
fn status(server: &Server, method: reqwest::Method, path: &str, key: Option<&str>) -> u16 {
    let mut request = Http::new()
        .request(method, server.at(path))
        .header("content-type", "application/json")
        .body("{}");
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.send().unwrap().status().as_u16()
}

/// Regression (issue 25, item 1): a node started as the shipped manifests start it
/// (`--coordinator` and a node key, no client keys) served its client API, the
/// dashboard, `/metrics` and the operator's GC to anyone: a peer with no key uploaded
/// a worker and ran a job there.
#[test]
fn a_fleet_node_serves_no_client_api_to_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = keyed_coordinator(dir.path(), &[]);
    let node = fleet_node(&coordinator, &["--admin-key", OPS]);
    use reqwest::Method as M;
    assert_eq!(status(&node, M::GET, "/health", None), 200);
    for (method, path) in [
        (M::POST, "/compute/workers"),
        (M::POST, "/compute/jobs"),
        (M::POST, "/cas/needs"),
        (M::GET, "/compute/sysinfo"),
        (M::GET, "/metrics"),
        (M::POST, "/compute/gc"),
        (M::GET, "/compute/events"),
    ] {
        assert_eq!(
            status(&node, method.clone(), path, None),
            401,
            "{method} {path}"
        );
        // The coordinator's tenant keys mean nothing on the node either.
        assert_eq!(status(&node, method, path, Some(ACME)), 401, "{path}");
    }
    let (code, _) = post(&node, "/ui/login", None, &json!({"key": ACME}));
    assert_eq!(code, 401, "no login into a fleet node");
    // Prometheus scrapes with the operator's key.
    assert_eq!(status(&node, M::GET, "/metrics", Some(OPS)), 200);

    // Nothing was run on it, and its slots were free for the coordinator's leases.
    let client = coordinator.client_with_key(ACME);
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(&action(&client, worker, &["echo"], Some(b"hi")), None, None)
        .unwrap();
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(result.state, JobState::Succeeded, "{result:?}");
}

/// Regression (issue 25, item 1, the configuration side): a node without keys on an
/// address other hosts reach started with only a warning.
#[test]
fn an_open_node_on_a_public_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let output = run_to_exit(&["node", "--listen", "0.0.0.0:0", "--data-dir", data], WAIT);
    assert!(!output.status.success());
    let said = crate::err(&output);
    assert!(
        said.contains("--insecure-no-auth") && said.contains("--api-key"),
        "{said}"
    );
}

/// The peak resident memory of `server` after `f`, less before.
fn growth(server: &Server, f: impl FnOnce()) -> u64 {
    let before = peak_rss(server.pid());
    f();
    peak_rss(server.pid()).saturating_sub(before)
}

/// Regression (issue 25, item 2): a 16 MiB `POST /ui/login` body grew the server by
/// 273 MiB before any key was checked (three at once: 610 MiB): every JSON body was
/// parsed into a `Value` tree first, within the 16 MiB JSON limit.
#[test]
fn a_login_body_is_bounded_and_parsed_into_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = keyed_coordinator(dir.path(), &[]);
    // Numbers in an array: the shape that costs a `Value` tree the most.
    let body: String = format!("{{\"key\": [{}0]}}", "0,".repeat(8 << 20));
    let grown = growth(&coordinator, || {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (url, body) = (coordinator.at("/ui/login"), body.clone());
                std::thread::spawn(move || {
                    let answer = Http::new()
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send();
                    // Refused before the body was read: the server may close early.
                    answer.map(|r| r.status().as_u16()).unwrap_or(413)
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), 413);
        }
    });
    assert!(grown < 32 << 20, "the server grew by {grown} bytes");

    // A duplicate field is refused (the typed parse), not resolved to the last one.
    let answer = Http::new()
        .post(coordinator.at("/ui/login"))
        .header("content-type", "application/json")
        .body(format!("{{\"key\": \"{ACME}\", \"key\": \"{OPS}\"}}"))
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
}

/// Reads from `stream` until the server closes it; how long that took.
fn closed_after(mut stream: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return started.elapsed();
            }
            Err(e) => panic!("the server kept the connection open past {within:?}: {e}"),
        }
    }
}

/// Descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Regression (issue 25, item 3): 1,040 idle or half-sent connections took every
/// descriptor (no header or idle timeout, no connection cap), and a tenant's request
/// then timed out.
#[test]
fn idle_and_half_sent_connections_cannot_shut_out_a_client() {
    let server = Server::start(&["--max-connections", "64", "--idle-timeout", "2s"]);
    let address = server.url.trim_start_matches("http://").to_string();
    let baseline = open_fds(server.pid());
    let mut held = Vec::new();
    for i in 0..300 {
        let mut stream = TcpStream::connect(&address).unwrap();
        if i % 2 == 0 {
            // Half a request head, never finished.
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        }
        held.push(stream);
    }
    // A client with a request to make gets through at once, and the server holds
    // at most its cap of connections.
    let started = Instant::now();
    let client = server.client();
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(&action(&client, worker, &["echo"], Some(b"x")), None, None)
        .unwrap();
    assert_eq!(client.wait(lsn, WAIT).unwrap().state, JobState::Succeeded);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let fds = open_fds(server.pid());
    assert!(
        fds <= baseline + 64 + 16,
        "{fds} descriptors open (baseline {baseline})"
    );
    drop(held);

    // A half-sent head, alone, is closed after the idle timeout.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let waited = closed_after(stream, Duration::from_secs(20));
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after {waited:?}"
    );
    // And so is a connection idle after its answer.
    let mut stream = TcpStream::connect(&address).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 16];
    stream.read_exact(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    closed_after(stream, Duration::from_secs(20));
}

/// Starts `wasmesh args` with `envs` and expects it to refuse to start; its stderr.
fn refused(args: &[&str], envs: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut full: Vec<&str> = args.to_vec();
    full.extend([
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(&full)
        .envs(envs.iter().copied())
        .env("WASMESH_TEST_JOURNAL", "")
        .output()
        .unwrap();
    assert!(!output.status.success(), "`{}` started", full.join(" "));
    crate::err(&output)
}

/// Regression (issue 25, item 4): `WASMESH_NODE_KEY=""` passed the guard and an
/// empty `x-api-key` then registered as a node; `WASMESH_API_KEY="<key>,"` made the
/// empty key valid; `--api-key q` was accepted and found through `/ui/login` in 17
/// tries.
#[test]
fn every_key_source_gets_the_same_check_and_logins_are_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let said = refused(
        &["coordinator", "--tenants", &tenants],
        &[("WASMESH_NODE_KEY", "")],
    );
    assert!(
        said.contains("WASMESH_NODE_KEY") && said.contains("empty"),
        "{said}"
    );
    let said = refused(&["node"], &[("WASMESH_API_KEY", &format!("{ACME},"))]);
    assert!(
        said.contains("--api-key") && said.contains("empty"),
        "{said}"
    );
    let said = refused(&["node", "--api-key", "q"], &[]);
    assert!(said.contains("at least 16 characters"), "{said}");
    let said = refused(&["node", "--admin-key", "short-admin"], &[]);
    assert!(said.contains("at least 16 characters"), "{said}");
    let said = refused(
        &[
            "node",
            "--coordinator",
            "http://127.0.0.1:9",
            "--node-key",
            "nk",
        ],
        &[],
    );
    assert!(said.contains("--node-key") && said.contains("16"), "{said}");

    // Wrong keys, by login or on a route: after a burst, 429 with Retry-After, even
    // for the right key, until the peer earns a try back.
    let server = Server::start(&["--api-key", ACME]);
    let mut statuses = Vec::new();
    for i in 0..12 {
        let key = format!("wrong-key-{i:08}-0123456789");
        let answer = Http::new()
            .post(server.at("/ui/login"))
            .json(&json!({"key": key}))
            .send()
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429, 429]);
    let answer = Http::new()
        .get(server.at("/compute/sysinfo"))
        .header("x-api-key", ACME)
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 429);
    assert!(answer.headers().contains_key("retry-after"));
}

/// A login with these extra headers; the status and the Set-Cookie header.
fn login(server: &Server, key: &str, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let mut request = Http::new()
        .post(server.at("/ui/login"))
        .header("content-type", "application/json")
        .body(json!({"key": key}).to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().unwrap();
    let cookie = answer
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (answer.status().as_u16(), cookie)
}

/// The `name=value` part of a Set-Cookie header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

/// Regression (issue 25, item 5): a cross-site `text/plain` form POST to `/ui/login`
/// logged the victim into the attacker's tenant; the cookie had no `Secure` behind
/// https.
#[test]
fn cross_site_logins_and_cookie_posts_are_refused() {
    let server = Server::start(&["--api-key", ACME]);
    let host = server.url.trim_start_matches("http://").to_string();
    // A form can send text/plain without a preflight: refused.
    let answer = Http::new()
        .post(server.at("/ui/login"))
        .header("content-type", "text/plain")
        .body(json!({"key": ACME}).to_string())
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 415);
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "null")],
    ] {
        let (code, cookie) = login(&server, ACME, &headers);
        assert_eq!((code, cookie), (403, None), "{headers:?}");
    }
    // The dashboard's own page: accepted; Secure only when the page was https.
    let own = format!("http://{host}");
    let (code, cookie) = login(
        &server,
        ACME,
        &[("origin", &own), ("sec-fetch-site", "same-origin")],
    );
    assert_eq!(code, 200);
    let cookie = cookie.unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    let (_, secure) = login(&server, ACME, &[("x-forwarded-proto", "https")]);
    assert!(secure.unwrap().contains("; Secure"));

    // A cookie-authenticated POST from another site's page is refused; the same from
    // the dashboard, or with a key, goes through.
    let pair = cookie_pair(&cookie);
    let post_with = |headers: &[(&str, &str)]| {
        let mut request = Http::new()
            .post(server.at("/compute/queues/remote"))
            .header("cookie", &pair);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(post_with(&[("origin", "http://evil.example")]), 403);
    assert_eq!(post_with(&[("sec-fetch-site", "cross-site")]), 403);
    assert_eq!(post_with(&[("origin", &own)]), 201);
    let with_key = Http::new()
        .post(server.at("/compute/queues/remote"))
        .header("x-api-key", ACME)
        .header("origin", "http://evil.example")
        .send()
        .unwrap();
    assert_eq!(
        with_key.status().as_u16(),
        201,
        "a key is no ambient credential"
    );
}

/// Regression (issue 25, item 6): one tenant logging in 10,000 times evicted the
/// operator's dashboard session from the one global table.
#[test]
fn a_tenant_logging_in_again_and_again_evicts_only_its_own_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let server = Server::start(&["--tenants", &tenants]);
    let (_, operator) = login(&server, OPS, &[]);
    let operator = cookie_pair(&operator.unwrap());
    let (_, first) = login(&server, ACME, &[]);
    let first = cookie_pair(&first.unwrap());
    for _ in 0..40 {
        assert_eq!(login(&server, ACME, &[]).0, 200);
    }
    let who = |cookie: &str| -> Value {
        Http::new()
            .get(server.at("/ui/session"))
            .header("cookie", cookie)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert_eq!(
        who(&operator)["tenant"],
        "ops",
        "the operator is still logged in"
    );
    assert_eq!(
        who(&first)["tenant"],
        Value::Null,
        "acme's oldest session went"
    );
}

/// Regression (issue 25, item 15): `/metrics` named every tenant with its running
/// jobs and fair-share charge to any tenant key.
#[test]
fn metrics_are_for_the_operator_only() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = keyed_coordinator(dir.path(), &[]);
    let (code, body) = get(&coordinator, "/metrics", Some(ACME));
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let text = coordinator.metrics(Some(OPS));
    assert!(text.contains("wasmesh_"), "{text}");
}

/// Regression (issue 25, item 16): the key of node n1 (never registered, holding no
/// lease) read a tenant's private blob by hash, and answered 404 for an unknown one:
/// a content oracle.
#[test]
fn a_node_reads_only_blobs_of_leases_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("nodes.toml");
    std::fs::write(&keys, "n1 = \"key-of-node-one-0001\"\n").unwrap();
    let coordinator = keyed_coordinator(dir.path(), &["--node-keys", keys.to_str().unwrap()]);
    let client = coordinator.client_with_key(ACME);
    let secret = client.put_blob(b"acme's private bytes".to_vec()).unwrap();
    let unknown = HashHex::of(b"nobody stored this");
    let fetch = |hash: &HashHex, node: &str, key: &str| {
        let answer = Http::new()
            .get(coordinator.at(&format!("/api/v1/cluster/blobs/{hash}?node={node}")))
            .header("x-api-key", key)
            .send()
            .unwrap();
        let code = answer.status().as_u16();
        (code, answer.json::<Value>().unwrap_or(Value::Null))
    };
    let (code, known) = fetch(&secret, "n1", "key-of-node-one-0001");
    let (unknown_code, _) = fetch(&unknown, "n1", "key-of-node-one-0001");
    assert_eq!((code, unknown_code), (404, 404), "{known}");
    assert_eq!(fetch(&secret, "n2", "key-of-node-one-0001").0, 403);

    // A node holding a lease reads what the lease needs, and nothing else.
    let node = FakeNode::join(&coordinator, "n2");
    let worker = upload_test_guest(&client);
    client
        .submit(&action(&client, worker, &["echo"], None), None, None)
        .unwrap();
    let lease = node.lease();
    let module: HashHex = lease["worker"]["module"].as_str().unwrap().parse().unwrap();
    assert_eq!(fetch(&module, "n2", NODE_KEY).0, 200);
    assert_eq!(fetch(&secret, "n2", NODE_KEY).0, 404);
    assert_eq!(fetch(&module, "n1", "key-of-node-one-0001").0, 404);
}

/// Regression (issue 25, item 17): a tenants-file customer named `operator` (or
/// `default`) shared the namespace of the `--admin-key` (or `--api-key`) principal
/// and read its blobs.
#[test]
fn reserved_tenant_names_are_refused_naming_the_line() {
    for (name, line) in [("operator", 2), ("default", 2), ("defaults", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.toml");
        std::fs::write(
            &path,
            format!("acme = [\"{ACME}\"]\n{name} = [\"{GLOBEX}\"]\n"),
        )
        .unwrap();
        let said = refused(&["node", "--tenants", path.to_str().unwrap()], &[]);
        assert!(
            said.contains(&format!("tenants.toml:{line}:")) && said.contains("reserved"),
            "{name}: {said}"
        );
    }
}

/// Regression (issue 25, item 8): with `max_queued = 2`, 12 cancelled jobs were
/// rescheduled and all 12 queued: a reschedule skipped every quota.
#[test]
fn a_reschedule_is_admitted_as_a_submission_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!("acme = {{ keys = [\"{ACME}\"], max_queued = 2 }}\n"),
    )
    .unwrap();
    let server = Server::start(&["--slots", "1", "--tenants", path.to_str().unwrap()]);
    let client = server.client_with_key(ACME);
    let worker = upload_test_guest(&client);
    let mut cancelled = Vec::new();
    for i in 0..4 {
        let lsn = client
            .submit(
                &action(&client, worker, &["sleep", &format!("6000{i}")], None),
                None,
                None,
            )
            .unwrap();
        client
            .call(
                reqwest::Method::POST,
                &format!("/compute/jobs/{lsn}/cancel"),
                None,
            )
            .unwrap();
        cancelled.push(lsn);
    }
    for &lsn in &cancelled {
        eventually(WAIT, || {
            (crate::server::job_state(&client, lsn) == "cancelled").then_some(())
        });
    }
    let mut outcomes = Vec::new();
    for lsn in &cancelled {
        let answer = client.call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{lsn}/reschedule"),
            None,
        );
        outcomes.push(match answer {
            Ok(_) => "queued".to_string(),
            Err(e) => crate::server::api_code(e).1,
        });
    }
    assert_eq!(
        outcomes,
        ["queued", "queued", "quota_exceeded", "quota_exceeded"],
        "two fit in max_queued = 2"
    );
}

/// Regression (issue 25, item 19): since a job's deliveries were written in its
/// result's transaction, a job answered from the result cache sent no
/// `job.succeeded`, which docs/api.md promises for cache answers too.
#[test]
fn a_cache_answer_sends_its_webhook() {
    let server = Server::start(&["--webhook-allow-private"]);
    let client = server.client();
    let (address, seen) = crate::security::counting_listener();
    let url = format!("http://{address}/hook");
    let created = client
        .call(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(&json!({"url": url, "events": ["job.succeeded"]})),
        )
        .unwrap();
    let webhook = created["id"].as_str().unwrap().to_string();
    let worker = upload_test_guest(&client);
    let job = action(&client, worker, &["echo"], Some(b"cached"));
    let first = client.submit(&job, None, None).unwrap();
    client.wait(first, WAIT).unwrap();
    let second = client.submit(&job, None, None).unwrap();
    let answer = client.wait(second, WAIT).unwrap();
    assert!(answer.cached, "{answer:?}");
    let deliveries = eventually(WAIT, || {
        let list = client
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/webhooks/{webhook}/deliveries"),
                None,
            )
            .unwrap();
        let lsns: Vec<u64> = list["deliveries"]
            .as_array()?
            .iter()
            .filter(|d| d["state"] == "delivered")
            .filter_map(|d| d["payload"]["data"]["lsn"].as_u64())
            .collect();
        (lsns.len() >= 2).then_some(lsns)
    });
    assert!(deliveries.contains(&second), "{deliveries:?}");
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

/// Regression (issue 25, item 21): a coordinator that committed a lease and died
/// before its node received it left the job running for good: the node never
/// mentions a lease it never got, and the survivor adopted only leases nodes renew.
/// The hook drops the first hand-out after its commit; the job must run again once a
/// lease period passes without its node renewing it (on a shared journal when the
/// suite runs on PostgreSQL).
#[test]
fn a_lease_its_node_never_received_is_requeued() {
    let shared = std::env::var("WASMESH_TEST_JOURNAL").is_ok_and(|v| !v.is_empty());
    let mut args = vec!["--heartbeat-interval", "100ms", "--lease", "1s"];
    if shared {
        args.push("--shared");
    }
    let coordinator = Server::coordinator_env(&args, &[("WASMESH_TEST_DROP_HANDOUTS", "1")]);
    let _node = Server::start(&["--coordinator", &coordinator.url, "--slots", "2"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let lsns: Vec<u64> = (0..3)
        .map(|i| {
            let input = format!("job {i}");
            client
                .submit(
                    &action(&client, worker, &["echo"], Some(input.as_bytes())),
                    None,
                    None,
                )
                .unwrap()
        })
        .collect();
    let mut attempts = Vec::new();
    for lsn in lsns {
        let result = client.wait(lsn, WAIT).unwrap();
        assert_eq!(result.state, JobState::Succeeded, "{result:?}");
        attempts.push(result.attempts);
    }
    attempts.sort();
    assert_eq!(
        attempts,
        [1, 1, 2],
        "the dropped lease's job ran again, once"
    );
}

/// Sends a request head for `PUT /cas/{hash}` declaring `length` bytes, and `first`
/// bytes of the body; the connection stays open (a slow upload).
fn slow_put(server: &Server, key: &str, hash: &HashHex, length: u64, first: usize) -> TcpStream {
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "PUT /cas/{hash} HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&vec![b'x'; first]).unwrap();
    stream
}

/// What the server answers on `stream` (within 20 s).
fn answer_of(mut stream: TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The bytes under `dir`, recursively.
fn disk_use(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_use(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// Regression (issue 25, item 9): a tenant with a 1 MiB quota held 360 MiB at once:
/// two slow `PUT /cas` in staging (checked against the quota only once complete),
/// plus a keyed `POST /cas/needs` spooled up to the 1 GiB request limit.
#[test]
fn uploads_are_admitted_against_the_quota_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "acme = {{ keys = [\"{ACME}\"], max_store_bytes = 1048576 }}\nglobex = [\"{GLOBEX}\"]\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--tenants", path.to_str().unwrap()]);
    let hash = HashHex::of(b"never sent whole");
    let put = |key: &str, body: reqwest::blocking::Body| {
        let answer = Http::new()
            .put(server.at(&format!("/cas/{hash}")))
            .header("x-api-key", key)
            .body(body)
            .send();
        match answer {
            Ok(answer) => {
                let status = answer.status().as_u16();
                (status, answer.json::<Value>().unwrap_or(Value::Null))
            }
            // Refused before the body was read: the server may close early.
            Err(_) => (0, Value::Null),
        }
    };
    // A declared length above what the quota leaves: refused before a byte is sent.
    let answer = answer_of(slow_put(&server, ACME, &hash, 2 << 20, 0));
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("quota_exceeded"),
        "{answer}"
    );
    // An undeclared one (chunked) is stopped once it passes it.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![0u8; 64 << 10]));
    let stream = reqwest::blocking::Body::new(ChunkReader::new(chunks));
    let (status, body) = put(ACME, stream);
    assert!(status == 403 || status == 0, "{status} {body}");

    // Two slow uploads of 700 KiB: whichever is admitted first reserves its bytes,
    // and the other is refused at once (before, both were read, and each checked
    // alone only once complete).
    let (tx, rx) = std::sync::mpsc::channel();
    let mut streams = Vec::new();
    for which in 0..2 {
        let stream = slow_put(&server, ACME, &hash, 700 << 10, 1024);
        let mut reader = stream.try_clone().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut answer = String::new();
            reader.read_to_string(&mut answer).ok();
            let _ = tx.send((which, answer));
        });
        streams.push(stream);
    }
    let (refused, answer) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        rx.try_recv().is_err(),
        "the other upload is still being read"
    );
    for stream in &streams {
        // (The readers hold clones: close the sockets themselves.)
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    let (other, _) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_ne!(refused, other);

    // At most 8 uploads of one tenant at once: of 9 slow ones, one is refused at
    // once and 8 are read; another tenant is not held up.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut held = Vec::new();
    for _ in 0..9 {
        let stream = slow_put(&server, GLOBEX, &hash, 100, 0);
        let reader = stream.try_clone().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(answer_of(reader));
        });
        held.push(stream);
    }
    let answer = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert_eq!(
        put(ACME, b"acme's own".to_vec().into()).0,
        400,
        "a hash mismatch, read"
    );
    assert!(rx.try_recv().is_err(), "the other 8 are still being read");
    for stream in &held {
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    // A keyed JSON body is spooled within the JSON limit, not the request limit.
    let answer = Http::new()
        .post(server.at("/cas/needs"))
        .header("x-api-key", ACME)
        .header("idempotency-key", "big-needs")
        .body(vec![b' '; 17 << 20])
        .send();
    if let Ok(answer) = answer {
        assert_eq!(answer.status().as_u16(), 413);
    }
    assert!(
        disk_use(&server.data_dir) < 8 << 20,
        "{} bytes on disk",
        disk_use(&server.data_dir)
    );
}

/// A blocking reader over chunks (a body of unknown length).
struct ChunkReader<I> {
    chunks: I,
    current: std::io::Cursor<Vec<u8>>,
}

impl<I> ChunkReader<I> {
    fn new(chunks: I) -> Self {
        Self {
            chunks,
            current: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl<I: Iterator<Item = std::io::Result<Vec<u8>>>> Read for ChunkReader<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            match self.chunks.next() {
                Some(chunk) => self.current = std::io::Cursor::new(chunk?),
                None => return Ok(0),
            }
        }
    }
}

/// Regression (issue 25, item 7): one job made 21 attempts and burned 378 M fuel
/// against a 30 M `max_fuel_per_hour`, and only its last attempt (18 M) was billed.
/// Every attempt is billed now, and no retry starts once the tenant is over its fuel.
#[test]
fn every_attempt_is_billed_and_no_retry_passes_the_fuel_quota() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!("acme = {{ keys = [\"{ACME}\"], max_fuel_per_hour = 12000000 }}\n"),
    )
    .unwrap();
    let server = Server::start(&["--slots", "1", "--tenants", path.to_str().unwrap()]);
    let client = server.client_with_key(ACME);
    let worker = upload_test_guest(&client);
    let too_many = client.call(
        reqwest::Method::POST,
        "/compute/queues",
        Some(&json!({"max_retries": 1000, "retry_guest_failures": true})),
    );
    assert_eq!(
        crate::server::api_code(too_many.unwrap_err()).0,
        400,
        "max_retries has a ceiling"
    );
    let queue = client
        .call(
            reqwest::Method::POST,
            "/compute/queues",
            Some(&json!({"max_retries": 20, "retry_guest_failures": true})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap();
    // Each attempt spins until its 5 M fuel run out (a guest failure, retried).
    let mut spin = action(&client, worker, &["spin"], None);
    spin["limits"] = json!({"fuel": 5_000_000});
    let lsn = client
        .submit(&spin, Some(&queue.to_string()), None)
        .unwrap();
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(result.state, JobState::Failed);
    assert_eq!(
        result.attempts, 3,
        "5 M, 10 M, then 15 M passes 12 M: {result:?}"
    );
    let message = result.message.clone().unwrap_or_default();
    assert!(message.contains("max_fuel_per_hour"), "{message}");
    let usage: Value = client
        .call(reqwest::Method::GET, "/compute/usage", None)
        .unwrap();
    let row = &usage["usage"][0];
    assert_eq!(
        (row["jobs"].as_u64(), row["attempts"].as_u64()),
        (Some(1), Some(3)),
        "{usage}"
    );
    assert!(
        row["fuel"].as_u64().unwrap() >= 14_000_000,
        "all three billed: {usage}"
    );
    // And the tenant is over it: a submission is refused.
    let refused = client.submit(&action(&client, worker, &["noop"], None), None, None);
    assert_eq!(
        crate::server::api_code(refused.unwrap_err()).1,
        "quota_exceeded"
    );
}

/// The value of a counter in a `/metrics` text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} not in {metrics}")) as u64
}

/// Regression (issue 25, item 14): 400 silent `GET /compute/queues/{token}/events`
/// streams on a queue of 10,000 jobs cost a whole core: each stream recounted the
/// queue every 250 ms on the async workers, and a tenant could open any number.
#[test]
fn event_streams_are_capped_and_share_one_count_of_their_queue() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let server = Server::start(&["--slots", "1", "--tenants", &tenants]);
    let client = server.client_with_key(ACME);
    let worker = upload_test_guest(&client);
    let token = client
        .call(reqwest::Method::POST, "/compute/queues/remote", None)
        .unwrap()["queue_token"]
        .as_str()
        .unwrap()
        .to_string();
    let jobs: Vec<Value> = (0..500)
        .map(|i| action(&client, worker, &["sleep", &format!("6000{i}")], None))
        .collect();
    client.submit_batch(&jobs, Some(&token)).unwrap();
    let before = counter(&server.metrics(Some(OPS)), "wasmesh_queue_counts_total");
    // 32 streams, each waiting for its first event: the queue is counted about once.
    let open = |key: &str, path: &str| {
        let address = server.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\n\r\n"
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        (String::from_utf8_lossy(&head).into_owned(), stream)
    };
    let path = format!("/compute/queues/{token}/events");
    let mut streams = Vec::new();
    for _ in 0..32 {
        let (head, mut stream) = open(ACME, &path);
        assert_eq!(head, "HTTP/1.1 200");
        // Its first event (the status now) has come.
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("event: progress") {
            stream.read_exact(&mut byte).unwrap();
            seen.push(byte[0]);
        }
        streams.push(stream);
    }
    let counted = counter(&server.metrics(Some(OPS)), "wasmesh_queue_counts_total") - before;
    assert!(counted <= 8, "32 streams counted the queue {counted} times");
    // The 33rd stream of the tenant (queue streams and the change feed together) is
    // refused; another tenant's is not.
    assert_eq!(open(ACME, "/compute/events").0, "HTTP/1.1 429");
    assert_eq!(open(GLOBEX, "/compute/events").0, "HTTP/1.1 200");
    // A stream that ends gives its place back.
    let closed = streams.pop().unwrap();
    let _ = closed.shutdown(std::net::Shutdown::Both);
    drop(closed);
    eventually(WAIT, || {
        (open(ACME, "/compute/events").0 == "HTTP/1.1 200").then_some(())
    });
}

/// A loopback listener that accepts connections and never answers; how many it holds.
fn tarpit() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = count.clone();
    std::thread::spawn(move || {
        let mut streams = Vec::new();
        for stream in listener.incoming().flatten() {
            held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            streams.push(stream);
        }
    });
    (address, count)
}

/// The deliveries of webhook `id`.
fn deliveries_of(client: &wasmesh_host::client::Client, id: &str) -> Vec<Value> {
    client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries"),
            None,
        )
        .unwrap()["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Regression (issue 25, item 13): the server had 8 sending slots for all tenants and
/// a 10 s timeout an attempt: a tenant with 24 webhooks to a tarpit delayed another
/// tenant's delivery by 30 s.
#[test]
fn one_tenants_slow_endpoints_cannot_hold_up_anothers_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let server = Server::start(&["--tenants", &tenants, "--webhook-allow-private"]);
    let (a, b) = (server.client_with_key(ACME), server.client_with_key(GLOBEX));
    let (pit, held) = tarpit();
    let create = |client: &wasmesh_host::client::Client, url: &str| {
        client.call(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(&json!({"url": url, "events": ["job.succeeded"]})),
        )
    };
    let mut slow = Vec::new();
    for i in 0..16 {
        let hook = create(&a, &format!("http://{pit}/{i}")).unwrap();
        slow.push(hook["id"].as_str().unwrap().to_string());
    }
    let refused = create(&a, &format!("http://{pit}/17")).unwrap_err();
    assert_eq!(
        crate::server::api_code(refused),
        (403, "quota_exceeded".into())
    );
    let (receiver, _) = crate::security::counting_listener();
    let fast = create(&b, &format!("http://{receiver}/hook")).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Tenant A's 16 deliveries go to the tarpit: 2 at a time, never more.
    let worker = upload_test_guest(&a);
    let lsn = a
        .submit(&action(&a, worker, &["noop"], None), None, None)
        .unwrap();
    a.wait(lsn, WAIT).unwrap();
    eventually(WAIT, || {
        (held.load(std::sync::atomic::Ordering::SeqCst) >= 2).then_some(())
    });
    // Tenant B's is delivered while A's first attempts still hang (each ends only
    // after 10 s): before, A's filled all 8 slots and B's waited for them.
    let worker = upload_test_guest(&b);
    let lsn = b
        .submit(&action(&b, worker, &["noop"], None), None, None)
        .unwrap();
    b.wait(lsn, WAIT).unwrap();
    eventually(WAIT, || {
        let log = deliveries_of(&b, &fast);
        (log.first()?["state"] == "delivered").then_some(())
    });
    let ended: Vec<Value> = slow
        .iter()
        .flat_map(|id| deliveries_of(&a, id))
        .filter(|d| d["attempts"].as_u64() != Some(0))
        .collect();
    assert!(
        ended.is_empty(),
        "A's attempts ended before B's delivery: {ended:?}"
    );
    assert_eq!(
        held.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "2 of A's at a time"
    );
}

/// Regression (issue 25, item 18): a tenant at `max_running = 1` queued 1,000 jobs
/// plus one job requiring a label no provisioner offers; it ran one at a time, yet
/// the autoscaler asked for 18 nodes. It counts only work a node it adds could take.
#[test]
fn the_autoscaler_counts_only_work_a_new_node_could_take() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "acme = {{ keys = [\"{ACME}\"], max_running = 1 }}\nglobex = [\"{GLOBEX}\"]\n\
             ops = {{ keys = [\"{OPS}\"], role = \"operator\" }}\n"
        ),
    )
    .unwrap();
    let coordinator = Server::coordinator(&[
        "--tenants",
        path.to_str().unwrap(),
        "--node-key",
        NODE_KEY,
        "--max-nodes",
        "20",
        "--node-slots",
        "1",
        "--target-wait",
        "1s",
        "--autoscale-interval",
        "50ms",
    ]);
    // A job whose worker requires a label no node the autoscaler adds carries,
    // scheduled first, so every look that sees the batch below sees it too.
    let globex = coordinator.client_with_key(GLOBEX);
    let wasm = wasmesh_test_support::guest_bytes(wasmesh_test_support::TEST_GUEST);
    let module = HashHex::of(&wasm);
    let gpu = globex
        .upload_worker(
            &json!({"name": "gpu", "module": module, "requires": {"gpu": "a100"}}),
            &[(module, &wasm)],
        )
        .unwrap()
        .worker;
    globex
        .submit(&action(&globex, gpu, &["noop"], None), None, None)
        .unwrap();
    let acme = coordinator.client_with_key(ACME);
    let worker = upload_test_guest(&acme);
    let jobs: Vec<Value> = (0..200)
        .map(|i| action(&acme, worker, &["sleep", &format!("1{i}")], None))
        .collect();
    acme.submit_batch(&jobs, None).unwrap();
    let status = eventually(WAIT, || {
        let status = coordinator
            .client_with_key(OPS)
            .call(reqwest::Method::GET, "/api/v1/cluster/autoscaler", None)
            .unwrap();
        (status["signal"]["queued_jobs"].as_u64()? > 0).then_some(status)
    });
    assert_eq!(status["signal"]["queued_jobs"], 1, "{status}");
    assert!(status["desired_nodes"].as_u64().unwrap() <= 1, "{status}");
}

/// Regression (issue 25, item 12): recordings were hard links or copies outside GC
/// and quotas, no route deleted them (15 MiB stayed pinned under a 4 MiB quota), and
/// `record/stop` returned the server's absolute path.
#[test]
fn recordings_count_against_the_quota_and_can_be_deleted() {
    let module = wasmesh_test_support::guest_bytes(wasmesh_test_support::TEST_GUEST).len() as u64;
    let quota = 2 * module + (1536 << 10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "acme = {{ keys = [\"{ACME}\"], max_store_bytes = {quota} }}\nglobex = [\"{GLOBEX}\"]\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--tenants", path.to_str().unwrap()]);
    let client = server.client_with_key(ACME);
    let worker = upload_test_guest(&client);
    let started = client
        .call(reqwest::Method::POST, "/compute/record/start", None)
        .unwrap();
    let id = started["recording"].as_str().unwrap().to_string();
    let input = vec![7u8; 700 << 10];
    let lsn = client
        .submit(
            &action(&client, worker, &["noop"], Some(&input)),
            None,
            None,
        )
        .unwrap();
    client.wait(lsn, WAIT).unwrap();
    let stopped = client
        .call(reqwest::Method::POST, "/compute/record/stop", None)
        .unwrap();
    assert_eq!(stopped["actions"], 1);
    assert!(stopped.get("path").is_none(), "no server path: {stopped}");
    // The recording holds the module and the input again: 300 KiB more passes the
    // quota (it would not without the recording).
    let refused = client.put_blob(vec![3u8; 300 << 10]).unwrap_err();
    assert_eq!(crate::server::api_code(refused).1, "quota_exceeded");
    // Another tenant cannot delete it; its owner can, and the room comes back.
    let other = server.client_with_key(GLOBEX);
    let path = format!("/compute/record/{id}");
    let err = other
        .call(reqwest::Method::DELETE, &path, None)
        .unwrap_err();
    assert_eq!(crate::server::api_code(err).0, 404);
    client.call(reqwest::Method::DELETE, &path, None).unwrap();
    assert!(!server.data_dir.join("recordings").join(&id).exists());
    client.put_blob(vec![3u8; 300 << 10]).unwrap();

    // Recordings are kept as long as results are.
    let short = Server::start(&["--result-retention", "1s"]);
    let client = short.client();
    let worker = upload_test_guest(&client);
    let id = client
        .call(reqwest::Method::POST, "/compute/record/start", None)
        .unwrap()["recording"]
        .as_str()
        .unwrap()
        .to_string();
    let lsn = client
        .submit(&action(&client, worker, &["noop"], None), None, None)
        .unwrap();
    client.wait(lsn, WAIT).unwrap();
    client
        .call(reqwest::Method::POST, "/compute/record/stop", None)
        .unwrap();
    let recording = short.data_dir.join("recordings").join(&id);
    assert!(recording.exists());
    eventually(WAIT, || (!recording.exists()).then_some(()));
}

/// The size in bytes of a SQLite journal and its log.
fn journal_bytes(data_dir: &std::path::Path) -> u64 {
    ["wasmesh.db", "wasmesh.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(data_dir.join(name)).ok())
        .map(|meta| meta.len())
        .sum()
}

/// Regression (issue 25, item 10): three jobs each emitting 1,024 events of 60 KiB
/// grew the shared journal by 240 MiB, and one `GET` answered 60 MiB: events lived in
/// the result row, outside every quota. A run's events are bounded in total now, and
/// beyond a small inline cap they are a blob of the tenant's, like its output.
#[test]
fn events_are_bounded_kept_out_of_the_journal_and_counted_as_the_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tenants.toml");
    let module = wasmesh_test_support::guest_bytes(wasmesh_test_support::TEST_GUEST).len() as u64;
    let quota = module + (1536 << 10);
    std::fs::write(
        &path,
        format!("acme = {{ keys = [\"{ACME}\"], max_store_bytes = {quota} }}\n"),
    )
    .unwrap();
    // (The journal's size is read from its SQLite file.)
    let server = Server::start_env(
        &["--tenants", path.to_str().unwrap()],
        &[("WASMESH_TEST_JOURNAL", "")],
    );
    let client = server.client_with_key(ACME);
    let worker = upload_test_guest(&client);
    let before = journal_bytes(&server.data_dir);
    let lsn = client
        .submit(
            &action(&client, worker, &["emit-big", "1024", "60000"], None),
            None,
            None,
        )
        .unwrap();
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(
        result.outcome, "output_exceeded",
        "a run's events are bounded"
    );
    assert!(
        result.events.is_empty(),
        "not inline: {} events",
        result.events.len()
    );
    let blob = result.events_blob.expect("the events are a blob");
    let events: Vec<Value> = serde_json::from_slice(&client.blob(&blob).unwrap()).unwrap();
    assert!(
        !events.is_empty() && events.len() < 1024,
        "{} events",
        events.len()
    );
    let answer = Http::new()
        .get(server.at(&format!("/compute/jobs/{lsn}")))
        .header("x-api-key", ACME)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(
        answer.len() < 64 << 10,
        "a result of {} bytes",
        answer.len()
    );
    let grown = journal_bytes(&server.data_dir).saturating_sub(before);
    assert!(grown < 4 << 20, "the journal grew by {grown} bytes");
    // The events count against the tenant's store: 1 MiB more does not fit.
    let refused = client.put_blob(vec![5u8; 1 << 20]).unwrap_err();
    assert_eq!(crate::server::api_code(refused).1, "quota_exceeded");
}

/// Regression (issue 25, item 11): a self-routed handler emitting 1,000 events of
/// 16 KiB a run: the inject budget stopped routing, but the runs it had allowed each
/// stored 16 MiB of events (1 GiB on disk after one request). The bytes a chain's
/// runs produce are budgeted too.
#[test]
fn one_inject_stops_once_its_runs_have_produced_their_budget() {
    let coordinator = Server::coordinator(&[
        "--heartbeat-interval",
        "100ms",
        "--inject-max-bytes",
        "64MiB",
        "--inject-max-produced-bytes",
        "3MiB",
    ]);
    // Each run emits 60 events of 16 KB (under a run's 1 MiB): about 0.97 MB.
    let (_, answer) = crate::security::inject_into_a_flood(&coordinator, "fanout 60 16000");
    let chain = answer["chain"].as_array().unwrap();
    let runs = chain.iter().filter(|c| c.get("lsn").is_some()).count();
    assert!(runs <= 4, "{runs} runs after 3 MiB were produced");
    assert_eq!(chain.last().unwrap()["dropped"], "budget", "{answer}");
}
