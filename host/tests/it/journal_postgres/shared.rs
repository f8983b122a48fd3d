//! Several active coordinators sharing one PostgreSQL journal (`--shared`): jobs
//! submitted through any of them run once, a coordinator that dies or freezes loses
//! nothing, and its nodes, its clients and the leader's duties move to the others.

use std::process::Command;

use super::{FAST, Private, each_finished_once, journal_of, psql};
use crate::Server;
use crate::server::{WAIT, action, eventually, upload_test_guest};

/// Two coordinators sharing the journal in a private PostgreSQL server (and a blob
/// directory), two nodes (node `i` with coordinator `nodes_first[i]` first), and a
/// client of each (each with the other second).
struct Shared {
    coordinators: Vec<Server>,
    _nodes: Vec<Server>,
    clients: Vec<wasmesh_host::client::Client>,
}

fn shared_cluster(postgres: &Private, nodes_first: [usize; 2]) -> Shared {
    let cas = postgres.dir.path().join("cas");
    let args = [
        &FAST[..],
        &[
            "--shared",
            "--journal",
            &postgres.url,
            "--cas-dir",
            cas.to_str().unwrap(),
            "--webhook-allow-private",
        ],
    ]
    .concat();
    let coordinators: Vec<Server> = (0..2).map(|_| Server::coordinator(&args)).collect();
    let urls = |first: usize| {
        format!(
            "{},{}",
            coordinators[first].url,
            coordinators[1 - first].url
        )
    };
    let nodes = (0..2)
        .map(|i| {
            Server::start(&[
                "--coordinator",
                &urls(nodes_first[i]),
                "--node-id",
                &format!("s{i}"),
                "--slots",
                "2",
            ])
        })
        .collect();
    let clients = (0..2)
        .map(|i| wasmesh_host::client::Client::new(urls(i), None))
        .collect();
    Shared {
        coordinators,
        _nodes: nodes,
        clients,
    }
}

/// `count` jobs of 20 ms (each its own input), half through each client, in batches of
/// 100; returned once some have finished.
fn submit_through_both(shared: &Shared, count: usize) -> Vec<u64> {
    let workers: Vec<_> = shared.clients.iter().map(upload_test_guest).collect();
    let mut lsns = Vec::with_capacity(count);
    for (n, batch) in (0..count).collect::<Vec<_>>().chunks(100).enumerate() {
        let client = &shared.clients[n % 2];
        let actions: Vec<_> = batch
            .iter()
            .map(|i| {
                action(
                    client,
                    workers[n % 2],
                    &["sleep", "20"],
                    Some(format!("{i}").as_bytes()),
                )
            })
            .collect();
        lsns.extend(client.submit_batch(&actions, None).unwrap());
    }
    let finished = |lsn: &u64| crate::server::job_state(&shared.clients[0], *lsn) == "succeeded";
    eventually(WAIT, || lsns.iter().take(50).any(finished).then_some(()));
    lsns
}

fn sysinfo(url: &str) -> serde_json::Value {
    reqwest::blocking::get(format!("{url}/compute/sysinfo"))
        .and_then(|r| r.json())
        .unwrap()
}

fn leads(url: &str) -> bool {
    sysinfo(url)["journal"]["leader"] == true
}

/// The ids of the nodes registered with the coordinator at `url`, healthy or not.
fn nodes_of(url: &str) -> Vec<String> {
    let nodes: serde_json::Value = reqwest::blocking::get(format!("{url}/api/v1/cluster/nodes"))
        .and_then(|r| r.json())
        .unwrap();
    let list = nodes["nodes"].as_array().cloned().unwrap_or_default();
    list.iter()
        .filter(|n| n["state"] != "unhealthy")
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect()
}

