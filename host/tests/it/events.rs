//! The change feed, `GET /compute/events`: every change pushed as it happens, each
//! tenant's to that tenant only, resumable with `Last-Event-ID`.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::Server;
use crate::server::{WAIT, action, upload_test_guest};
use crate::tenants::two_tenants;

const ADMIN: &str = "admin-key-0123456789";
const NODE_KEY: &str = "node-secret-0123456789";

/// One event of the feed: its id and its data.
type Received = (u64, Value);

/// Subscribes with `key` (resuming after `last` when given); events arrive on the
/// channel as the server sends them.
fn subscribe(server: &Server, key: &str, last: Option<u64>) -> mpsc::Receiver<Received> {
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let mut request = client
        .get(server.at("/compute/events"))
        .header("x-api-key", key);
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut id, mut data) = (None, String::new());
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(value) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                id = value.trim().parse().ok();
            } else if let Some(value) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                data.push_str(value);
            } else if line.is_empty() && !data.is_empty() {
                let event = (
                    id.expect("every event has an id"),
                    serde_json::from_str(&data).unwrap(),
                );
                data.clear();
                if send.send(event).is_err() {
                    return;
                }
            }
        }
    });
    receive
}

/// Receives until `wanted` matches an event; returns every event received up to it.
fn until(events: &mpsc::Receiver<Received>, wanted: impl Fn(&Value) -> bool) -> Vec<Received> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = events
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no such event within {WAIT:?}; saw {seen:?}"));
        let done = wanted(&event.1);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn is_job(lsn: u64, state: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["kind"] == "job" && e["lsn"] == lsn && e["state"] == state
}

