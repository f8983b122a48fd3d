//! Workflows: outputs passed between jobs (`output_of`), a map/reduce submitted from
//! a workflow file with `wasmesh dag`, and a queue's completion observed without
//! polling (long-poll and server-sent events).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};

use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::{HashHex, JobResult, content_id};
use wasmesh_test_support::{guest_bytes, guest_path};

use crate::Server;
use crate::scheduling::{CLUSTER, node};
use crate::server::{WAIT, action, api_code, upload_test_guest};

type Counts = BTreeMap<String, u64>;

const SHARDS: [&str; 3] = [
    "the cat sat on the mat",
    "The dog ate the cat's dinner",
    "a mat, a cat, a dog; THE END",
];

/// What the wordcount example should answer for these texts.
fn expected_counts(texts: &[&str]) -> Counts {
    let mut counts = Counts::new();
    for text in texts {
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
    }
    counts
}

fn upload_wordcount(client: &Client) -> HashHex {
    let wasm = guest_bytes("wordcount");
    let module = HashHex::of(&wasm);
    client
        .upload_worker(
            &json!({"name": "wordcount", "module": module}),
            &[(module, &wasm)],
        )
        .unwrap()
        .worker
}

fn counts_of(client: &Client, result: &JobResult) -> Counts {
    assert_eq!(result.state, "succeeded", "{result:?}");
    serde_json::from_slice(&client.blob(&result.output).unwrap()).unwrap()
}

#[test]
fn output_references_pass_outputs_from_job_to_job() {
    let server = Server::start(&["--slots", "2"]);
    let client = server.client();
    let worker = upload_wordcount(&client);
    let maps: Vec<Value> = SHARDS
        .iter()
        .map(|text| action(&client, worker, &["map"], Some(text.as_bytes())))
        .collect();
    let lsns = client.submit_batch(&maps, None).unwrap();
    // The reduce names two maps' outputs as files and the third as its stdin.
    let reduce = json!({
        "worker": worker,
        "args": ["reduce"],
        "files": {"a.json": {"output_of": lsns[0]}, "b.json": {"output_of": lsns[1]}},
        "input": {"output_of": lsns[2]},
    });
    let submitted = client
        .call(reqwest::Method::POST, "/compute/jobs", Some(&reduce))
        .unwrap();
    let reduce_lsn = submitted["lsn"].as_u64().unwrap();
    let result = client.wait(reduce_lsn, WAIT).unwrap();
    assert_eq!(counts_of(&client, &result), expected_counts(&SHARDS));

    // The job's action id is that of the descriptor with the real hashes in place of
    // the references (and no `after`), not of the one submitted.
    let outputs: Vec<HashHex> = lsns
        .iter()
        .map(|lsn| client.result(*lsn).unwrap().unwrap().output)
        .collect();
    let concrete = json!({
        "worker": worker,
        "args": ["reduce"],
        "files": {"a.json": outputs[0], "b.json": outputs[1]},
        "input": outputs[2],
    });
    assert_eq!(result.action, content_id(&concrete).unwrap());
    assert_ne!(submitted["action"], json!(result.action));

    // The same work again, submitted by hash, is answered from the cache, and so is
    // the same reduce by reference.
    let by_hash = client.submit(&concrete, None, None).unwrap();
    let cached = client.wait(by_hash, WAIT).unwrap();
    assert!(cached.cached, "{cached:?}");
    assert_eq!(cached.output, result.output);
    let again = client.submit(&reduce, None, None).unwrap();
    let cached = client.wait(again, WAIT).unwrap();
    assert!(cached.cached, "{cached:?}");
    assert_eq!(cached.output, result.output);
}