/// Each coordinator takes jobs and nodes; one of them leads; a job submitted through
/// one is read, long-polled and cancelled through the other.
#[test]
fn coordinators_sharing_a_journal_all_take_work_and_one_leads() {
    let postgres = Private::start();
    let shared = shared_cluster(&postgres, [0, 1]);
    let urls: Vec<&str> = shared.coordinators.iter().map(|c| c.url.as_str()).collect();
    eventually(WAIT, || {
        let leaders = urls.iter().filter(|u| leads(u)).count();
        (leaders == 1).then_some(())
    });
    assert!(urls.iter().all(|u| sysinfo(u)["journal"]["shared"] == true));
    eventually(WAIT, || {
        (nodes_of(urls[0]) == ["s0"] && nodes_of(urls[1]) == ["s1"]).then_some(())
    });
    let lsns = submit_through_both(&shared, 200);
    // A long-poll through the coordinator the job was not submitted through is woken
    // by the result written through the other (LISTEN/NOTIFY), long before its wait.
    let other = wasmesh_host::client::Client::new(urls[1], None);
    for lsn in &lsns {
        let result = other.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state.as_str(), "succeeded", "job {lsn}");
    }
    each_finished_once(&other, &postgres.url, &lsns);
    // Both coordinators' nodes ran jobs.
    let nodes = psql(
        &postgres.url,
        "SELECT string_agg(DISTINCT node, ',' ORDER BY node) FROM attempts",
    );
    assert_eq!(nodes, "s0,s1");
    // A cancel through the coordinator a queued job was not submitted through ends it.
    let client = &shared.clients[0];
    let worker = upload_test_guest(client);
    let slow: Vec<_> = (0..8)
        .map(|i| {
            action(
                client,
                worker,
                &["sleep", "3000"],
                Some(format!("slow {i}").as_bytes()),
            )
        })
        .collect();
    let slow = client.submit_batch(&slow, None).unwrap();
    let last = *slow.last().unwrap();
    other.cancel(last).unwrap();
    let result = other.wait(last, WAIT).unwrap();
    assert_eq!(result.state.as_str(), "cancelled", "{result:?}");
    // A job running on the first coordinator's node, cancelled through the second,
    // stops there (it would otherwise succeed after its 3 s).
    let first = slow.first().unwrap();
    let running = eventually(WAIT, || {
        let lsn = psql(
            &postgres.url,
            &format!(
                "SELECT MIN(lsn) FROM jobs WHERE state = 'running' AND lease_node = 's0' \
                 AND lsn BETWEEN {first} AND {last}"
            ),
        );
        lsn.parse::<u64>().ok()
    });
    other.cancel(running).unwrap();
    let result = other.wait(running, WAIT).unwrap();
    assert_eq!(result.state.as_str(), "cancelled", "{result:?}");
    assert_eq!(result.node, "s0", "{result:?}");
}

/// The coordinator that leads is killed mid-run (1,000 jobs submitted through both):
/// every job finishes exactly once, its node and its client move to the survivor
/// (the CLI too), and the survivor leads: the webhook deliveries it made go on from
/// the survivor, every job's event delivered.
#[test]
fn a_killed_coordinator_loses_nothing_and_the_other_takes_its_nodes_and_duties() {
    let postgres = Private::start();
    let mut shared = shared_cluster(&postgres, [0, 1]);
    let first = shared.coordinators[0].url.clone();
    eventually(WAIT, || leads(&first).then_some(()));
    // Subscribed through the one that does not lead: the leader hears of it.
    let receiver = crate::webhooks::Receiver::start(200);
    crate::webhooks::create_webhook(&shared.clients[1], &receiver.url, &["job.succeeded"]);
    let lsns = submit_through_both(&shared, 1000);
    // The leader delivers before it is killed.
    eventually(WAIT, || {
        (!receiver.delivered("job.succeeded").is_empty()).then_some(())
    });
    shared.coordinators.remove(0).kill();
    let survivor = shared.coordinators[0].url.clone();
    eventually(WAIT, || leads(&survivor).then_some(()));
    eventually(WAIT, || (nodes_of(&survivor) == ["s0", "s1"]).then_some(()));
    // The CLI moves too: the dead coordinator first in its list.
    let both = format!("{first},{survivor}");
    let lsn = lsns[0].to_string();
    let out = crate::wasmesh(&["result", &lsn, "--server", &both], b"");
    assert!(out.status.success(), "{}", crate::err(&out));
    each_finished_once(&shared.clients[0], &postgres.url, &lsns);
    let all: std::collections::BTreeSet<u64> = lsns.iter().copied().collect();
    eventually(WAIT, || {
        let delivered: std::collections::BTreeSet<u64> = receiver
            .delivered("job.succeeded")
            .iter()
            .filter_map(|hit| hit.json()["data"]["lsn"].as_u64())
            .collect();
        (delivered == all).then_some(())
    });
}

/// The leading coordinator is frozen (SIGSTOP) past its lease and the takeover time:
/// the other leads, takes its nodes (keeping their leases) and every job finishes
/// exactly once; resumed, the frozen one leads no more and writes nothing that counts.
#[test]
fn a_frozen_coordinator_resumes_without_leading_and_every_job_finishes_once() {
    let postgres = Private::start();
    let shared = shared_cluster(&postgres, [0, 1]);
    let (first, second) = (
        shared.coordinators[0].url.clone(),
        shared.coordinators[1].url.clone(),
    );
    eventually(WAIT, || leads(&first).then_some(()));
    let lsns = submit_through_both(&shared, 1000);
    let pid = shared.coordinators[0].pid().to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    eventually(WAIT, || leads(&second).then_some(()));
    eventually(WAIT, || (nodes_of(&second) == ["s0", "s1"]).then_some(()));
    signal("-CONT");
    assert!(!leads(&first), "a resumed leader leads no more at once");
    each_finished_once(&shared.clients[1], &postgres.url, &lsns);
    assert!(leads(&second) && !leads(&first));
}

