//! Event-handler groups on a coordinator with real nodes: deploy with affinity, routed
//! injects with chaining, no_route, batches, the hop limit, re-placement after a node
//! dies, the event log, topology, teardown. The handlers are the `sensor-alerts`
//! example.

use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::HashHex;
use wasmesh_test_support::guest_bytes;

use crate::Server;
use crate::cluster::wait_for_state;
use crate::scheduling::CLUSTER;
use crate::server::api_code;

fn node(coordinator: &Server, id: &str) -> Server {
    crate::scheduling::node(coordinator, id, &["--slots", "1"])
}

fn upload_alerts(client: &Client, env: Value) -> HashHex {
    let wasm = guest_bytes("sensor-alerts");
    let module = HashHex::of(&wasm);
    client
        .upload_worker(
            &json!({"name": "sensor-alerts", "module": module, "env": env}),
            &[(module, &wasm)],
        )
        .unwrap()
        .worker
}

fn reading(value: f64) -> Value {
    json!({"event_type": "Reading", "fields": {"sensor": "s1", "value": value}})
}

fn post(client: &Client, path: &str, body: &Value) -> Value {
    client
        .call(reqwest::Method::POST, path, Some(body))
        .unwrap()
}

#[test]
fn events_are_routed_to_handlers_chained_and_logged() {
    let coordinator = Server::coordinator(CLUSTER);
    let _n1 = node(&coordinator, "n1");
    let n2 = node(&coordinator, "n2");
    let client = coordinator.client();
    let alerts = upload_alerts(&client, json!({}));
    let critical = upload_alerts(&client, json!({"THRESHOLD": "40"}));

    let group = post(
        &client,
        "/api/v1/cluster/groups",
        &json!({
            "name": "sensors",
            "handlers": [
                {"name": "alerts", "worker": alerts, "node_affinity": "n2"},
                {"name": "critical", "worker": critical},
            ],
            "routes": [
                {"from": "_external", "to": "alerts", "event_types": ["Read*"]},
                {"from": "alerts", "to": "critical", "event_types": ["Alert"]},
            ],
        }),
    );
    let id = group["id"].as_str().unwrap().to_string();
    let placements = group["placements"].as_array().unwrap();
    assert_eq!(placements[0], json!({"handler": "alerts", "node": "n2"}));
    assert!(placements[1]["node"].is_string());

    // Above the threshold: `alerts` runs on n2 and emits an Alert, routed on to
    // `critical`.
    let hot = post(
        &client,
        &format!("/api/v1/cluster/groups/{id}/inject"),
        &reading(42.5),
    );
    assert_eq!(hot["routed_to"], "alerts");
    assert_eq!(hot["node"], "n2");
    assert_eq!(hot["output_events"][0]["event_type"], "Alert");
    assert_eq!(hot["output_events"][0]["fields"]["value"], 42.5);
    let chain: Vec<&str> = hot["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["handler"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["alerts", "critical"]);
    // Every handler run is an ordinary job of the tenant.
    let job = client
        .result(hot["lsn"].as_u64().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((job.state.as_str(), job.node.as_str()), ("succeeded", "n2"));
    assert_eq!(job.placement.unwrap()["strategy"], "pinned");

    // Below it: no event, no chain.
    let cold = post(
        &client,
        &format!("/api/v1/cluster/groups/{id}/inject"),
        &reading(10.0),
    );
    assert_eq!(cold["output_events"], json!([]));
    assert_eq!(cold["chain"].as_array().unwrap().len(), 1);

    // No route is a 422, never a silent default.
    let (status, code) = api_code(
        client
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/cluster/groups/{id}/inject"),
                Some(&json!({"event_type": "Humidity", "fields": {"value": 1}})),
            )
            .unwrap_err(),
    );
    assert_eq!((status, code.as_str()), (422, "no_route"));

    // A batch.
    let batch = post(
        &client,
        &format!("/api/v1/cluster/groups/{id}/inject"),
        &json!({"events": [reading(31.0), reading(5.0), reading(50.0)]}),
    );
    let alerted: Vec<bool> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| !r["output_events"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(alerted, [true, false, true]);

    // The log holds every handler run (the batch's events ran concurrently).
    let log = client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/cluster/groups/{id}/events"),
            None,
        )
        .unwrap();
    let mut handlers: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["handler"].as_str().unwrap())
        .collect();
    assert_eq!(&handlers[..3], ["alerts", "critical", "alerts"]);
    handlers.sort();
    assert_eq!(
        handlers,
        [
            "alerts", "alerts", "alerts", "alerts", "alerts", "critical", "critical", "critical"
        ]
    );
    let topology = client
        .call(reqwest::Method::GET, "/api/v1/cluster/topology", None)
        .unwrap();
    assert_eq!(topology["groups"][0]["id"], Value::String(id.clone()));

    // The handler's node dies: the next event is placed elsewhere.
    n2.kill();
    wait_for_state(&coordinator, "n2", "unhealthy");
    let moved = post(
        &client,
        &format!("/api/v1/cluster/groups/{id}/inject"),
        &reading(45.0),
    );
    assert_eq!(
        (moved["routed_to"].as_str(), moved["node"].as_str()),
        (Some("alerts"), Some("n1"))
    );
    let details = client
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/cluster/groups/{id}"),
            None,
        )
        .unwrap();
    assert_eq!(details["placements"][0]["node"], "n1");

    // Teardown.
    client
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/cluster/groups/{id}"),
            None,
        )
        .unwrap();
    let (status, _) = api_code(
        client
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/cluster/groups/{id}"),
                None,
            )
            .unwrap_err(),
    );
    assert_eq!(status, 404);
}

