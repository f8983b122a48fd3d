//! Queues: lifecycle, counts, drain, cancel, remote tokens, retries, the loopback guard.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;
use wasmesh_host::api::{AppState, app, auth::Auth};
use wasmesh_host::engine::{Engine, NodeConfig};

use crate::Server;
use crate::server::{WAIT, action, api_code, submit, upload_test_guest};

#[test]
fn a_queue_counts_its_jobs_and_completes() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let created = client
        .call(
            reqwest::Method::POST,
            "/compute/queues",
            Some(&json!({"name": "session"})),
        )
        .unwrap();
    let q = created["queue_id"].as_u64().unwrap().to_string();
    let ok: Vec<u64> = (0..3)
        .map(|_| {
            client
                .submit(&action(&client, worker, &["noop"], None), Some(&q), None)
                .unwrap()
        })
        .collect();
    let bad = client
        .submit(
            &action(&client, worker, &["exit", "5"], None),
            Some(&q),
            None,
        )
        .unwrap();
    let status = client.wait_queue(&q, WAIT, |_| {}).unwrap();
    assert_eq!(status["state"], "active");
    assert_eq!(
        status["counts"],
        json!({"queued": 0, "running": 0, "succeeded": 3, "failed": 1, "cancelled": 0})
    );
    assert_eq!(status["is_complete"], true);
    let mut completed: Vec<u64> = ok.clone();
    completed.push(bad);
    let listed = client
        .call(
            reqwest::Method::GET,
            &format!("/compute/queues/{q}/completed"),
            None,
        )
        .unwrap();
    assert_eq!(listed["completed"], json!(completed));
    let scoped = client
        .call(
            reqwest::Method::GET,
            &format!("/compute/queues/{q}/jobs/{}", ok[0]),
            None,
        )
        .unwrap();
    assert_eq!(scoped["state"], "succeeded");
    let outside = submit(&client, worker, &["args", "outside"]);
    let err = client
        .call(
            reqwest::Method::GET,
            &format!("/compute/queues/{q}/jobs/{outside}"),
            None,
        )
        .unwrap_err();
    assert_eq!(api_code(err).0, 404);
}

#[test]
fn drain_refuses_new_jobs_and_cancel_stops_the_rest() {
    let server = Server::start(&["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let q = client
        .call(reqwest::Method::POST, "/compute/queues", None)
        .unwrap()["queue_id"]
        .to_string();
    let running = client
        .submit(
            &action(&client, worker, &["sleep", "60000"], None),
            Some(&q),
            None,
        )
        .unwrap();
    let waiting = client
        .submit(&action(&client, worker, &["noop"], None), Some(&q), None)
        .unwrap();
    let drained = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/queues/{q}/drain"),
            None,
        )
        .unwrap();
    assert_eq!(drained["state"], "draining");
    let err = client
        .submit(&action(&client, worker, &["noop"], None), Some(&q), None)
        .unwrap_err();
    assert_eq!(api_code(err), (409, "queue_not_active".into()));
    client
        .call(
            reqwest::Method::DELETE,
            &format!("/compute/queues/{q}"),
            None,
        )
        .unwrap();
    let status = client.wait_queue(&q, WAIT, |_| {}).unwrap();
    assert_eq!(status["state"], "cancelled");
    assert_eq!(status["counts"]["cancelled"], 2);
    assert_eq!(client.wait(running, WAIT).unwrap().outcome, "cancelled");
    assert_eq!(client.wait(waiting, WAIT).unwrap().attempts, 0);
}

#[test]
fn remote_queues_use_unguessable_tokens() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let created = client
        .call(
            reqwest::Method::POST,
            "/compute/queues/remote",
            Some(&json!({"priority": 2})),
        )
        .unwrap();
    let token = created["queue_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 24);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let other = client
        .call(reqwest::Method::POST, "/compute/queues/remote", None)
        .unwrap();
    assert_ne!(other["queue_token"], created["queue_token"]);
    let lsn = client
        .submit(
            &action(&client, worker, &["noop"], None),
            Some(&token),
            None,
        )
        .unwrap();
    client.wait(lsn, WAIT).unwrap();
    assert_eq!(
        client.queue(&token).unwrap()["queue_id"],
        created["queue_id"]
    );
    let wrong = format!(
        "{}{}",
        &token[..23],
        if token.ends_with('0') { '1' } else { '0' }
    );
    assert_eq!(api_code(client.queue(&wrong).unwrap_err()).0, 404);
}

#[test]
fn guest_failures_are_retried_only_when_the_queue_asks() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let retrying = client
        .call(
            reqwest::Method::POST,
            "/compute/queues",
            Some(&json!({"max_retries": 2, "retry_guest_failures": true})),
        )
        .unwrap()["queue_id"]
        .to_string();
    let plain = client
        .call(reqwest::Method::POST, "/compute/queues", None)
        .unwrap()["queue_id"]
        .to_string();
    let failing = action(&client, worker, &["exit", "1"], None);
    let retried = client
        .wait(
            client.submit(&failing, Some(&retrying), None).unwrap(),
            WAIT,
        )
        .unwrap();
    assert_eq!((retried.state.as_str(), retried.attempts), ("failed", 3));
    let once = client
        .wait(client.submit(&failing, Some(&plain), None).unwrap(), WAIT)
        .unwrap();
    assert_eq!(once.attempts, 1);
}

