//! Jobs over real HTTP: outcomes, the result cache, dependencies, cancel, priority,
//! reschedule, the completed list, restarts and concurrent clients.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::Server;
use crate::server::{
    WAIT, action, api_code, eventually, job_state, start_blocker, submit, upload_test_guest,
};

#[test]
fn every_outcome_comes_back_through_http() {
    let server = Server::start(&["--memory", "32MiB"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            action(&client, worker, &["echo"], Some(b"hi")),
            "succeeded",
            "exited",
        ),
        (
            action(&client, worker, &["exit", "4"], None),
            "failed",
            "exited",
        ),
        (
            action(&client, worker, &["panic", "boom"], None),
            "failed",
            "trapped",
        ),
        (
            json!({"worker": worker, "args": ["spin"], "limits": {"fuel": 1000000}}),
            "failed",
            "out_of_fuel",
        ),
        (
            json!({"worker": worker, "args": ["spin"], "limits": {"timeout_ms": 200}}),
            "failed",
            "timed_out",
        ),
        (
            json!({"worker": worker, "args": ["alloc", "67108864"]}),
            "failed",
            "memory_exceeded",
        ),
        (
            json!({"worker": worker, "args": ["big-output", "2000"], "limits": {"output_bytes": 1000}}),
            "failed",
            "output_exceeded",
        ),
    ];
    let lsns: Vec<u64> = cases
        .iter()
        .map(|(a, _, _)| client.submit(a, None, None).unwrap())
        .collect();
    for (lsn, (_, state, outcome)) in lsns.into_iter().zip(&cases) {
        let result = client.wait(lsn, WAIT).unwrap();
        assert_eq!(
            (result.state.as_str(), result.outcome.as_str()),
            (*state, *outcome),
            "job {lsn}: {result:?}"
        );
        assert_eq!(result.lsn, lsn);
        assert_eq!(result.worker, worker);
        assert_eq!(result.attempts, 1);
        assert!(!result.cached);
    }
    let echo = client.wait(1, WAIT).unwrap();
    assert_eq!(client.blob(&echo.output).unwrap(), b"hi");
    assert_eq!(echo.exit_code, Some(0));
    assert!(echo.usage.fuel > 0);
    let panicked = client.wait(3, WAIT).unwrap();
    assert!(
        String::from_utf8(client.blob(&panicked.stderr).unwrap())
            .unwrap()
            .contains("boom")
    );
    assert!(panicked.message.unwrap().contains("unreachable"));
}

#[test]
fn events_are_part_of_the_result() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let lsn = submit(&client, worker, &["emit", "Alert", r#"{"level":2}"#]);
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(
        result.events,
        vec![json!({"event_type": "Alert", "fields": {"level": 2}})]
    );
}

#[test]
fn a_repeated_successful_action_is_answered_from_the_cache() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let echo = action(&client, worker, &["echo"], Some(b"cache me"));
    let first = client
        .wait(client.submit(&echo, None, None).unwrap(), WAIT)
        .unwrap();
    assert!(!first.cached);
    let second_lsn = client.submit(&echo, None, None).unwrap();
    assert_ne!(second_lsn, first.lsn);
    let second = client.wait(second_lsn, WAIT).unwrap();
    assert!(second.cached);
    assert_eq!((second.output, second.action), (first.output, first.action));
    let by_action = client
        .call(
            reqwest::Method::GET,
            &format!("/compute/jobs/{worker}/{}", first.action),
            None,
        )
        .unwrap();
    assert_eq!(by_action["output"], json!(first.output));

    // Failures are not cached: the same failing action runs again.
    let failing = action(&client, worker, &["exit", "1"], None);
    let a = client
        .wait(client.submit(&failing, None, None).unwrap(), WAIT)
        .unwrap();
    let b = client
        .wait(client.submit(&failing, None, None).unwrap(), WAIT)
        .unwrap();
    assert!(!a.cached && !b.cached);
    let metrics = server.metrics(None);
    assert!(metrics.contains("wasmesh_jobs_cached_total 1"), "{metrics}");
}

#[test]
fn batches_and_the_worker_in_the_path() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let batch = json!({"actions": [{"args": ["args", "one"]}, {"args": ["args", "two"]}]});
    let answer = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{worker}"),
            Some(&batch),
        )
        .unwrap();
    let jobs = answer["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for (job, word) in jobs.iter().zip(["one", "two"]) {
        let result = client.wait(job["lsn"].as_u64().unwrap(), WAIT).unwrap();
        assert_eq!(
            client.blob(&result.output).unwrap(),
            format!("{word}\n").as_bytes()
        );
        assert_eq!(json!(result.action), job["action"]);
    }
    let mismatch = json!({"worker": "0".repeat(64), "args": []});
    let err = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{worker}"),
            Some(&mismatch),
        )
        .unwrap_err();
    assert_eq!(api_code(err), (400, "id_mismatch".into()));
}