#[test]
fn a_routing_cycle_stops_at_the_hop_limit() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Server::coordinator_in(dir.path(), CLUSTER);
    let _n1 = node(&coordinator, "n1");
    let client = coordinator.client();
    let alerts = upload_alerts(&client, json!({}));
    // `loop` re-emits every Alert (its fields carry the threshold it crossed) to itself.
    let group = post(
        &client,
        "/api/v1/cluster/groups",
        &json!({
            "name": "cycle",
            "handlers": [{"name": "loop", "worker": alerts}],
            "routes": [
                {"from": "_external", "to": "loop", "event_types": ["*"]},
                {"from": "loop", "to": "loop", "event_types": ["Alert"]},
            ],
        }),
    );
    let id = group["id"].as_str().unwrap();
    let answer = post(
        &client,
        &format!("/api/v1/cluster/groups/{id}/inject"),
        &reading(99.0),
    );
    let chain = answer["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 9, "{answer}");
    assert_eq!(chain[8]["dropped"], "hop_limit");
    assert!(
        chain[..8]
            .iter()
            .all(|c| c["handler"] == "loop" && c["lsn"].is_u64())
    );

    // Invalid specs are refused with the contract's error shape.
    for bad in [
        json!({"name": "x", "handlers": []}),
        json!({"name": "x", "handlers": [{"name": "a", "worker": alerts}],
               "routes": [{"from": "_external", "to": "b", "event_types": ["*"]}]}),
        json!({"name": "x", "handlers": [{"name": "a", "worker": alerts}],
               "routes": [{"from": "_external", "to": "a", "event_types": ["T*x"]}]}),
    ] {
        let (status, code) = api_code(
            client
                .call(reqwest::Method::POST, "/api/v1/cluster/groups", Some(&bad))
                .unwrap_err(),
        );
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{bad}");
    }
    let unknown = json!({"name": "x", "handlers": [{"name": "a", "worker": HashHex([9; 32])}]});
    let (status, _) = api_code(
        client
            .call(
                reqwest::Method::POST,
                "/api/v1/cluster/groups",
                Some(&unknown),
            )
            .unwrap_err(),
    );
    assert_eq!(status, 404, "a handler's worker must be registered");

    // The event log is in the journal: a restarted coordinator still shows the chain.
    coordinator.kill();
    let coordinator = Server::coordinator_in(dir.path(), CLUSTER);
    let log = coordinator
        .client()
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/cluster/groups/{id}/events"),
            None,
        )
        .unwrap();
    let events = log["events"].as_array().unwrap();
    assert_eq!(events.len(), 9, "{log}");
    assert!(events[8]["dropped"].as_str().unwrap().contains("hop limit"));
    assert!(events[..8].iter().all(|e| e["handler"] == "loop"));
}
