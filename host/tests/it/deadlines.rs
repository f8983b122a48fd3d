//! Deadlines (issue 15): a job that cannot start in time never runs, one running past
//! its finish deadline is stopped (on a node, and through a coordinator's lease),
//! retries count against the same deadline, a queue's deadlines apply to its jobs,
//! and a tenant's jobs nearest their deadlines run first. Each ends as `failed` with
//! outcome `deadline_exceeded`.

use reqwest::Method;
use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::{HashHex, JobResult};

use crate::Server;
use crate::details::details;
use crate::scheduling::{CLUSTER, node};
use crate::server::{WAIT, action, api_code, start_blocker, upload_test_guest};

fn with_deadlines(client: &Client, worker: HashHex, args: &[&str], deadlines: Value) -> Value {
    let mut action = action(client, worker, args, None);
    action["deadlines"] = deadlines;
    action
}

fn assert_missed(result: &JobResult, attempts: u32, what: &str) {
    assert_eq!(result.state, "failed", "{result:?}");
    assert_eq!(result.outcome, "deadline_exceeded", "{result:?}");
    assert_eq!(result.attempts, attempts, "{result:?}");
    let message = result.message.as_deref().unwrap_or_default();
    assert!(message.contains(what), "{message}");
}

#[test]
fn jobs_that_miss_their_deadlines_end_as_deadline_exceeded_on_a_node() {
    let server = Server::start(&["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);

    // The only slot is busy: a job that must start within 300 ms never runs.
    let blocker = start_blocker(&client, worker);
    let waiting = client
        .submit(
            &with_deadlines(&client, worker, &["noop"], json!({"start_within_ms": 300})),
            None,
            None,
        )
        .unwrap();
    let result = client.wait(waiting, WAIT).unwrap();
    assert_missed(&result, 0, "did not start within its deadline (300 ms");
    let d = details(&client, waiting);
    assert_eq!(d["history"], json!([]), "it never ran: {d}");
    let (created, finished) = (
        d["created_ms"].as_i64().unwrap(),
        d["finished_ms"].as_i64().unwrap(),
    );
    assert!(finished - created >= 300, "ended before its deadline: {d}");
    assert_eq!(d["start_by_ms"].as_i64().unwrap() - created, 300);
    client.cancel(blocker).unwrap();
    client.wait(blocker, WAIT).unwrap();

    // A run past its finish deadline is stopped, well before its own minute is up.
    let sleeper = client
        .submit(
            &with_deadlines(
                &client,
                worker,
                &["sleep", "60000"],
                json!({"finish_within_ms": 500}),
            ),
            None,
            None,
        )
        .unwrap();
    let result = client.wait(sleeper, WAIT).unwrap();
    assert_missed(&result, 1, "did not finish within its deadline (500 ms");
    assert!(result.usage.wall_ms < 10_000, "{result:?}");
    let d = details(&client, sleeper);
    assert_eq!(d["history"][0]["outcome"], "deadline_exceeded", "{d}");

    // Retries count against the same deadline: a guest failure (a 50 ms timeout)
    // retried at once, with more retries allowed than fit before it (25 x 50 ms), runs
    // into it on a later attempt.
    let queue = client
        .call(
            Method::POST,
            "/compute/queues",
            Some(&json!({"max_retries": 25, "retry_guest_failures": true})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap()
        .to_string();
    let mut timing_out = with_deadlines(
        &client,
        worker,
        &["sleep", "5000"],
        json!({"finish_within_ms": 700}),
    );
    timing_out["limits"] = json!({"timeout_ms": 50});
    let flaky = client.submit(&timing_out, Some(&queue), None).unwrap();
    let result = client.wait(flaky, WAIT).unwrap();
    assert_eq!(result.outcome, "deadline_exceeded", "{result:?}");
    assert!(result.attempts >= 2, "{result:?}");
    let d = details(&client, flaky);
    let created = d["created_ms"].as_i64().unwrap();
    assert!(d["finished_ms"].as_i64().unwrap() - created >= 700, "{d}");

    // Deadlines that are met change nothing, and are no part of the action's id.
    let plain = action(&client, worker, &["args", "same"], None);
    let timed = with_deadlines(
        &client,
        worker,
        &["args", "same"],
        json!({"finish_within_ms": 60000}),
    );
    let answer = |body: &Value| {
        client
            .call(Method::POST, "/compute/jobs", Some(body))
            .unwrap()
    };
    let (first, second) = (answer(&plain), answer(&timed));
    assert_eq!(first["action"], second["action"]);
    let done = client.wait(second["lsn"].as_u64().unwrap(), WAIT).unwrap();
    assert_eq!(done.state, "succeeded", "{done:?}");

    // Bad deadlines are refused with the contract's error shape.
    for bad in [
        json!({"start_within_ms": 0}),
        json!({"finish_within_ms": 31u64 * 24 * 3600 * 1000}),
        json!({"finish_within": 5}),
        json!("soon"),
    ] {
        let body = with_deadlines(&client, worker, &["noop"], bad.clone());
        let error = client
            .call(Method::POST, "/compute/jobs", Some(&body))
            .unwrap_err();
        assert_eq!(api_code(error), (400, "invalid_descriptor".into()), "{bad}");
        let error = client
            .call(
                Method::POST,
                "/compute/queues",
                Some(&json!({"deadlines": bad})),
            )
            .unwrap_err();
        assert_eq!(api_code(error).0, 400, "{bad}");
    }
}

#[test]
fn a_queues_deadlines_apply_to_its_jobs_and_the_nearest_deadline_runs_first() {
    let server = Server::start(&["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let queue = client
        .call(
            Method::POST,
            "/compute/queues",
            Some(&json!({"deadlines": {"finish_within_ms": 400}})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap()
        .to_string();
    let bounded = client
        .submit(
            &action(&client, worker, &["sleep", "60000"], None),
            Some(&queue),
            None,
        )
        .unwrap();
    assert_missed(&client.wait(bounded, WAIT).unwrap(), 1, "400 ms");
    // A job's own deadline is used over its queue's.
    let own = client
        .submit(
            &with_deadlines(
                &client,
                worker,
                &["sleep", "600"],
                json!({"finish_within_ms": 60000}),
            ),
            Some(&queue),
            None,
        )
        .unwrap();
    assert_eq!(client.wait(own, WAIT).unwrap().state, "succeeded");

    // Behind a busy slot: none, a far deadline, a near one, and none again (same
    // priority). They start nearest deadline first, then those without, oldest first.
    let blocker = start_blocker(&client, worker);
    let submit = |deadlines: Option<u64>| {
        let mut body = action(&client, worker, &["noop"], None);
        if let Some(ms) = deadlines {
            body["deadlines"] = json!({"finish_within_ms": ms});
        }
        client.submit(&body, None, None).unwrap()
    };
    let (none, far, near, later) = (
        submit(None),
        submit(Some(60_000)),
        submit(Some(30_000)),
        submit(None),
    );
    client.cancel(blocker).unwrap();
    let started = |lsn: u64| {
        client.wait(lsn, WAIT).unwrap();
        details(&client, lsn)["history"][0]["started_ms"]
            .as_i64()
            .unwrap()
    };
    let order = [near, far, none, later];
    let times: Vec<i64> = order.iter().map(|lsn| started(*lsn)).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "start order {order:?}: {times:?}"
    );
    let attempts: Vec<u64> = order
        .iter()
        .map(|l| details(&client, *l)["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 1, 1, 1]);
}

#[test]
fn a_coordinator_stops_a_leased_job_at_its_deadline() {
    let coordinator = Server::coordinator(CLUSTER);
    let _node = node(&coordinator, "deadline-node", &["--slots", "1"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let sleeper = client
        .submit(
            &with_deadlines(
                &client,
                worker,
                &["sleep", "60000"],
                json!({"finish_within_ms": 800}),
            ),
            None,
            None,
        )
        .unwrap();
    let result = client.wait(sleeper, WAIT).unwrap();
    assert_missed(&result, 1, "did not finish within its deadline (800 ms");
    assert_eq!(result.node, "deadline-node");
    // The node's only slot is free again: the next job runs.
    let next = client
        .submit(&action(&client, worker, &["noop"], None), None, None)
        .unwrap();
    assert_eq!(client.wait(next, WAIT).unwrap().state, "succeeded");
}

/// Deadlines are in the journal: after a restart, the job its node was running when it
/// was killed runs again and is still stopped at its deadline.
#[test]
fn a_deadline_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let sleeper = client
        .submit(
            &with_deadlines(
                &client,
                worker,
                &["progress-then", "sleep", "60000"],
                json!({"finish_within_ms": 4_000}),
            ),
            None,
            None,
        )
        .unwrap();
    crate::server::eventually(WAIT, || {
        (crate::server::job_state(&client, sleeper) == "running").then_some(())
    });
    server.kill();
    let server = Server::start_in(dir.path(), &["--slots", "1"]);
    let client = server.client();
    let result = client.wait(sleeper, WAIT).unwrap();
    assert_missed(&result, 2, "did not finish within its deadline (4000 ms");
    let d = details(&client, sleeper);
    let outcomes: Vec<&str> = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["node_lost", "deadline_exceeded"], "{d}");
}
