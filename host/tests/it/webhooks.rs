//! Webhooks against a real receiver on loopback that checks every signature
//! independently: job and queue events with retries, deliveries that survive a
//! restart, an endpoint disabled after repeated failures, and node health events
//! from a coordinator.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use wasmesh_host::client::Client;

use crate::Server;
use crate::cluster::signal;
use crate::scheduling::{CLUSTER, node};
use crate::server::{WAIT, action, eventually, upload_test_guest};
use crate::tenants::two_tenants;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    /// The status it answered.
    answered: u16,
}

impl Hit {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

type Hits = Arc<Mutex<Vec<Hit>>>;

/// An HTTP endpoint on loopback that records every request and answers `status`.
pub(crate) struct Receiver {
    pub(crate) url: String,
    hits: Hits,
    status: Arc<AtomicU16>,
    _runtime: tokio::runtime::Runtime,
}

async fn receive(
    State((hits, status)): State<(Hits, Arc<AtomicU16>)>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let answered = status.load(Ordering::SeqCst);
    hits.lock().unwrap().push(Hit {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

impl Receiver {
    pub(crate) fn start(status: u16) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hits: Hits = Arc::default();
        let status = Arc::new(AtomicU16::new(status));
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state((hits.clone(), status.clone()));
        runtime.spawn(async move { axum::serve(listener, router).await });
        Self {
            url,
            hits,
            status,
            _runtime: runtime,
        }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Accepted deliveries of `event`.
    pub(crate) fn delivered(&self, event: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.answered < 300 && h.json()["type"] == json!(event))
            .collect()
    }
}

/// Checks a Standard Webhooks signature the way a receiver would, written here
/// without the server's code.
fn verifies(secret: &str, hit: &Hit) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", hit.id, hit.timestamp, hit.body).as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    hit.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

pub(crate) fn create_webhook(client: &Client, url: &str, events: &[&str]) -> Value {
    client
        .call(
            reqwest::Method::POST,
            "/api/v1/webhooks",
            Some(&json!({"url": url, "events": events})),
        )
        .unwrap()
}

fn deliveries(client: &Client, id: &str) -> Vec<Value> {
    let body = client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries"),
            None,
        )
        .unwrap();
    body["deliveries"].as_array().unwrap().clone()
}

#[test]
fn job_and_queue_events_are_signed_retried_and_logged() {
    let receiver = Receiver::start(500);
    let dir = tempfile::tempdir().unwrap();
    let tenants = two_tenants(dir.path());
    let server = Server::start(&[
        "--tenants",
        tenants.to_str().unwrap(),
        "--webhook-retry-base",
        "20ms",
        "--webhook-attempts",
        "50",
        "--webhook-allow-private",
    ]);
    let acme = server.client_with_key("acme-key-0123456789");
    let globex = server.client_with_key("globex-key-0123456789");

    // Bad requests are 400s with the contract's error shape.
    for bad in [
        json!({"url": "ftp://x", "events": ["job.failed"]}),
        json!({"url": receiver.url, "events": ["job.exploded"]}),
        json!({"url": receiver.url}),
    ] {
        let (status, code) = crate::server::api_code(
            acme.call(reqwest::Method::POST, "/api/v1/webhooks", Some(&bad))
                .unwrap_err(),
        );
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{bad}");
    }
    // Without --webhook-allow-private a server refuses endpoints on its own network.
    let strict = Server::start(&[]);
    let (status, code) = crate::server::api_code(
        strict
            .client()
            .call(
                reqwest::Method::POST,
                "/api/v1/webhooks",
                Some(&json!({"url": receiver.url, "events": ["job.failed"]})),
            )
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (400, "invalid_request"));
    drop(strict);

    // Created with an Idempotency-Key: a retried request gets the same webhook back.
    let post = || {
        server
            .http()
            .post(server.at("/api/v1/webhooks"))
            .header("x-api-key", "acme-key-0123456789")
            .header("idempotency-key", "create-hook-1")
            .json(&json!({"url": receiver.url, "events": ["job.succeeded", "job.failed", "queue.completed"]}))
            .send()
            .unwrap()
    };
    let first = post();
    assert_eq!(first.status(), 201);
    let hook: Value = first.json().unwrap();
    let again = post();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().unwrap(), hook);
    let id = hook["id"].as_str().unwrap().to_string();
    let secret = hook["secret"].as_str().unwrap().to_string();
    // Shown once: never in a listing or lookup; another tenant cannot see it.
    let listed = acme
        .call(reqwest::Method::GET, "/api/v1/webhooks", None)
        .unwrap();
    assert_eq!(listed["webhooks"][0]["id"], json!(id));
    assert!(listed["webhooks"][0].get("secret").is_none());
    let status = crate::server::api_code(
        globex
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/webhooks/{id}"),
                None,
            )
            .unwrap_err(),
    );
    assert_eq!(status.0, 404);