#[test]
fn missing_inputs_are_asked_for_and_unknown_workers_refused() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let input = wasmesh_host::model::HashHex::of(b"not uploaded yet");
    let response = server
        .http()
        .post(server.at("/compute/jobs"))
        .json(&json!({"worker": worker, "input": input, "args": ["echo"]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().unwrap(), json!({"needs": [input]}));
    let unknown = client
        .submit(&json!({"worker": "1".repeat(64)}), None, None)
        .unwrap_err();
    assert_eq!(api_code(unknown).0, 404);
    let float = client
        .submit(
            &json!({"worker": worker, "limits": {"fuel": 1.5}}),
            None,
            None,
        )
        .unwrap_err();
    assert_eq!(api_code(float), (400, "invalid_descriptor".into()));
}

#[test]
fn invalid_modules_and_id_mismatches_are_refused_at_registration() {
    let server = Server::start(&[]);
    let client = server.client();
    let junk = b"\0asm\x01\0\0\0 junk".to_vec();
    let module = client.put_blob(junk).unwrap();
    let err = client
        .call(
            reqwest::Method::POST,
            "/compute/workers",
            Some(&json!({"name": "bad", "module": module})),
        )
        .unwrap_err();
    assert_eq!(api_code(err), (422, "invalid_module".into()));
    let worker = upload_test_guest(&client);
    let descriptor = client
        .call(
            reqwest::Method::GET,
            &format!("/compute/workers/{worker}"),
            None,
        )
        .unwrap();
    assert_eq!(descriptor["name"], "test-guest");
    let other = "2".repeat(64);
    let err = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/workers/{other}"),
            Some(&descriptor),
        )
        .unwrap_err();
    assert_eq!(api_code(err), (400, "id_mismatch".into()));
    let same = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/workers/{worker}"),
            Some(&descriptor),
        )
        .unwrap();
    assert_eq!(same["worker"], json!(worker));
    let listed = client
        .call(reqwest::Method::GET, "/compute/workers", None)
        .unwrap();
    assert_eq!(listed["workers"][0]["worker"], json!(worker));
    let escape = json!({"name": "w", "module": descriptor["module"], "files": {"../x": descriptor["module"]}});
    let err = client
        .call(reqwest::Method::POST, "/compute/workers", Some(&escape))
        .unwrap_err();
    assert_eq!(api_code(err), (400, "invalid_descriptor".into()));
}

#[test]
fn after_dependencies_wait_for_success_and_fail_with_their_dependency() {
    let server = Server::start(&["--slots", "2"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let slow = submit(&client, worker, &["sleep", "300"]);
    let mut then = action(&client, worker, &["args", "after"], None);
    then["after"] = json!([slow]);
    let dependent = client.submit(&then, None, None).unwrap();
    let first = client.wait(slow, WAIT).unwrap();
    let second = client.wait(dependent, WAIT).unwrap();
    assert_eq!(second.state, "succeeded");
    assert!(first.usage.wall_ms >= 300);

    let failing = submit(&client, worker, &["exit", "2"]);
    let mut doomed = action(&client, worker, &["args", "never"], None);
    doomed["after"] = json!([failing]);
    let doomed = client.submit(&doomed, None, None).unwrap();
    let result = client.wait(doomed, WAIT).unwrap();
    assert_eq!(result.state, "failed");
    assert!(
        result
            .message
            .unwrap()
            .contains(&format!("dependency {failing}"))
    );
    assert_eq!(result.attempts, 0, "it never ran");

    let mut unknown = action(&client, worker, &["noop"], None);
    unknown["after"] = json!([9999]);
    assert_eq!(
        api_code(client.submit(&unknown, None, None).unwrap_err()),
        (400, "invalid_dependency".into())
    );
}

#[test]
fn cancel_priority_reschedule_and_retire() {
    let server = Server::start(&["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let blocker = start_blocker(&client, worker);
    // `low` would hold the only slot for a minute; `high`, submitted after it but
    // raised above it, must run first.
    let low = submit(&client, worker, &["progress-then", "sleep", "60000"]);
    let high = submit(&client, worker, &["args", "high"]);
    let never = submit(&client, worker, &["args", "never"]);
    client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{high}/priority"),
            Some(&json!({"priority": 10})),
        )
        .unwrap();
    client.cancel(never).unwrap();
    let cancelled = client.wait(never, WAIT).unwrap();
    assert_eq!(
        (cancelled.state.as_str(), cancelled.attempts),
        ("cancelled", 0)
    );

    client.cancel(blocker).unwrap();
    let stopped = client.wait(blocker, Duration::from_secs(10)).unwrap();
    assert_eq!(
        (stopped.state.as_str(), stopped.outcome.as_str()),
        ("cancelled", "cancelled")
    );
    let high = client.wait(high, Duration::from_secs(20)).unwrap();
    assert_eq!(high.state, "succeeded");
    assert!(
        client.result(low).unwrap().is_none(),
        "low had to wait for high"
    );
    // The slot `high` used passes to `low` just after high's result is written.
    eventually(WAIT, || {
        (job_state(&client, low) == "running").then_some(())
    });
    let err = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{low}/priority"),
            Some(&json!({"priority": 1})),
        )
        .unwrap_err();
    assert_eq!(api_code(err), (409, "not_queued".into()));
    client.cancel(low).unwrap();
    assert_eq!(
        client.wait(low, Duration::from_secs(10)).unwrap().state,
        "cancelled"
    );

    // Reschedule: a cancelled job runs again; a succeeded one cannot.
    let again = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{never}/reschedule"),
            None,
        )
        .unwrap();
    assert_eq!(again["lsn"], never);
    assert_eq!(client.wait(never, WAIT).unwrap().state, "succeeded");
    let err = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{never}/reschedule"),
            None,
        )
        .unwrap_err();
    assert_eq!(api_code(err), (409, "not_rescheduable".into()));

    let completed = client
        .call(reqwest::Method::GET, "/compute/jobs/completed", None)
        .unwrap();
    assert!(
        completed["completed"]
            .as_array()
            .unwrap()
            .contains(&json!(never))
    );
    client
        .call(
            reqwest::Method::DELETE,
            &format!("/compute/jobs/{never}"),
            None,
        )
        .unwrap();
    let completed = client
        .call(reqwest::Method::GET, "/compute/jobs/completed", None)
        .unwrap();
    assert!(
        !completed["completed"]
            .as_array()
            .unwrap()
            .contains(&json!(never))
    );
}

