//! `GET /compute/jobs/{lsn}/details`: a job's descriptor, its neighbours both ways,
//! its checkpoint and every attempt, scoped like the job itself. (Attempts of jobs
//! whose node died are checked where those runs happen: `checkpoints.rs`.)

use reqwest::Method;
use serde_json::{Value, json};
use wasmesh_host::client::Client;

use crate::Server;
use crate::server::{WAIT, action, api_code, start_blocker, upload_test_guest};

/// A job's details.
pub fn details(client: &Client, lsn: u64) -> Value {
    client
        .call(Method::GET, &format!("/compute/jobs/{lsn}/details"), None)
        .unwrap()
}

#[test]
fn details_show_neighbours_both_ways_and_every_attempt_of_the_callers_jobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        "acme = [\"acme-key-0123456789\"]\nglobex = [\"globex-key-0123456789\"]\n\
         ops = { keys = [\"ops-key-0123456789\"], role = \"operator\" }\n",
    )
    .unwrap();
    let server = Server::start(&["--tenants", tenants.to_str().unwrap(), "--slots", "1"]);
    let acme = server.client_with_key("acme-key-0123456789");
    let worker = upload_test_guest(&acme);

    // A map and its two dependents: one takes its output, one only waits for it.
    let map = acme
        .submit(
            &action(&acme, worker, &["echo"], Some(b"shard")),
            None,
            None,
        )
        .unwrap();
    let reduce = acme
        .submit(
            &json!({"worker": worker, "args": ["echo"], "input": {"output_of": map}}),
            None,
            None,
        )
        .unwrap();
    let after = acme
        .submit(
            &json!({"worker": worker, "args": ["noop"], "after": [map]}),
            None,
            None,
        )
        .unwrap();
    let reduced = acme.wait(reduce, WAIT).unwrap();
    acme.wait(after, WAIT).unwrap();
    let mapped = acme.wait(map, WAIT).unwrap();

    let d = details(&acme, map);
    assert_eq!(d["state"], "succeeded", "{d}");
    assert_eq!(d["tenant"], "acme");
    assert_eq!(d["dependents"], json!([reduce, after]));
    assert_eq!(d["after"], json!([]));
    assert_eq!(d["descriptor"]["args"], json!(["echo"]));
    assert_eq!(d["attempts"], 1);
    let history = d["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{d}");
    let first = &history[0];
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["node"], json!(mapped.node));
    assert_eq!(first["outcome"], "exited");
    assert_eq!(first["exit_code"], 0);
    assert_eq!(first["retried"], false);
    assert!(first["ended_ms"].as_i64().unwrap() >= first["started_ms"].as_i64().unwrap());
    assert!(d["finished_ms"].as_i64().unwrap() >= d["created_ms"].as_i64().unwrap());

    // The reduce waited for the map; its descriptor now names the map's real output.
    let d = details(&acme, reduce);
    assert_eq!(d["after"], json!([map]), "{d}");
    assert_eq!(d["dependents"], json!([]));
    assert_eq!(d["descriptor"]["input"], json!(mapped.output));
    assert_eq!(reduced.state, "succeeded");

    // A guest failure in a queue that retries them: both attempts, the first retried.
    let queue = acme
        .call(
            Method::POST,
            "/compute/queues",
            Some(&json!({"max_retries": 1, "retry_guest_failures": true})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap();
    let failing = acme
        .submit(
            &action(&acme, worker, &["exit", "7"], None),
            Some(&queue.to_string()),
            None,
        )
        .unwrap();
    let failed = acme.wait(failing, WAIT).unwrap();
    assert_eq!(failed.attempts, 2);
    let d = details(&acme, failing);
    assert_eq!(d["queue_id"], queue);
    let history = d["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{d}");
    for (i, attempt) in history.iter().enumerate() {
        assert_eq!(attempt["attempt"], i + 1);
        assert_eq!(attempt["exit_code"], 7, "{attempt}");
        assert_eq!(attempt["retried"], i == 0, "{attempt}");
    }

    // A job that has not started has no attempt yet; a running one an open attempt.
    let blocker = start_blocker(&acme, worker);
    let queued = acme
        .submit(&action(&acme, worker, &["noop"], None), None, None)
        .unwrap();
    let d = details(&acme, queued);
    assert_eq!(d["state"], "queued", "{d}");
    assert_eq!(d["history"], json!([]));
    assert_eq!(d["finished_ms"], Value::Null);
    let d = details(&acme, blocker);
    assert_eq!(d["state"], "running", "{d}");
    assert_eq!(d["history"][0]["ended_ms"], Value::Null);
    assert_eq!(d["history"][0]["outcome"], Value::Null);
    assert_eq!(d["node"], d["history"][0]["node"], "{d}");
    assert!(d["node"].is_string(), "{d}");
    acme.cancel(blocker).unwrap();
    acme.wait(queued, WAIT).unwrap();
    let d = details(&acme, blocker);
    assert_eq!(d["history"][0]["outcome"], "cancelled", "{d}");
    assert_eq!(d["history"][0]["retried"], false);

    // Another tenant does not find it; the operator reads it; a bad LSN is a 400.
    let globex = server.client_with_key("globex-key-0123456789");
    let missing = globex
        .call(Method::GET, &format!("/compute/jobs/{map}/details"), None)
        .unwrap_err();
    assert_eq!(api_code(missing), (404, "not_found".into()));
    let ops = server.client_with_key("ops-key-0123456789");
    assert_eq!(details(&ops, map)["tenant"], "acme");
    let bad = acme
        .call(Method::GET, "/compute/jobs/nope/details", None)
        .unwrap_err();
    assert_eq!(api_code(bad), (400, "invalid_lsn".into()));
}
