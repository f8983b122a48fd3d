//! The autoscaler (issue 15): the local provisioner scales a real fleet of `wasmesh
//! node` processes from zero for a burst and back to zero after it, every job run
//! exactly once; the Kubernetes and Nomad provisioners send the requests their APIs
//! document (a StatefulSet's scale subresource, a Nomad job's scale endpoint) to a
//! recorder on loopback standing in for the API server (no cluster runs here).

use std::sync::{Arc, Mutex};

use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method as HttpMethod};
use reqwest::Method;
use serde_json::{Value, json};

use crate::Server;
use crate::details::details;
use crate::server::{WAIT, action, eventually, upload_test_guest};

const ADMIN: &str = "admin-key-0123456789";
const NODE_KEY: &str = "node-secret-0123456789";

fn status(coordinator: &Server) -> Value {
    coordinator
        .client_with_key(ADMIN)
        .call(Method::GET, "/api/v1/cluster/autoscaler", None)
        .unwrap()
}

fn nodes(coordinator: &Server) -> Vec<Value> {
    coordinator
        .client_with_key(ADMIN)
        .call(Method::GET, "/api/v1/cluster/nodes", None)
        .unwrap()["nodes"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_burst_scales_a_local_fleet_from_zero_and_back_running_each_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = crate::tenants::two_tenants(dir.path());
    let coordinator = Server::coordinator(&[
        "--tenants",
        tenants.to_str().unwrap(),
        "--admin-key",
        ADMIN,
        "--node-key",
        NODE_KEY,
        "--heartbeat-interval",
        "100ms",
        "--autoscale",
        "local",
        "--min-nodes",
        "0",
        "--max-nodes",
        "3",
        "--node-slots",
        "1",
        "--target-wait",
        "1s",
        "--scale-up-cooldown",
        "0s",
        "--scale-down-cooldown",
        "1s",
        "--scale-down-stabilization",
        "1s",
        "--autoscale-interval",
        "100ms",
    ]);
    let client = coordinator.client_with_key("acme-key-0123456789");
    assert!(nodes(&coordinator).is_empty(), "it starts with no node");
    let idle = status(&coordinator);
    assert_eq!(idle["provisioner"], "local");
    assert_eq!(idle["current_nodes"], 0);

    let worker = upload_test_guest(&client);
    let queue = client
        .call(
            Method::POST,
            "/compute/queues",
            Some(&json!({"name": "burst"})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap()
        .to_string();
    let jobs: Vec<u64> = (0..24)
        .map(|i| {
            let job = action(
                &client,
                worker,
                &["sleep-then", "200", "args", &i.to_string()],
                None,
            );
            client.submit(&job, Some(&queue), None).unwrap()
        })
        .collect();
    // The burst needs every node the policy allows: 0 -> 3, each registering itself.
    eventually(WAIT, || {
        let ready = nodes(&coordinator)
            .iter()
            .filter(|n| n["state"] == "ready" || n["state"] == "busy")
            .count();
        (ready == 3).then_some(())
    });
    let up = status(&coordinator);
    let decision = up["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "up")
        .cloned()
        .unwrap_or_else(|| panic!("no scale-up decision: {up}"));
    assert!(
        decision["reason"].as_str().unwrap().contains("queued work"),
        "{decision}"
    );
    let metrics = coordinator.metrics(Some(ADMIN));
    assert!(
        metrics.contains("wasmesh_autoscaler_desired_nodes"),
        "{metrics}"
    );

    // Every job ran exactly once, on a node the autoscaler started.
    for lsn in &jobs {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state, "succeeded", "{result:?}");
        assert_eq!(result.attempts, 1, "job {lsn} ran twice: {result:?}");
        assert!(result.node.starts_with("auto-"), "{result:?}");
        let history = details(&client, *lsn)["history"].as_array().unwrap().len();
        assert_eq!(history, 1, "job {lsn}");
    }
    // Idle past the cooldown and the window: drained and back to zero.
    eventually(WAIT, || {
        let s = status(&coordinator);
        (nodes(&coordinator).is_empty() && s["current_nodes"] == 0 && s["draining"] == json!([]))
            .then_some(())
    });
    let down = status(&coordinator);
    assert!(
        down["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "down" && d["desired"] == 0),
        "{down}"
    );
    // A job after the fleet went to zero brings a node back and runs.
    let late = client
        .submit(
            &action(&client, worker, &["noop"], None),
            Some(&queue),
            None,
        )
        .unwrap();
    assert_eq!(client.wait(late, WAIT).unwrap().state, "succeeded");
    assert!(
        coordinator.terminate(),
        "the coordinator and its nodes stop cleanly"
    );
}

/// One request the stand-in API server got.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: String,
}

type Requests = Arc<Mutex<Vec<Request>>>;

/// An HTTP server on loopback answering `answer(method, path)` and recording every
/// request: the API server a provisioner talks to, for its documented requests.
struct StandIn {
    url: String,
    requests: Requests,
    _runtime: tokio::runtime::Runtime,
}

impl StandIn {
    fn start(answer: fn(&str, &str) -> Value) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let requests: Requests = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let recorded = requests.clone();
        let app = axum::Router::new()
            .fallback(
                move |State(requests): State<Requests>,
                      method: HttpMethod,
                      OriginalUri(uri): OriginalUri,
                      headers: HeaderMap,
                      body: String| async move {
                    let answer = answer(method.as_str(), uri.path());
                    requests.lock().unwrap().push(Request {
                        method: method.to_string(),
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    axum::Json(answer)
                },
            )
            .with_state(recorded);
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            requests,
            _runtime: runtime,
        }
    }

    fn writes(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method != "GET")
            .cloned()
            .collect()
    }
}

/// A coordinator whose autoscaler uses `provisioner_args`, with 4 jobs it cannot run
/// (no node): the autoscaler asks for 2 nodes of 2 slots; once the jobs are cancelled
/// it asks for 0.
fn scale_up_then_down(provisioner_args: &[&str], stand_in: &StandIn) -> (Request, Request) {
    let mut args = vec![
        "--autoscale-interval",
        "100ms",
        "--scale-up-cooldown",
        "0s",
        "--scale-down-cooldown",
        "1s",
        "--scale-down-stabilization",
        "1s",
        "--target-wait",
        "1s",
        "--node-slots",
        "2",
    ];
    args.extend_from_slice(provisioner_args);
    let coordinator = Server::coordinator(&args);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    // In one batch: one at a time on a loaded machine, the autoscaler could look
    // between them and ask for one node.
    let actions: Vec<_> = (0..4)
        .map(|i| action(&client, worker, &["noop"], Some(format!("{i}").as_bytes())))
        .collect();
    let jobs = client.submit_batch(&actions, None).unwrap();
    let up = eventually(WAIT, || stand_in.writes().first().cloned());
    for lsn in jobs {
        client.cancel(lsn).unwrap();
    }
    let down = eventually(WAIT, || stand_in.writes().get(1).cloned());
    let s = coordinator
        .client()
        .call(Method::GET, "/api/v1/cluster/autoscaler", None)
        .unwrap();
    assert!(s["error"].is_null(), "{s}");
    (up, down)
}

#[test]
fn the_kubernetes_provisioner_patches_the_statefulsets_scale_subresource() {
    let api = StandIn::start(|_, _| json!({"kind": "Scale", "spec": {"replicas": 0}}));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "service-account-token\n").unwrap();
    let (up, down) = scale_up_then_down(
        &[
            "--autoscale",
            "kubernetes",
            "--k8s-api",
            &api.url,
            "--k8s-namespace",
            "compute",
            "--k8s-statefulset",
            "wm-wasmesh-node",
            "--k8s-token-file",
            token.to_str().unwrap(),
            "--k8s-ca-file",
            dir.path().join("no-ca.crt").to_str().unwrap(),
        ],
        &api,
    );
    let path = "/apis/apps/v1/namespaces/compute/statefulsets/wm-wasmesh-node/scale";
    for (request, replicas) in [(&up, 2), (&down, 0)] {
        assert_eq!(request.method, "PATCH");
        assert_eq!(request.uri, path);
        assert_eq!(
            request.headers["authorization"],
            "Bearer service-account-token"
        );
        assert_eq!(
            request.headers["content-type"],
            "application/merge-patch+json"
        );
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body, json!({"spec": {"replicas": replicas}}));
    }
    // It read the current scale first, with the same credentials.
    let first = api.requests.lock().unwrap()[0].clone();
    assert_eq!((first.method.as_str(), first.uri.as_str()), ("GET", path));
    assert_eq!(
        first.headers["authorization"],
        "Bearer service-account-token"
    );
}

#[test]
fn the_nomad_provisioner_scales_the_task_group_through_the_job_scale_endpoint() {
    let api = StandIn::start(|method, _| match method {
        "GET" => json!({"JobID": "wasmesh", "TaskGroups": {"node": {"Desired": 0, "Running": 0}}}),
        _ => json!({"EvalID": "5f0c1e8a", "EvalCreateIndex": 10, "JobModifyIndex": 10}),
    });
    let (up, down) = scale_up_then_down(
        &[
            "--autoscale",
            "nomad",
            "--nomad-addr",
            &api.url,
            "--nomad-job",
            "wasmesh",
            "--nomad-group",
            "node",
            "--nomad-namespace",
            "compute",
            "--nomad-token",
            "nomad-acl-token",
        ],
        &api,
    );
    for (request, count) in [(&up, 2), (&down, 0)] {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri, "/v1/job/wasmesh/scale?namespace=compute");
        assert_eq!(request.headers["x-nomad-token"], "nomad-acl-token");
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["Count"], count, "{body}");
        assert_eq!(body["Target"], json!({"Group": "node"}));
        assert!(
            body["Message"]
                .as_str()
                .unwrap()
                .starts_with("wasmesh autoscaler: "),
            "{body}"
        );
    }
}