#[test]
fn reschedule_stops_at_the_retry_limit() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let lsn = submit(&client, worker, &["exit", "1"]);
    client.wait(lsn, WAIT).unwrap();
    // Outside a queue a job has 3 retries: attempts 2, 3 and 4.
    for attempt in 2..=4 {
        let answer = client
            .call(
                reqwest::Method::POST,
                &format!("/compute/jobs/{lsn}/reschedule"),
                None,
            )
            .unwrap();
        assert_eq!(answer["attempts"], attempt - 1);
        let result = eventually(WAIT, || {
            client
                .result(lsn)
                .unwrap()
                .filter(|r| r.attempts == attempt)
        });
        assert_eq!(result.state, "failed");
    }
    let err = client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{lsn}/reschedule"),
            None,
        )
        .unwrap_err();
    assert_eq!(api_code(err), (409, "retry_limit".into()));
}

#[test]
fn a_killed_node_loses_no_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), &["--slots", "1"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let running = start_blocker(&client, worker);
    let queued: Vec<u64> = (0..5)
        .map(|i| submit(&client, worker, &["args", &i.to_string()]))
        .collect();
    server.kill();

    let server = Server::start_in(dir.path(), &["--slots", "2"]);
    let client = server.client();
    for (i, lsn) in queued.iter().enumerate() {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state, "succeeded");
        assert_eq!(
            client.blob(&result.output).unwrap(),
            format!("{i}\n").as_bytes()
        );
    }
    client.cancel(running).unwrap();
    let interrupted = client.wait(running, WAIT).unwrap();
    assert_eq!(
        interrupted.attempts, 2,
        "the interrupted run counted as an attempt"
    );
    let workers = client
        .call(reqwest::Method::GET, "/compute/workers", None)
        .unwrap();
    assert_eq!(
        workers["workers"][0]["worker"],
        json!(worker),
        "workers survive the restart"
    );
}

#[test]
fn sigterm_stops_the_node_gracefully() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    client
        .wait(submit(&client, worker, &["noop"]), WAIT)
        .unwrap();
    assert!(server.terminate(), "the node exits 0 on SIGTERM");
}

#[test]
fn many_clients_submitting_at_once_each_get_their_own_results() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let text = format!("client {t} job {i}");
                        let lsn = client
                            .submit(
                                &action(&client, worker, &["echo"], Some(text.as_bytes())),
                                None,
                                None,
                            )
                            .unwrap();
                        (lsn, text)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let submitted: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut lsns: Vec<u64> = submitted.iter().map(|(lsn, _)| *lsn).collect();
    lsns.sort_unstable();
    lsns.dedup();
    assert_eq!(lsns.len(), 80, "every submission got its own LSN");
    for (lsn, text) in submitted {
        let result = client.wait(lsn, WAIT).unwrap();
        assert_eq!(client.blob(&result.output).unwrap(), text.as_bytes());
    }
}