/// Sharing a journal, `max_queued` counts the tenant's jobs whichever coordinator took
/// them (the defect: each coordinator counted only its own schedule, so two of them
/// let a tenant queue twice its quota); and a coordinator started without `--shared`
/// on a journal shared coordinators hold is refused at start.
#[test]
fn a_quota_counts_every_coordinator_s_jobs_and_an_unshared_coordinator_is_refused() {
    const KEY: &str = "shared-tenant-key-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let url = journal_of(dir.path());
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!("t = {{ keys = [\"{KEY}\"], max_queued = 3 }}\n"),
    )
    .unwrap();
    let cas = dir.path().join("cas");
    let args = [
        "--shared",
        "--journal",
        &url,
        "--cas-dir",
        cas.to_str().unwrap(),
        "--tenants",
        tenants.to_str().unwrap(),
        "--node-key",
        "shared-node-key-0123456789",
    ];
    let coordinators: Vec<Server> = (0..2).map(|_| Server::coordinator(&args)).collect();
    let (a, b) = (
        coordinators[0].client_with_key(KEY),
        coordinators[1].client_with_key(KEY),
    );
    let worker = upload_test_guest(&a);
    // No node joined: the jobs stay queued.
    let job = |client: &wasmesh_host::client::Client, n: u8| {
        action(client, worker, &["noop"], Some(&[n][..]))
    };
    a.submit_batch(&[job(&a, 1), job(&a, 2)], None).unwrap();
    b.submit(&job(&b, 3), None, None).unwrap();
    match b.submit(&job(&b, 4), None, None) {
        Err(wasmesh_host::client::ClientError::Api {
            status: 403,
            code,
            message,
        }) => assert!(
            code == "quota_exceeded" && message.contains("is 3") && message.contains("3 in use"),
            "{code}: {message}"
        ),
        other => panic!("a fourth job past max_queued = 3: {other:?}"),
    }
    let other = tempfile::tempdir().unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(["coordinator", "--listen", "127.0.0.1:0", "--journal", &url])
        .arg("--data-dir")
        .arg(other.path())
        .output()
        .unwrap();
    let message = crate::err(&refused);
    assert_eq!(refused.status.code(), Some(2), "{message}");
    assert!(
        message.contains("in use by another process") && message.contains("--shared"),
        "{message}"
    );
}

/// A job submitted through a coordinator no node joined is not left behind the other
/// coordinator's backlog (the defect: a coordinator took others' queued jobs only when
/// nothing of its own was runnable, so while jobs kept coming through one coordinator
/// a job submitted through the other waited until they stopped).
#[test]
fn a_job_through_a_coordinator_without_nodes_is_not_left_behind_the_other_s_backlog() {
    let postgres = Private::start();
    let shared = shared_cluster(&postgres, [0, 0]);
    let (busy, lone_client) = (&shared.clients[0], &shared.clients[1]);
    eventually(WAIT, || {
        (nodes_of(&shared.coordinators[0].url).len() == 2).then_some(())
    });
    assert!(nodes_of(&shared.coordinators[1].url).is_empty());
    let worker = upload_test_guest(busy);
    let through_busy = |tag: &str, count: usize| -> Vec<u64> {
        let actions: Vec<_> = (0..count)
            .map(|i| {
                let input = format!("{tag} {i}");
                action(busy, worker, &["sleep", "20"], Some(input.as_bytes()))
            })
            .collect();
        actions
            .chunks(100)
            .flat_map(|chunk| busy.submit_batch(chunk, None).unwrap())
            .collect()
    };
    let first = through_busy("first", 1000);
    let lone = lone_client
        .submit(
            &action(lone_client, worker, &["sleep", "20"], Some(b"lone")),
            None,
            None,
        )
        .unwrap();
    let second = through_busy("second", 600);
    let result = lone_client.wait(lone, WAIT).unwrap();
    assert_eq!(result.state.as_str(), "succeeded", "{result:?}");
    // Jobs submitted after it through the busy coordinator that finished first.
    let overtook = psql(
        &postgres.url,
        &format!(
            "SELECT COUNT(*) FROM jobs WHERE lsn > {lone} AND finished_ms < \
             (SELECT finished_ms FROM jobs WHERE lsn = {lone})"
        ),
    );
    let overtook: usize = overtook.parse().unwrap();
    assert!(
        overtook < 100,
        "{overtook} of 600 later jobs finished before it"
    );
    each_finished_once(busy, &postgres.url, &[first, vec![lone], second].concat());
}