#[test]
fn bad_output_references_are_refused_and_failed_ones_never_run() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let unknown = json!({"worker": worker, "input": {"output_of": 999_999}});
    let (status, code) = api_code(client.submit(&unknown, None, None).unwrap_err());
    assert_eq!((status, code.as_str()), (400, "invalid_dependency"));
    for malformed in [
        json!({"output_of": "1"}),
        json!({"output_of": 1, "also": 2}),
        json!({"job": 1}),
    ] {
        let bad = json!({"worker": worker, "files": {"x": malformed}});
        let (status, code) = api_code(client.submit(&bad, None, None).unwrap_err());
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_descriptor"),
            "{bad}"
        );
    }
    // A reference to a job that fails: the dependent fails without running.
    let failing = client
        .submit(&action(&client, worker, &["exit", "3"], None), None, None)
        .unwrap();
    let dependent = client
        .submit(
            &json!({"worker": worker, "args": ["echo"], "input": {"output_of": failing}}),
            None,
            None,
        )
        .unwrap();
    let result = client.wait(dependent, WAIT).unwrap();
    assert_eq!(result.state, "failed");
    assert_eq!(result.attempts, 0, "{result:?}");
    assert!(
        result
            .message
            .as_deref()
            .unwrap_or("")
            .contains(&failing.to_string()),
        "{result:?}"
    );
    // The server is still there for good work.
    let ok = client
        .submit(&action(&client, worker, &["noop"], None), None, None)
        .unwrap();
    assert_eq!(client.wait(ok, WAIT).unwrap().state, "succeeded");
}