#[test]
fn a_recording_replays_on_another_server() {
    let source = Server::start(&[]);
    let client = source.client();
    let worker = upload_test_guest(&client);
    let before = submit(&client, worker, &["args", "not recorded"]);
    client.wait(before, WAIT).unwrap();
    let started = client
        .call(reqwest::Method::POST, "/compute/record/start", None)
        .unwrap();
    let texts = ["first recorded", "second recorded"];
    for text in texts {
        let lsn = client
            .submit(
                &action(&client, worker, &["echo"], Some(text.as_bytes())),
                None,
                None,
            )
            .unwrap();
        client.wait(lsn, WAIT).unwrap();
    }
    let stopped = client
        .call(reqwest::Method::POST, "/compute/record/stop", None)
        .unwrap();
    assert_eq!(stopped["recording"], started["recording"]);
    assert_eq!(stopped["actions"], 2);
    let err = client
        .call(reqwest::Method::POST, "/compute/record/stop", None)
        .unwrap_err();
    assert_eq!(api_code(err), (409, "not_recording".into()));

    // The answer names no server path: the operator finds it in the data directory.
    assert!(stopped.get("path").is_none(), "{stopped}");
    let dir = source
        .data_dir
        .join("recordings")
        .join(stopped["recording"].as_str().unwrap());
    let target = Server::start(&[]);
    let output = crate::wasmesh(
        &[
            "replay",
            dir.to_str().unwrap(),
            "--server",
            &target.url,
            "--json",
        ],
        b"",
    );
    assert!(output.status.success(), "{}", crate::err(&output));
    let replayed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let lsns = replayed["jobs"].as_array().unwrap();
    assert_eq!(lsns.len(), 2);
    let target_client = target.client();
    for (lsn, text) in lsns.iter().zip(texts) {
        let result = target_client.wait(lsn.as_u64().unwrap(), WAIT).unwrap();
        assert_eq!(target_client.blob(&result.output).unwrap(), text.as_bytes());
    }
}

#[test]
fn a_long_poll_returns_as_soon_as_the_job_finishes() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let lsn = submit(&client, worker, &["sleep", "400"]);
    let started = std::time::Instant::now();
    let response = server
        .http()
        .get(server.at(&format!("/compute/jobs/{lsn}?wait_ms=30000")))
        .send()
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "one request, answered with the result"
    );
    let result: Value = response.json().unwrap();
    assert_eq!(result["state"], "succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "it did not wait out the whole long-poll"
    );

    let slow = submit(&client, worker, &["sleep", "60000"]);
    let response = server
        .http()
        .get(server.at(&format!("/compute/jobs/{slow}?wait_ms=100")))
        .send()
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "still pending when the long-poll ends"
    );
    client.cancel(slow).unwrap();
}

/// Submit and wait in one round trip: `?wait_ms=N` answers the usual 201 with the
/// job's `result` once it finished within N ms, and without it otherwise.
#[test]
fn a_submission_can_wait_for_its_result_in_the_same_response() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let post = |path: &str, body: &Value| -> (u16, Value) {
        let response = server
            .http()
            .post(server.at(path))
            .json(body)
            .send()
            .unwrap();
        (response.status().as_u16(), response.json().unwrap())
    };
    let (status, body) = post(
        "/compute/jobs?wait_ms=30000",
        &action(&client, worker, &["args", "at once"], None),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["result"]["state"], "succeeded", "{body}");
    assert_eq!(body["result"]["lsn"], body["lsn"]);
    let output: wasmesh_host::model::HashHex =
        body["result"]["output"].as_str().unwrap().parse().unwrap();
    assert_eq!(client.blob(&output).unwrap(), b"at once\n");
    // Not finished in time: the plain answer, and the job goes on.
    let (status, slow) = post(
        "/compute/jobs?wait_ms=50",
        &action(&client, worker, &["sleep", "1000"], None),
    );
    assert_eq!(status, 201, "{slow}");
    assert!(slow.get("result").is_none(), "{slow}");
    let lsn = slow["lsn"].as_u64().unwrap();
    assert_eq!(client.wait(lsn, WAIT).unwrap().state, "succeeded");
    // A batch waits for all of them.
    let batch = json!({"actions": [
        action(&client, worker, &["args", "one"], None),
        action(&client, worker, &["args", "two"], None),
    ]});
    let (status, both) = post("/compute/jobs?wait_ms=30000", &batch);
    assert_eq!(status, 201, "{both}");
    for job in both["jobs"].as_array().unwrap() {
        assert_eq!(job["result"]["state"], "succeeded", "{both}");
    }
    // The CLI's submit --wait uses it.
    let cli = crate::wasmesh(
        &[
            "submit",
            "--server",
            &server.url,
            "--wait",
            &worker.to_string(),
            "--arg",
            "args",
            "--arg",
            "from the CLI",
        ],
        b"",
    );
    assert!(cli.status.success(), "{}", crate::err(&cli));
    assert_eq!(crate::out(&cli), "from the CLI\n");
}