    let worker = upload_test_guest(&acme);
    let queue = acme
        .call(
            reqwest::Method::POST,
            "/compute/queues/remote",
            Some(&json!({})),
        )
        .unwrap();
    let token = queue["queue_token"].as_str().unwrap();
    let lsns = acme
        .submit_batch(
            &[
                action(&acme, worker, &["noop"], None),
                action(&acme, worker, &["exit", "3"], None),
            ],
            Some(token),
        )
        .unwrap();
    // A job of the other tenant triggers nothing here.
    let other = upload_test_guest(&globex);
    let theirs = globex
        .submit(&action(&globex, other, &["noop"], None), None, None)
        .unwrap();
    globex.wait(theirs, WAIT).unwrap();

    // The endpoint fails at first: deliveries are retried until it recovers.
    eventually(WAIT, || (receiver.hits().len() >= 4).then_some(()));
    receiver.answer(200);
    eventually(WAIT, || {
        (receiver.delivered("queue.completed").len() == 1
            && receiver.delivered("job.succeeded").len() == 1
            && receiver.delivered("job.failed").len() == 1)
            .then_some(())
    });
    let hits = receiver.hits();
    assert!(hits.iter().all(|h| verifies(&secret, h)), "{hits:?}");
    assert!(hits.iter().any(|h| h.answered == 500));
    let succeeded = receiver.delivered("job.succeeded")[0].json();
    assert_eq!(succeeded["data"]["lsn"], json!(lsns[0]));
    assert_eq!(succeeded["data"]["outcome"], json!("exited"));
    let failed = receiver.delivered("job.failed")[0].json();
    assert_eq!(failed["data"]["lsn"], json!(lsns[1]));
    assert_eq!(failed["data"]["exit_code"], json!(3));
    let completed = receiver.delivered("queue.completed")[0].json();
    assert_eq!(completed["data"]["queue_id"], queue["queue_id"]);
    assert_eq!(completed["data"]["counts"]["succeeded"], json!(1));
    assert_eq!(completed["data"]["counts"]["failed"], json!(1));
    // Every attempt of one delivery carries the same webhook-id; the log shows them.
    let log = deliveries(&acme, &id);
    assert_eq!(log.len(), 3, "{log:?}");
    for entry in &log {
        assert_eq!(entry["state"], json!("delivered"), "{entry}");
        assert_eq!(entry["last_status"], json!(200));
        let msg = entry["id"].as_str().unwrap();
        let attempts = hits.iter().filter(|h| h.id == msg).count() as u64;
        assert_eq!(entry["attempts"], json!(attempts), "{entry}");
    }
    assert!(log.iter().any(|e| e["attempts"].as_u64().unwrap() > 1));

    // Deleting the webhook stops deliveries and removes its log.
    acme.call(
        reqwest::Method::DELETE,
        &format!("/api/v1/webhooks/{id}"),
        None,
    )
    .unwrap();
    let before = receiver.hits().len();
    let after_delete = acme
        .submit(&action(&acme, worker, &["echo"], Some(b"x")), None, None)
        .unwrap();
    acme.wait(after_delete, WAIT).unwrap();
    let status = crate::server::api_code(
        acme.call(
            reqwest::Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries"),
            None,
        )
        .unwrap_err(),
    );
    assert_eq!(status.0, 404);
    assert_eq!(receiver.hits().len(), before);
}