#[test]
fn the_feed_pushes_each_tenants_changes_to_it_alone_and_resumes_after_the_last_id() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = two_tenants(dir.path());
    let coordinator = Server::coordinator(&[
        "--tenants",
        tenants.to_str().unwrap(),
        "--admin-key",
        ADMIN,
        "--node-key",
        NODE_KEY,
        "--heartbeat-interval",
        "100ms",
        "--webhook-allow-private",
        "--webhook-retry-base",
        "20ms",
        "--webhook-attempts",
        "2",
    ]);
    let operator = subscribe(&coordinator, ADMIN, None);
    let acme_feed = subscribe(&coordinator, "acme-key-0123456789", None);
    let globex_feed = subscribe(&coordinator, "globex-key-0123456789", None);
    // A new subscriber is told where it starts.
    for feed in [&operator, &acme_feed, &globex_feed] {
        let (id, hello) = feed.recv_timeout(WAIT).unwrap();
        assert_eq!(hello["kind"], "hello");
        assert_eq!(hello["id"], id);
    }
    let node = Server::start(&[
        "--coordinator",
        &coordinator.url,
        "--node-id",
        "feed-node",
        "--node-key",
        NODE_KEY,
    ]);
    until(&operator, |e| {
        e["kind"] == "node" && e["node"] == "feed-node" && e["state"] == "ready"
    });

    let acme = coordinator.client_with_key("acme-key-0123456789");
    let worker = upload_test_guest(&acme);
    // A webhook nobody answers (a closed port): its attempts' outcomes are changes too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let hook = json!({"url": url, "events": ["job.succeeded"]});
    acme.call(reqwest::Method::POST, "/api/v1/webhooks", Some(&hook))
        .unwrap();
    let lsn = acme
        .submit(&action(&acme, worker, &["echo"], Some(b"hi")), None, None)
        .unwrap();
    let seen = until(&acme_feed, is_job(lsn, "succeeded"));
    let states: Vec<&Value> = seen
        .iter()
        .filter(|(_, e)| e["kind"] == "job" && e["lsn"] == lsn)
        .map(|(_, e)| &e["state"])
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{seen:?}");
    let (running_id, running) = seen
        .iter()
        .find(|(_, e)| is_job(lsn, "running")(e))
        .unwrap();
    assert_eq!(running["node"], "feed-node");
    assert_eq!(running["tenant"], "acme");
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids only grow: {ids:?}"
    );
    // The operator sees the tenant's job too.
    until(&operator, is_job(lsn, "succeeded"));
    // The same action again is answered from the cache: one change, already finished.
    let again = acme
        .submit(&action(&acme, worker, &["echo"], Some(b"hi")), None, None)
        .unwrap();
    let seen = until(&acme_feed, is_job(again, "succeeded"));
    // (The webhook's first attempt may be among them: it is made once the first job's
    // end is published.)
    let acme_since_the_first_end = seen.clone();
    let answer = &seen.last().unwrap().1;
    assert_eq!(answer["cached"], true, "{answer}");
    assert_eq!(answer["tenant"], "acme");
    assert_eq!(answer["worker"], worker.to_string());
    assert!(
        seen.iter().all(|(_, e)| e["lsn"] != again || e == answer),
        "a cached answer is never queued or running: {seen:?}"
    );

    // Globex's own job: once its end arrived, every earlier change was sent, and
    // none of acme's was among them.
    let globex = coordinator.client_with_key("globex-key-0123456789");
    let theirs = upload_test_guest(&globex);
    let their_lsn = globex
        .submit(&action(&globex, theirs, &["echo"], Some(b"yo")), None, None)
        .unwrap();
    let seen = until(&globex_feed, is_job(their_lsn, "succeeded"));
    assert!(
        seen.iter()
            .all(|(_, e)| e["tenant"] == "globex" && e["lsn"] != lsn),
        "globex saw another tenant's change: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, e)| e["kind"] != "node"),
        "the fleet is the operator's"
    );

    // Reconnecting after the running event resumes right after it: the end comes next.
    let resumed = subscribe(&coordinator, "acme-key-0123456789", Some(*running_id));
    let (id, next) = resumed.recv_timeout(WAIT).unwrap();
    assert!(is_job(lsn, "succeeded")(&next), "{next}");
    assert!(id > *running_id);
    // An id the server never gave (a previous run's, say) is a reset, then live.
    let stale = subscribe(&coordinator, "acme-key-0123456789", Some(u64::MAX / 2));
    let (_, reset) = stale.recv_timeout(WAIT).unwrap();
    assert_eq!(reset["kind"], "reset");

    let bad = coordinator
        .http()
        .get(coordinator.at("/compute/events"))
        .header("x-api-key", "acme-key-0123456789")
        .header("last-event-id", "not-a-number")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unauthenticated = coordinator
        .http()
        .get(coordinator.at("/compute/events"))
        .send()
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // The webhook's attempts: tried again, then failed.
    let attempts = until(&acme_feed, |e| {
        e["kind"] == "delivery" && e["state"] == "failed"
    });
    let last = &attempts.last().unwrap().1;
    assert_eq!(last["event"], "job.succeeded");
    assert_eq!(last["attempts"], 2);
    assert!(
        (acme_since_the_first_end.iter().chain(&attempts)).any(|(_, e)| e["kind"] == "delivery"
            && e["state"] == "pending"
            && e["id"] == last["id"]),
        "{attempts:?}"
    );
    // A handler group's deploy and delete.
    let group = json!({
        "name": "g",
        "handlers": [{"name": "h", "worker": worker}],
        "routes": [{"from": "_external", "to": "h", "event_types": ["T*"]}],
    });
    let id = acme
        .call(
            reqwest::Method::POST,
            "/api/v1/cluster/groups",
            Some(&group),
        )
        .unwrap()["id"]
        .clone();
    until(&acme_feed, |e| {
        e["kind"] == "group" && e["id"] == id && e["state"] == "deployed"
    });
    acme.call(
        reqwest::Method::DELETE,
        &format!("/api/v1/cluster/groups/{}", id.as_str().unwrap()),
        None,
    )
    .unwrap();
    until(&acme_feed, |e| {
        e["kind"] == "group" && e["id"] == id && e["state"] == "deleted"
    });

    // Killing the node turns it unhealthy on the operator's feed.
    node.kill();
    until(&operator, |e| {
        e["kind"] == "node" && e["node"] == "feed-node" && e["state"] == "unhealthy"
    });
    // Open subscriptions (four here) do not hold a graceful shutdown open.
    let (stopped, stop) = mpsc::channel();
    std::thread::spawn(move || stopped.send(coordinator.terminate()));
    let clean = stop
        .recv_timeout(WAIT)
        .expect("the coordinator did not stop while subscriptions were open");
    assert!(clean, "the coordinator stopped cleanly");
    drop((operator, acme_feed, globex_feed, resumed, stale));
}