/// Writes a workflow file with the shards and the wordcount module; returns its path.
fn write_workflow(dir: &std::path::Path) -> std::path::PathBuf {
    let mut jobs = Vec::new();
    let mut files = serde_json::Map::new();
    for (i, text) in SHARDS.iter().enumerate() {
        let shard = dir.join(format!("shard-{i}.txt"));
        std::fs::write(&shard, text).unwrap();
        jobs.push(json!({
            "name": format!("map-{i}"),
            "worker": "wordcount",
            "args": ["map"],
            "input": {"path": format!("shard-{i}.txt")},
        }));
        files.insert(
            format!("{i}.json"),
            json!({"output_of": format!("map-{i}")}),
        );
    }
    jobs.push(json!({"name": "reduce", "worker": "wordcount", "args": ["reduce"], "files": files}));
    // A job ordered after the reduce without taking its output.
    jobs.push(json!({
        "name": "after-reduce", "worker": "wordcount", "args": ["map"],
        "input": {"text": "done done"}, "after": ["reduce"],
    }));
    let workflow = json!({
        "workers": {"wordcount": {"module": guest_path("wordcount")}},
        "queue": {"name": "wordcount"},
        "jobs": jobs,
    });
    let path = dir.join("wordcount.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&workflow).unwrap()).unwrap();
    path
}

fn run_dag(coordinator: &Server, file: &std::path::Path) -> Value {
    let output = crate::wasmesh(
        &[
            "dag",
            file.to_str().unwrap(),
            "--wait",
            "--json",
            "--server",
            &coordinator.url,
        ],
        b"",
    );
    assert!(output.status.success(), "{}", crate::err(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_map_reduce_workflow_file_runs_across_the_cluster() {
    let coordinator = Server::coordinator(CLUSTER);
    let _a = node(&coordinator, "node-a", &["--slots", "1"]);
    let _b = node(&coordinator, "node-b", &["--slots", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_workflow(dir.path());
    let client = coordinator.client();

    let run = run_dag(&coordinator, &file);
    let results: BTreeMap<String, JobResult> =
        serde_json::from_value(run["results"].clone()).unwrap();
    assert_eq!(results.len(), SHARDS.len() + 2);
    assert!(
        results
            .values()
            .all(|r| r.state == "succeeded" && !r.cached)
    );
    assert_eq!(
        counts_of(&client, &results["reduce"]),
        expected_counts(&SHARDS)
    );
    assert_eq!(
        counts_of(&client, &results["after-reduce"]),
        expected_counts(&["done done"])
    );
    assert_eq!(run["sinks"], json!(["reduce", "after-reduce"]));
    // The reduce was submitted after the maps and started after all of them ended.
    let reduce = &results["reduce"];
    let maps: Vec<&JobResult> = (0..SHARDS.len())
        .map(|i| &results[&format!("map-{i}")])
        .collect();
    assert!(maps.iter().all(|m| m.lsn < reduce.lsn));
    let last_map_end = maps
        .iter()
        .map(|m| m.timing.unwrap().finished_ms)
        .max()
        .unwrap();
    assert!(
        reduce.timing.unwrap().started_ms >= last_map_end,
        "{results:?}"
    );
    let queue = client
        .call(
            reqwest::Method::GET,
            &format!("/compute/queues/{}", run["queue"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert_eq!(queue["counts"]["succeeded"], json!(SHARDS.len() + 2));

    // The same workflow again: the maps and the reduce (whose references resolve to
    // the same hashes) come from the cache; a job with only `after` runs again.
    let again = run_dag(&coordinator, &file);
    let results: BTreeMap<String, JobResult> =
        serde_json::from_value(again["results"].clone()).unwrap();
    for (name, result) in &results {
        assert_eq!(result.cached, name != "after-reduce", "{name}: {result:?}");
        // A cache answer did not run: it has no timing of its own.
        assert_eq!(result.timing.is_none(), result.cached, "{name}: {result:?}");
    }
    assert_eq!(
        counts_of(&client, &results["reduce"]),
        expected_counts(&SHARDS)
    );
    assert_ne!(again["queue"], run["queue"]);

    // A workflow with a cycle is refused before anything is submitted.
    let cyclic = dir.path().join("cycle.toml");
    std::fs::write(
        &cyclic,
        format!(
            "[workers.w]\nid = \"{}\"\n[[jobs]]\nname = \"a\"\nworker = \"w\"\nafter = [\"b\"]\n\
             [[jobs]]\nname = \"b\"\nworker = \"w\"\ninput = {{ output_of = \"a\" }}\n",
            HashHex::empty()
        ),
    )
    .unwrap();
    let output = crate::wasmesh(
        &[
            "dag",
            cyclic.to_str().unwrap(),
            "--server",
            &coordinator.url,
        ],
        b"",
    );
    assert!(!output.status.success());
    assert!(
        crate::err(&output).contains("cycle"),
        "{}",
        crate::err(&output)
    );
}

#[test]
fn queue_completion_is_pushed_by_long_poll_and_server_sent_events() {
    let server = Server::start(&["--slots", "2"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let queue = client
        .call(
            reqwest::Method::POST,
            "/compute/queues/remote",
            Some(&json!({})),
        )
        .unwrap();
    let token = queue["queue_token"].as_str().unwrap().to_string();
    // Jobs that take a while, so the stream shows progress before the end (the
    // assertions hold whichever events it shows).
    let actions: Vec<Value> = (0..4)
        .map(|i| {
            action(
                &client,
                worker,
                &["sleep-then", "300", "echo"],
                Some(format!("{i}").as_bytes()),
            )
        })
        .collect();
    client.submit_batch(&actions, Some(&token)).unwrap();

    let response = server
        .http()
        .get(server.at(&format!("/compute/queues/{token}/events")))
        .timeout(WAIT)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events: Vec<(String, Value)> = Vec::new();
    let mut name = String::new();
    // The stream ends by itself after `complete`.
    for line in BufReader::new(response).lines() {
        let line = line.unwrap();
        if let Some(event) = line.strip_prefix("event: ") {
            name = event.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((name.clone(), serde_json::from_str(data).unwrap()));
        }
    }
    let (last, status) = events.last().unwrap();
    assert_eq!(last, "complete");
    assert_eq!(status["counts"]["succeeded"], json!(4));
    assert_eq!(status["is_complete"], json!(true));
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|(n, s)| n == "progress" && s["is_complete"] == json!(false))
    );
    assert!(!events[..events.len() - 1].is_empty(), "{events:?}");
    // Progress only moves forward: each status differs from the one before it.
    assert!(events.windows(2).all(|w| w[0].1 != w[1].1));

    // The long-poll answers at once for a complete queue, and holds a pending one
    // until it completes.
    let long_poll = || {
        client
            .call(
                reqwest::Method::GET,
                &format!("/compute/queues/{token}?wait_ms=60000"),
                None,
            )
            .unwrap()
    };
    let status = long_poll();
    assert_eq!(status["is_complete"], json!(true));
    client
        .submit_batch(
            &[action(
                &client,
                worker,
                &["sleep-then", "200", "noop"],
                None,
            )],
            Some(&token),
        )
        .unwrap();
    let status = long_poll();
    assert_eq!(status["is_complete"], json!(true), "{status}");
    assert_eq!(status["counts"]["succeeded"], json!(5));
}
