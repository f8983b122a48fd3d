//! Jobs through a coordinator onto real node processes: fan-out and results read
//! back from the coordinator, a node killed mid-run, a node frozen past its lease
//! (fencing), a coordinator killed and restarted, placement, remote cancel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::{HashHex, JobResult};
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

use crate::Server;
use crate::cluster::{node_state, nodes, signal, wait_for_state};
use crate::server::{WAIT, action, eventually, job_state, upload_test_guest};

/// Heartbeats every 100 ms and a 1.5 s lease: failures show within seconds, while a
/// loaded CI machine does not miss a lease by accident.
pub const CLUSTER: &[&str] = &["--heartbeat-interval", "100ms", "--lease", "1500ms"];

/// A node of `coordinator` with id `id`, once the coordinator lists it ready.
pub fn node(coordinator: &Server, id: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--coordinator", &coordinator.url, "--node-id", id];
    args.extend_from_slice(extra);
    let node = Server::start(&args);
    wait_for_state(coordinator, id, "ready");
    node
}

/// Submits a batch of actions; returns their LSNs in order.
fn submit_batch(client: &Client, actions: Vec<Value>) -> Vec<u64> {
    client.submit_batch(&actions, None).unwrap()
}

fn args_action(worker: HashHex, args: &[&str]) -> Value {
    json!({"worker": worker, "args": args})
}

