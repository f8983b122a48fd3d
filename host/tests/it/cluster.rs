//! The coordinator's node registry with real node processes: registration,
//! heartbeats, states, drain, re-registration after a 404, node keys.

use std::process::Command;

use serde_json::Value;

use crate::Server;
use crate::server::{WAIT, eventually};

/// Fast heartbeats so state changes show within a second.
const FAST: &[&str] = &["--heartbeat-interval", "100ms", "--lease", "800ms"];

pub fn nodes(coordinator: &Server, key: Option<&str>) -> Vec<Value> {
    let mut request = coordinator
        .http()
        .get(coordinator.at("/api/v1/cluster/nodes"));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let body: Value = request.send().unwrap().json().unwrap();
    body["nodes"].as_array().cloned().unwrap_or_default()
}

pub fn node_state(coordinator: &Server, id: &str) -> Option<String> {
    nodes(coordinator, None)
        .into_iter()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap_or_default().to_string())
}

pub fn wait_for_state(coordinator: &Server, id: &str, state: &str) {
    eventually(WAIT, || {
        (node_state(coordinator, id).as_deref() == Some(state)).then_some(())
    });
}

pub fn signal(server: &Server, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_node_registers_and_heartbeats_with_its_labels() {
    let coordinator = Server::coordinator(FAST);
    let health: Value = coordinator
        .http()
        .get(coordinator.at("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["role"], "coordinator");
    let node = Server::start(&[
        "--coordinator",
        &coordinator.url,
        "--node-id",
        "n1",
        "--label",
        "zone=a",
        "--slots",
        "3",
    ]);
    wait_for_state(&coordinator, "n1", "ready");
    let listed = nodes(&coordinator, None);
    assert_eq!(listed.len(), 1);
    let n1 = &listed[0];
    assert_eq!(n1["address"], Value::String(node.url.clone()));
    assert_eq!(n1["slots"], 3);
    assert_eq!(n1["labels"]["zone"], "a");
    assert!(n1["last_heartbeat_ms_ago"].as_u64().unwrap() < 800);
    let details: Value = coordinator
        .http()
        .get(coordinator.at("/api/v1/cluster/nodes/n1"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(details["id"], "n1");
    let missing = coordinator
        .http()
        .get(coordinator.at("/api/v1/cluster/nodes/nope"))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[test]
fn a_killed_node_turns_unhealthy_and_a_frozen_one_comes_back() {
    let coordinator = Server::coordinator(FAST);
    let frozen = Server::start(&["--coordinator", &coordinator.url, "--node-id", "frozen"]);
    let killed = Server::start(&["--coordinator", &coordinator.url, "--node-id", "killed"]);
    wait_for_state(&coordinator, "frozen", "ready");
    wait_for_state(&coordinator, "killed", "ready");
    let gauge = |state: &str| {
        let line = format!("wasmesh_nodes{{state=\"{state}\"}} ");
        let metrics = coordinator.metrics(None);
        let value = metrics.lines().find_map(|l| l.strip_prefix(line.as_str()));
        value.map(|v| v.parse::<u32>().unwrap())
    };
    assert_eq!(gauge("ready"), Some(2), "both nodes counted as ready");
    killed.kill();
    wait_for_state(&coordinator, "killed", "unhealthy");
    assert_eq!(gauge("unhealthy"), Some(1));
    assert_eq!(gauge("ready"), Some(1));
    signal(&frozen, "STOP");
    wait_for_state(&coordinator, "frozen", "unhealthy");
    signal(&frozen, "CONT");
    wait_for_state(&coordinator, "frozen", "ready");
}

#[test]
fn drain_and_deregister_with_re_registration_after_a_404() {
    let coordinator = Server::coordinator(FAST);
    let _node = Server::start(&["--coordinator", &coordinator.url, "--node-id", "n2"]);
    wait_for_state(&coordinator, "n2", "ready");
    let drained: Value = coordinator
        .http()
        .post(coordinator.at("/api/v1/cluster/nodes/n2/drain"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(drained["state"], "draining");
    wait_for_state(&coordinator, "n2", "draining");
    // Forgotten by the coordinator, the node's next heartbeat gets 404 and it
    // registers again (as a coordinator restart would make it).
    let removed = coordinator
        .http()
        .delete(coordinator.at("/api/v1/cluster/nodes/n2"))
        .send()
        .unwrap();
    assert_eq!(removed.status(), 200);
    wait_for_state(&coordinator, "n2", "ready");
}

#[test]
fn node_and_client_keys_are_enforced() {
    let coordinator = Server::coordinator(&[
        "--node-key",
        "node-secret-0123456789",
        "--api-key",
        "client-key-0123456789",
        "--admin-key",
        "admin-key-0123456789",
        "--heartbeat-interval",
        "100ms",
    ]);
    let _intruder = Server::start(&["--coordinator", &coordinator.url, "--node-id", "intruder"]);
    let _member = Server::start(&[
        "--coordinator",
        &coordinator.url,
        "--node-id",
        "member",
        "--node-key",
        "node-secret-0123456789",
    ]);
    let unauthorized = coordinator
        .http()
        .get(coordinator.at("/api/v1/cluster/nodes"))
        .send()
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let listed = eventually(WAIT, || {
        let listed = nodes(&coordinator, Some("admin-key-0123456789"));
        (!listed.is_empty()).then_some(listed)
    });
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["id"], "member",
        "the node without the key was refused"
    );
}