#[test]
fn pending_deliveries_survive_a_restart_and_a_failing_endpoint_is_disabled() {
    let receiver = Receiver::start(503);
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--webhook-retry-base",
        "20ms",
        "--webhook-attempts",
        "1000",
        "--webhook-disable-after",
        "1000",
        "--webhook-allow-private",
    ];
    let server = Server::start_in(dir.path(), &args);
    let client = server.client();
    let hook = create_webhook(&client, &receiver.url, &["job.succeeded"]);
    let id = hook["id"].as_str().unwrap().to_string();
    let secret = hook["secret"].as_str().unwrap().to_string();
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(&action(&client, worker, &["noop"], None), None, None)
        .unwrap();
    client.wait(lsn, WAIT).unwrap();
    eventually(WAIT, || (receiver.hits().len() >= 2).then_some(()));
    server.kill();
    let refused: Vec<String> = receiver.hits().iter().map(|h| h.id.clone()).collect();

    // Restarted on its data, with a low disabling threshold: the pending delivery is
    // sent (same webhook-id), and a second endpoint that always fails is disabled.
    receiver.answer(204);
    let mut strict = args.to_vec();
    strict[5] = "3";
    let server = Server::start_in(dir.path(), &strict);
    let client = server.client();
    let delivered = eventually(WAIT, || receiver.delivered("job.succeeded").pop());
    assert_eq!(delivered.id, refused[0]);
    assert!(verifies(&secret, &delivered));
    assert_eq!(delivered.json()["data"]["lsn"], json!(lsn));

    let broken = Receiver::start(500);
    let bad = create_webhook(&client, &broken.url, &["job.failed"]);
    let bad_id = bad["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let lsn = client
            .submit(&action(&client, worker, &["exit", "1"], None), None, None)
            .unwrap();
        client.wait(lsn, WAIT).unwrap();
    }
    let disabled = eventually(WAIT, || {
        let hook = client
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/webhooks/{bad_id}"),
                None,
            )
            .unwrap();
        (hook["state"] == json!("disabled")).then_some(hook)
    });
    assert_eq!(disabled["failures"], json!(3));
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("3 consecutive")
    );
    let log = deliveries(&client, &bad_id);
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|d| d["state"] == json!("failed")), "{log:?}");
    assert_eq!(broken.hits().len(), 3);
    // The healthy endpoint is unaffected; the disabled one can be turned back on.
    assert_eq!(deliveries(&client, &id)[0]["state"], json!("delivered"));
    let enabled = client
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/webhooks/{bad_id}/enable"),
            None,
        )
        .unwrap();
    assert_eq!(enabled["state"], json!("active"));
    assert_eq!(enabled["failures"], json!(0));
}

#[test]
fn a_coordinator_announces_nodes_becoming_ready_and_unhealthy() {
    let receiver = Receiver::start(200);
    let mut args = CLUSTER.to_vec();
    args.push("--webhook-allow-private");
    let coordinator = Server::coordinator(&args);
    let client = coordinator.client();
    let hook = create_webhook(&client, &receiver.url, &["node.ready", "node.unhealthy"]);
    let secret = hook["secret"].as_str().unwrap().to_string();
    let worker = node(&coordinator, "node-w", &[]);
    let ready = eventually(WAIT, || receiver.delivered("node.ready").pop());
    assert_eq!(ready.json()["data"]["node"], json!("node-w"));
    signal(&worker, "STOP");
    let unhealthy = eventually(WAIT, || receiver.delivered("node.unhealthy").pop());
    assert_eq!(unhealthy.json()["data"]["node"], json!("node-w"));
    signal(&worker, "CONT");
    eventually(WAIT, || {
        (receiver.delivered("node.ready").len() == 2).then_some(())
    });
    assert!(receiver.hits().iter().all(|h| verifies(&secret, h)));
}