#[test]
fn idle_queues_expire() {
    let server = Server::start(&["--queue-idle", "300ms"]);
    let client = server.client();
    let q = client
        .call(reqwest::Method::POST, "/compute/queues", None)
        .unwrap()["queue_id"]
        .to_string();
    crate::server::eventually(WAIT, || {
        (client.queue(&q).unwrap()["state"] == "cancelled").then_some(())
    });
}

async fn call(app: axum::Router, method: &str, uri: &str) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn local_queues_and_integer_ids_are_for_loopback_callers_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(NodeConfig::new(dir.path().to_path_buf())).unwrap();
    let state = AppState::new(engine, std::sync::Arc::new(Auth::open()));
    let remote: SocketAddr = "203.0.113.9:4000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let from_remote = app(state.clone()).layer(MockConnectInfo(remote));
    let from_local = app(state).layer(MockConnectInfo(local));

    let (status, body) = call(from_remote.clone(), "POST", "/compute/queues").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("remote_forbidden"))
    );
    let (status, body) = call(from_local.clone(), "POST", "/compute/queues").await;
    assert_eq!(status, 201);
    let id = body["queue_id"].as_u64().unwrap();
    let (status, _) = call(from_remote.clone(), "GET", &format!("/compute/queues/{id}")).await;
    assert_eq!(status, 403);
    let (status, _) = call(from_local, "GET", &format!("/compute/queues/{id}")).await;
    assert_eq!(status, 200);

    let (status, body) = call(from_remote.clone(), "POST", "/compute/queues/remote").await;
    assert_eq!(status, 201);
    let token = body["queue_token"].as_str().unwrap();
    let (status, body) = call(from_remote, "GET", &format!("/compute/queues/{token}")).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("active")));
}

#[test]
fn host_side_failures_are_retried_automatically_up_to_the_limit() {
    let server = Server::start(&["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    // An input whose file goes away after the job was accepted (while a blocker holds
    // the slot): reading it fails on the host, which is retried (unlike a guest
    // failure in a plain queue).
    let input = client.ensure_blobs(&[b"vanishing input"]).unwrap()[0];
    let blocker = crate::server::start_blocker(&client, worker);
    let q = client
        .call(
            reqwest::Method::POST,
            "/compute/queues",
            Some(&json!({"max_retries": 1})),
        )
        .unwrap()["queue_id"]
        .to_string();
    let lsn = client
        .submit(
            &json!({"worker": worker, "input": input, "args": ["echo"]}),
            Some(&q),
            None,
        )
        .unwrap();
    let hex = input.to_string();
    std::fs::remove_file(
        server
            .data_dir
            .join("cas")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(&hex),
    )
    .unwrap();
    client.cancel(blocker).unwrap();
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!((result.state.as_str(), result.attempts), ("failed", 2));
    assert!(result.message.unwrap().starts_with("host error:"));
}