fn metric(server: &Server, line_prefix: &str) -> f64 {
    server
        .metrics(None)
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn stdout_of(client: &Client, result: &JobResult) -> String {
    String::from_utf8(client.blob(&result.output).unwrap()).unwrap()
}

#[test]
fn jobs_fan_out_to_nodes_and_results_are_read_from_the_coordinator() {
    let coordinator = Server::coordinator(CLUSTER);
    let a = node(&coordinator, "a", &["--slots", "1"]);
    let b = node(&coordinator, "b", &["--slots", "1"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);

    // Four jobs that each hold a slot for a while: both nodes must take some.
    let lsns = submit_batch(
        &client,
        (0..4)
            .map(|i| args_action(worker, &["sleep-then", "300", "args", &format!("t{i}")]))
            .collect(),
    );
    let mut ran_on = BTreeSet::new();
    for (i, lsn) in lsns.iter().enumerate() {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state, "succeeded", "{result:?}");
        assert_eq!(stdout_of(&client, &result), format!("t{i}\n"));
        let placement = result.placement.clone().expect("placement is recorded");
        assert_eq!(placement["node"], Value::String(result.node.clone()));
        assert_eq!(placement["strategy"], "score");
        assert!(placement["factors"]["capacity"].as_f64().unwrap() > 0.0);
        ran_on.insert(result.node);
    }
    assert_eq!(ran_on, BTreeSet::from(["a".to_string(), "b".to_string()]));

    // Inputs travel from the coordinator's store to the node; a large output travels
    // back ahead of its report, a small one inline.
    let input = b"the coordinator holds this input".repeat(1000);
    let echo = client
        .submit(
            &action(&client, worker, &["echo"], Some(&input)),
            None,
            None,
        )
        .unwrap();
    let big = client
        .submit(&args_action(worker, &["big-output", "1000000"]), None, None)
        .unwrap();
    let echoed = client.wait(echo, WAIT).unwrap();
    assert_eq!(client.blob(&echoed.output).unwrap(), input);
    let big = client.wait(big, WAIT).unwrap();
    assert_eq!(big.output_size, 1_000_000);
    let bytes = client.blob(&big.output).unwrap();
    assert_eq!(bytes.len(), 1_000_000);
    assert_eq!(HashHex::of(&bytes), big.output);

    // A node that ran the module holds it (and its compiled artifact) now.
    let module = HashHex::of(&guest_bytes(TEST_GUEST));
    for node in [&a, &b] {
        let shard = module.to_string();
        let path = node
            .data_dir
            .join("cas")
            .join(&shard[..2])
            .join(&shard[2..4])
            .join(&shard);
        assert!(path.exists(), "{} lacks the module", node.url);
    }
    // The nodes' own tenants cannot read what the coordinator's tenants stored.
    let on_node = a.client().blob(&echoed.output);
    assert!(
        on_node.is_err(),
        "a node must not serve coordinator blobs to its clients"
    );
}

#[test]
fn jobs_of_a_killed_node_are_requeued_and_each_succeeds_exactly_once() {
    let coordinator = Server::coordinator(CLUSTER);
    let survivor = node(&coordinator, "survivor", &["--slots", "2"]);
    let victim = node(&coordinator, "victim", &["--slots", "2"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let lsns = submit_batch(
        &client,
        (0..200)
            .map(|i| args_action(worker, &["sleep-then", "25", "args", &format!("job-{i}")]))
            .collect(),
    );
    // Kill the victim while it holds leases, once the run is well under way.
    eventually(WAIT, || {
        let done = metric(
            &coordinator,
            "wasmesh_jobs_finished_total{state=\"succeeded\"}",
        );
        let leased = nodes(&coordinator, None)
            .into_iter()
            .find(|n| n["id"] == "victim")
            .and_then(|n| n["leased"].as_u64())
            .unwrap_or(0);
        (done >= 20.0 && leased > 0).then_some(())
    });
    let killed = std::time::Instant::now();
    victim.kill();
    // Its leases expire within the lease (1.5 s) plus a heartbeat interval (0.1 s) and
    // an expiry tick (0.15 s); the bound leaves room for a loaded machine, and still
    // fails if expiry waited for anything else (a timeout, a restart).
    eventually(WAIT, || {
        (metric(&coordinator, "wasmesh_leases_total{event=\"expired\"}") >= 1.0).then_some(())
    });
    let requeued_after = killed.elapsed();
    assert!(
        requeued_after < Duration::from_millis(1500 + 100 + 150 + 2500),
        "requeued {requeued_after:?} after the kill"
    );
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    for (i, lsn) in lsns.iter().enumerate() {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state, "succeeded", "{result:?}");
        assert_eq!(stdout_of(&client, &result), format!("job-{i}\n"));
        if result.attempts > 1 {
            retried += 1;
            assert_eq!(result.node, "survivor", "a requeued job ran elsewhere");
        }
        *per_node.entry(result.node).or_default() += 1;
    }
    assert!(retried >= 1, "the victim's leased jobs were requeued");
    assert!(
        per_node["survivor"] > 0 && per_node["victim"] > 0,
        "{per_node:?}"
    );
    // One result per job: the completed list holds each LSN once.
    let completed = client
        .call(reqwest::Method::GET, "/compute/jobs/completed", None)
        .unwrap();
    let completed: Vec<u64> = serde_json::from_value(completed["completed"].clone()).unwrap();
    assert_eq!(completed, lsns);
    assert_eq!(
        node_state(&coordinator, "victim").as_deref(),
        Some("unhealthy")
    );
    drop(survivor);
}

#[test]
fn a_frozen_node_s_late_result_is_refused_by_fencing() {
    let coordinator = Server::coordinator(CLUSTER);
    let frozen = node(&coordinator, "frozen", &["--slots", "1"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(
            &args_action(worker, &["sleep-then", "2000", "args", "once"]),
            None,
            None,
        )
        .unwrap();
    eventually(WAIT, || {
        (job_state(&client, lsn) == "running").then_some(())
    });
    signal(&frozen, "STOP");
    wait_for_state(&coordinator, "frozen", "unhealthy");
    // The lease expires; a second node takes the job as attempt 2.
    let _spare = node(&coordinator, "spare", &["--slots", "1"]);
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(result.state, "succeeded", "{result:?}");
    assert_eq!(result.node, "spare");
    assert_eq!(result.attempts, 2);
    // Thawed, the frozen node reports attempt 1 (finished or stopped): refused.
    signal(&frozen, "CONT");
    eventually(WAIT, || {
        (metric(
            &coordinator,
            "wasmesh_leases_total{event=\"rejected_result\"}",
        ) >= 1.0)
            .then_some(())
    });
    let again = client.result(lsn).unwrap().unwrap();
    assert_eq!((again.node.as_str(), again.attempts), ("spare", 2));
    assert_eq!(stdout_of(&client, &again), "once\n");
    wait_for_state(&coordinator, "frozen", "ready");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_coordinator_killed_and_restarted_loses_no_job() {
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(CLUSTER);
    let coordinator = Server::coordinator_in(data.path(), &args);
    let _a = node(&coordinator, "a", &["--slots", "1"]);
    let _b = node(&coordinator, "b", &["--slots", "1"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let lsns = submit_batch(
        &client,
        (0..12)
            .map(|i| args_action(worker, &["sleep-then", "300", "args", &format!("r{i}")]))
            .collect(),
    );
    // Some done, some running, most queued.
    eventually(WAIT, || {
        let done = lsns
            .iter()
            .filter(|l| !matches!(job_state(&client, **l).as_str(), "queued" | "running"))
            .count();
        (done >= 1).then_some(())
    });
    coordinator.kill();
    let coordinator = Server::coordinator_in(data.path(), &args);
    let client = coordinator.client();
    for (i, lsn) in lsns.iter().enumerate() {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state, "succeeded", "{result:?}");
        assert_eq!(stdout_of(&client, &result), format!("r{i}\n"));
    }
    // The worker is still registered: a new job runs without uploading again.
    let after = client
        .submit(&args_action(worker, &["args", "after"]), None, None)
        .unwrap();
    assert_eq!(
        stdout_of(&client, &client.wait(after, WAIT).unwrap()),
        "after\n"
    );
    wait_for_state(&coordinator, "a", "ready");
    wait_for_state(&coordinator, "b", "ready");
}

#[test]
fn placement_honours_labels_capacity_drain_and_locality() {
    // Capacity is the slots alone here: `--prefetch auto` would let the busy gpu node
    // queue the waiting gpu job (reading `running`) if it had just reported a result.
    let coordinator = Server::coordinator(&[CLUSTER, &["--prefetch", "0"]].concat());
    let _gpu = node(&coordinator, "gpu", &["--slots", "1", "--label", "gpu=yes"]);
    let _plain = node(&coordinator, "plain", &["--slots", "1"]);
    let client = coordinator.client();
    let wasm = guest_bytes(TEST_GUEST);
    let module = HashHex::of(&wasm);
    let gpu_worker = client
        .upload_worker(
            &json!({"name": "gpu-job", "module": module, "requires": {"gpu": "yes"}}),
            &[(module, &wasm)],
        )
        .unwrap()
        .worker;
    let plain_worker = upload_test_guest(&client);

    // `requires` honoured.
    for i in 0..3 {
        let lsn = client
            .submit(
                &args_action(gpu_worker, &["args", &i.to_string()]),
                None,
                None,
            )
            .unwrap();
        assert_eq!(client.wait(lsn, WAIT).unwrap().node, "gpu");
    }
    // Locality: with both nodes idle, the one holding the module wins.
    for _ in 0..3 {
        let lsn = client
            .submit(&args_action(plain_worker, &["noop"]), None, None)
            .unwrap();
        let result = client.wait(lsn, WAIT).unwrap();
        assert_eq!(result.node, "gpu", "{:?}", result.placement);
        assert_eq!(result.placement.unwrap()["factors"]["locality"], 1.0);
    }
    // A node without capacity is not chosen: with the gpu node busy, a gpu job waits
    // while other work still runs on the plain node.
    let blocker = client
        .submit(
            &args_action(gpu_worker, &["progress-then", "sleep", "60000"]),
            None,
            None,
        )
        .unwrap();
    eventually(WAIT, || {
        (job_state(&client, blocker) == "running").then_some(())
    });
    let waiting = client
        .submit(&args_action(gpu_worker, &["args", "waited"]), None, None)
        .unwrap();
    let other = client
        .submit(&args_action(plain_worker, &["args", "other"]), None, None)
        .unwrap();
    assert_eq!(client.wait(other, WAIT).unwrap().node, "plain");
    assert_eq!(job_state(&client, waiting), "queued");
    client.cancel(blocker).unwrap();
    let waited = client.wait(waiting, WAIT).unwrap();
    assert_eq!(
        (waited.state.as_str(), waited.node.as_str()),
        ("succeeded", "gpu")
    );

    // Drain honoured: the drained node gets nothing new.
    client
        .call(
            reqwest::Method::POST,
            "/api/v1/cluster/nodes/gpu/drain",
            None,
        )
        .unwrap();
    for i in 0..3 {
        let lsn = client
            .submit(
                &args_action(plain_worker, &["args", &format!("d{i}")]),
                None,
                None,
            )
            .unwrap();
        assert_eq!(client.wait(lsn, WAIT).unwrap().node, "plain");
    }
    // And a job only the drained node could run waits.
    let stuck = client
        .submit(&args_action(gpu_worker, &["args", "stuck"]), None, None)
        .unwrap();
    let probe = client
        .submit(&args_action(plain_worker, &["args", "probe"]), None, None)
        .unwrap();
    client.wait(probe, WAIT).unwrap();
    assert_eq!(job_state(&client, stuck), "queued");
}

#[test]
fn cancel_reaches_running_jobs_on_nodes() {
    let coordinator = Server::coordinator(CLUSTER);
    let _a = node(&coordinator, "a", &["--slots", "1"]);
    let _b = node(&coordinator, "b", &["--slots", "1"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(
            &args_action(worker, &["progress-then", "sleep", "60000"]),
            None,
            None,
        )
        .unwrap();
    eventually(WAIT, || {
        (job_state(&client, lsn) == "running").then_some(())
    });
    client.cancel(lsn).unwrap();
    let result = client.wait(lsn, Duration::from_secs(20)).unwrap();
    assert_eq!(
        (result.state.as_str(), result.outcome.as_str()),
        ("cancelled", "cancelled")
    );

    // A queue spread over both nodes, cancelled as a whole.
    let queue = client
        .call(reqwest::Method::POST, "/compute/queues", Some(&json!({})))
        .unwrap();
    let q = queue["queue_id"].as_u64().unwrap().to_string();
    let mut lsns = Vec::new();
    for _ in 0..4 {
        lsns.push(
            client
                .submit(&args_action(worker, &["sleep", "60000"]), Some(&q), None)
                .unwrap(),
        );
    }
    eventually(WAIT, || {
        let running = lsns
            .iter()
            .filter(|l| job_state(&client, **l) == "running")
            .count();
        (running == 2).then_some(())
    });
    client
        .call(
            reqwest::Method::DELETE,
            &format!("/compute/queues/{q}"),
            None,
        )
        .unwrap();
    for lsn in lsns {
        let result = client.wait(lsn, Duration::from_secs(20)).unwrap();
        assert_eq!(result.state, "cancelled", "{result:?}");
    }
    // Both nodes are free again.
    wait_for_state(&coordinator, "a", "ready");
    wait_for_state(&coordinator, "b", "ready");
}

#[test]
fn a_node_stopped_with_sigterm_finishes_its_work_and_leaves() {
    let coordinator = Server::coordinator(CLUSTER);
    let leaving = node(&coordinator, "leaving", &["--slots", "1"]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    // Placed while only `leaving` exists: it runs one and holds none other (prefetch 0).
    let lsns = submit_batch(
        &client,
        (0..4)
            .map(|i| args_action(worker, &["sleep-then", "400", "args", &format!("s{i}")]))
            .collect(),
    );
    eventually(WAIT, || {
        (job_state(&client, lsns[0]) == "running").then_some(())
    });
    let _stays = node(&coordinator, "stays", &["--slots", "1"]);
    assert!(leaving.terminate(), "the node exits 0 on SIGTERM");
    for (i, lsn) in lsns.iter().enumerate() {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state, "succeeded", "{result:?}");
        assert_eq!(stdout_of(&client, &result), format!("s{i}\n"));
        // Nothing was lost: no attempt was counted for work the node gave back.
        assert_eq!(result.attempts, 1, "{result:?}");
    }
    assert!(
        nodes(&coordinator, None)
            .iter()
            .all(|n| n["id"] != "leaving"),
        "a node that left is deregistered"
    );
    assert_eq!(
        metric(&coordinator, "wasmesh_leases_total{event=\"expired\"}"),
        0.0
    );
}