/// A job stopped at its deadline is announced as `job.deadline_exceeded` (besides
/// `job.failed`), to the webhooks that ask for it.
#[test]
fn a_missed_deadline_is_a_webhook_event() {
    let receiver = Receiver::start(200);
    let server = Server::start(&["--webhook-allow-private", "--webhook-retry-base", "20ms"]);
    let client = server.client();
    let hook = create_webhook(&client, &receiver.url, &["job.deadline_exceeded"]);
    let worker = upload_test_guest(&client);
    let mut late = action(&client, worker, &["sleep", "60000"], None);
    late["deadlines"] = json!({"finish_within_ms": 300});
    let lsn = client.submit(&late, None, None).unwrap();
    let on_time = client
        .submit(&action(&client, worker, &["noop"], None), None, None)
        .unwrap();
    client.wait(on_time, WAIT).unwrap();
    assert_eq!(client.wait(lsn, WAIT).unwrap().outcome, "deadline_exceeded");
    let hit = eventually(WAIT, || receiver.delivered("job.deadline_exceeded").pop());
    assert!(verifies(hook["secret"].as_str().unwrap(), &hit));
    let event = hit.json();
    assert_eq!(event["data"]["lsn"], json!(lsn));
    assert_eq!(event["data"]["outcome"], json!("deadline_exceeded"));
    assert_eq!(event["data"]["state"], json!("failed"));
    // Only the late job is announced; nothing else was asked for.
    assert!(
        receiver
            .hits()
            .iter()
            .all(|h| h.json()["data"]["lsn"] == json!(lsn))
    );
}

/// A coordinator whose queue's work cannot finish before its jobs' deadlines at the
/// slots there are announces `queue.deadline_at_risk` to the queue's tenant, once.
#[test]
fn a_queue_that_will_miss_its_deadline_is_announced() {
    let receiver = Receiver::start(200);
    let coordinator = Server::coordinator(&[
        "--webhook-allow-private",
        "--webhook-retry-base",
        "20ms",
        "--autoscale-interval",
        "50ms",
    ]);
    let client = coordinator.client();
    let hook = create_webhook(&client, &receiver.url, &["queue.deadline_at_risk"]);
    let worker = upload_test_guest(&client);
    let queue = client
        .call(
            reqwest::Method::POST,
            "/compute/queues",
            Some(&json!({"deadlines": {"finish_within_ms": 600_000}})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap();
    // No node: no slot will ever run them. In one batch, so the autoscaler's first
    // look sees all three (one at a time, it could look between them and announce
    // one job's work, once).
    let jobs: Vec<_> = (0..3)
        .map(|i| action(&client, worker, &["noop"], Some(format!("{i}").as_bytes())))
        .collect();
    client
        .submit_batch(&jobs, Some(&queue.to_string()))
        .unwrap();
    let hit = eventually(WAIT, || receiver.delivered("queue.deadline_at_risk").pop());
    let data = &hit.json()["data"];
    assert_eq!(data["queue_id"], json!(queue));
    assert_eq!(data["queued_work_seconds"], json!(3.0), "{data}");
    assert_eq!(data["slots"], json!(0.0));
    assert!(data["predicted_finish_ms"].is_null(), "{data}");
    assert!(data["nearest_deadline_ms"].as_i64().unwrap() > 0);
    // The autoscaler keeps evaluating (its status moves) without announcing it again.
    let evaluated = |client: &Client| {
        client
            .call(reqwest::Method::GET, "/api/v1/cluster/autoscaler", None)
            .unwrap()["last"]["at_ms"]
            .as_i64()
            .unwrap()
    };
    let seen = evaluated(&client);
    eventually(WAIT, || (evaluated(&client) > seen + 200).then_some(()));
    // Every delivery created, sent or not.
    assert_eq!(deliveries(&client, hook["id"].as_str().unwrap()).len(), 1);
}
