//! Checkpoint/resume: a long `montecarlo-pi` job whose node dies mid-run resumes from
//! its latest checkpoint on the next attempt and gives the same answer as a run that
//! was never interrupted, on a lone node (restarted on its data) and in a cluster
//! (checkpoints carried to the coordinator by lease renewals, the retry on another
//! node).

use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::{HashHex, JobResult};
use wasmesh_test_support::guest_bytes;

use crate::Server;
use crate::scheduling::{CLUSTER, node};
use crate::server::{WAIT, eventually};

/// About two seconds of sampling on this machine; a checkpoint every ~50 ms.
const SAMPLES: u64 = 200_000_000;
const EVERY: u64 = 5_000_000;
/// Ceilings that fit the whole run.
const NODE_LIMITS: &[&str] = &["--fuel", "100000000000", "--timeout", "10m"];

fn upload_montecarlo(client: &Client) -> HashHex {
    let wasm = guest_bytes("montecarlo-pi");
    let module = HashHex::of(&wasm);
    client
        .upload_worker(
            &json!({"name": "montecarlo-pi", "module": module}),
            &[(module, &wasm)],
        )
        .unwrap()
        .worker
}

/// Submits a run of `SAMPLES` samples checkpointing every `every`.
fn submit_pi(client: &Client, worker: HashHex, every: u64) -> u64 {
    let input = json!({"samples": SAMPLES, "seed": 11, "checkpoint_every": every}).to_string();
    let action = json!({
        "worker": worker,
        "input": client.ensure_blobs(&[input.as_bytes()]).unwrap()[0],
        "limits": {"fuel": 100_000_000_000u64},
    });
    client.submit(&action, None, None).unwrap()
}

fn answer(client: &Client, result: &JobResult) -> Value {
    assert_eq!(result.state, "succeeded", "{result:?}");
    serde_json::from_slice(&client.blob(&result.output).unwrap()).unwrap()
}

/// Waits until the server has recorded a checkpoint for the running job; returns the
/// job's pending status.
fn wait_for_checkpoint(client: &Client, lsn: u64) -> Value {
    eventually(WAIT, || {
        let status = client
            .call(reqwest::Method::GET, &format!("/compute/jobs/{lsn}"), None)
            .unwrap();
        let state = status["state"].as_str().unwrap_or_default();
        assert!(state == "queued" || state == "running", "{status}");
        status["checkpoint"].is_string().then_some(status)
    })
}

/// The job's attempts: the first lost with its node and retried from the checkpoint,
/// the second the result; returns the first's node.
fn assert_lost_then_resumed(client: &Client, lsn: u64, resumed: &JobResult) -> String {
    let details = crate::details::details(client, lsn);
    let history = details["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{details}");
    let (lost, last) = (&history[0], &history[1]);
    assert_eq!(lost["attempt"], 1);
    assert_eq!(lost["outcome"], "node_lost", "{details}");
    assert_eq!(lost["retried"], true);
    assert!(lost["ended_ms"].is_i64(), "{details}");
    assert_eq!(last["attempt"], 2);
    assert_eq!(last["node"], json!(resumed.node));
    assert_eq!(last["outcome"], "exited");
    assert_eq!(last["retried"], false);
    // A finished job's checkpoint goes.
    assert_eq!(details["checkpoint"], Value::Null);
    lost["node"].as_str().unwrap().to_string()
}

/// The resumed run's answer is the uninterrupted one, except for where it resumed.
fn assert_same_answer(resumed: &Value, whole: &Value) {
    assert!(resumed["resumed_from"].as_u64().unwrap() > 0, "{resumed}");
    assert_eq!(whole["resumed_from"], json!(0));
    for field in ["samples", "inside", "pi"] {
        assert_eq!(
            resumed[field], whole[field],
            "{field}: {resumed} vs {whole}"
        );
    }
}

#[test]
fn a_node_killed_mid_run_resumes_its_job_from_the_checkpoint_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--slots", "1"];
    args.extend_from_slice(NODE_LIMITS);
    let server = Server::start_in(dir.path(), &args);
    let client = server.client();
    let worker = upload_montecarlo(&client);
    let lsn = submit_pi(&client, worker, EVERY);
    // The checkpoint is an internal blob (no tenant's): read it from the store, where
    // a newer save may replace (and delete) it at any moment.
    let (checkpoint, saved) = eventually(WAIT, || {
        let status = wait_for_checkpoint(&client, lsn);
        let checkpoint: HashHex = serde_json::from_value(status["checkpoint"].clone()).unwrap();
        let hex = checkpoint.to_string();
        let path = dir
            .path()
            .join("cas")
            .join(&hex[..2])
            .join(&hex[2..4])
            .join(&hex);
        let saved: Value = serde_json::from_slice(&std::fs::read(path).ok()?).unwrap();
        Some((checkpoint, saved))
    });
    assert!(saved["done"].as_u64().unwrap() > 0, "{saved}");
    let running = crate::details::details(&client, lsn);
    assert_eq!(running["history"][0]["ended_ms"], Value::Null, "{running}");
    assert!(running["checkpoint"].is_string(), "{running}");
    assert_eq!(
        crate::server::api_code(client.blob(&checkpoint).unwrap_err()).0,
        404,
        "a checkpoint is not a tenant's blob"
    );
    server.kill();

    let server = Server::start_in(dir.path(), &args);
    let client = server.client();
    let resumed = client.wait(lsn, WAIT).unwrap();
    assert_eq!(resumed.attempts, 2, "{resumed:?}");
    assert_lost_then_resumed(&client, lsn, &resumed);
    let resumed_answer = answer(&client, &resumed);
    assert!(
        resumed_answer["resumed_from"].as_u64().unwrap() >= saved["done"].as_u64().unwrap(),
        "{resumed_answer} resumed before the checkpoint seen ({saved})"
    );
    // The same computation never interrupted (no checkpoint until the end).
    let whole = client
        .wait(submit_pi(&client, worker, SAMPLES), WAIT)
        .unwrap();
    assert_eq!(whole.attempts, 1);
    assert_same_answer(&resumed_answer, &answer(&client, &whole));
    assert!(
        resumed.usage.fuel < whole.usage.fuel,
        "the resumed run skipped work"
    );
}

#[test]
fn a_leased_job_resumes_on_another_node_from_the_checkpoint_its_lease_carried() {
    let coordinator = Server::coordinator(CLUSTER);
    let mut args = vec!["--slots", "1"];
    args.extend_from_slice(NODE_LIMITS);
    let a = node(&coordinator, "node-a", &args);
    let b = node(&coordinator, "node-b", &args);
    let client = coordinator.client();
    let worker = upload_montecarlo(&client);

    let lsn = submit_pi(&client, worker, EVERY);
    let status = wait_for_checkpoint(&client, lsn);
    let victim = status["node"].as_str().unwrap().to_string();
    let survivor = if victim == "node-a" {
        a.kill();
        b
    } else {
        b.kill();
        a
    };
    let resumed = client.wait(lsn, WAIT).unwrap();
    assert_eq!(resumed.attempts, 2, "{resumed:?}");
    assert_ne!(resumed.node, victim);
    assert_eq!(assert_lost_then_resumed(&client, lsn, &resumed), victim);
    let resumed_answer = answer(&client, &resumed);

    let whole = client
        .wait(submit_pi(&client, worker, SAMPLES), WAIT)
        .unwrap();
    assert_same_answer(&resumed_answer, &answer(&client, &whole));
    assert!(
        resumed.usage.fuel < whole.usage.fuel,
        "the resumed run skipped work"
    );
    drop(survivor);
}
