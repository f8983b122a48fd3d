//! The PostgreSQL journal's own behaviour (the rest of the suite runs on it too, in
//! scripts/test.sh's second pass). These tests need the server scripts/test.sh starts
//! (`WASMESH_TEST_JOURNAL`, its URL); the one that restarts PostgreSQL starts a server
//! of its own (scripts/postgres.sh), so the tests running beside it never see the
//! restart. The SQLite pass skips them (`--skip journal_postgres::`).

use std::process::Command;

mod shared;

use crate::server::{WAIT, action, eventually, journal_args, upload_test_guest};
use crate::{Server, err, wasmesh};

/// The journal URL the harness gives a server on `data_dir`.
fn journal_of(data_dir: &std::path::Path) -> String {
    assert!(
        std::env::var("WASMESH_TEST_JOURNAL").is_ok_and(|url| !url.is_empty()),
        "the journal_postgres:: tests need a PostgreSQL server: run them through scripts/test.sh \
         (or set WASMESH_TEST_JOURNAL)"
    );
    journal_args(&["coordinator"], data_dir)
        .pop()
        .expect("a journal URL")
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .expect("running psql");
    assert!(out.status.success(), "psql: {}", err(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database written by a newer release is refused with a clear error and left as it
/// was (the same rule as the SQLite file's, tested in cli.rs).
#[test]
fn a_journal_in_postgres_written_by_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = journal_of(dir.path());
    Server::coordinator_in(dir.path(), &[]).kill();
    let version: i64 = psql(&url, "SELECT version FROM wasmesh_schema")
        .parse()
        .unwrap();
    assert!(version >= 1, "the journal records its schema version");
    psql(&url, "UPDATE wasmesh_schema SET version = version + 1");
    let data_dir = dir.path().to_str().unwrap();
    let refused = wasmesh(
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
            "--journal",
            &url,
        ],
        b"",
    );
    assert_eq!(refused.status.code(), Some(2), "{}", err(&refused));
    let said = err(&refused);
    assert!(said.contains("newer release"), "{said}");
    assert!(said.contains(&format!("version {}", version + 1)), "{said}");
    assert_eq!(
        psql(&url, "SELECT version FROM wasmesh_schema"),
        (version + 1).to_string(),
        "left as it was"
    );
}

/// Two journals in one database, each in its own schema, see nothing of each other.
#[test]
fn journals_in_their_own_schemas_share_a_database_and_nothing_else() {
    let (first, second) = (Server::start(&[]), Server::start(&[]));
    let client = first.client();
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(
            &action(&client, worker, &["echo"], Some(b"one")),
            None,
            None,
        )
        .unwrap();
    client.wait(lsn, WAIT).unwrap();
    let url = journal_of(&first.data_dir);
    assert_eq!(psql(&url, "SELECT COUNT(*) FROM jobs"), "1");
    assert_eq!(
        psql(&journal_of(&second.data_dir), "SELECT COUNT(*) FROM jobs"),
        "0"
    );
    assert!(
        second
            .client()
            .wait(lsn, std::time::Duration::ZERO)
            .is_err()
    );
}

/// A PostgreSQL server of a test's own, stopped and deleted when dropped.
struct Private {
    dir: tempfile::TempDir,
    url: String,
}

impl Private {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wasmesh-postgres-")
            .tempdir_in("/tmp")
            .unwrap();
        let started = Self::run("start", dir.path());
        let url = String::from_utf8_lossy(&started.stdout).trim().to_string();
        Self { dir, url }
    }

    fn script(&self, command: &str) {
        Self::run(command, self.dir.path());
    }

    fn run(command: &str, dir: &std::path::Path) -> std::process::Output {
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/postgres.sh"
            ))
            .arg(command)
            .arg(dir)
            .output()
            .expect("running scripts/postgres.sh");
        assert!(out.status.success(), "postgres.sh {command}: {}", err(&out));
        out
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../scripts/postgres.sh"
            ))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// Pins the reconnection: a restart of PostgreSQL under a running cluster (a
/// coordinator and two nodes, jobs running) loses no accepted job and doubles none;
/// the coordinator makes a new connection and takes submissions again.
#[test]
fn a_cluster_rides_out_a_restart_of_postgresql() {
    let postgres = Private::start();
    let coordinator = Server::coordinator(&[
        "--heartbeat-interval",
        "100ms",
        "--lease",
        "3s",
        "--journal",
        &postgres.url,
    ]);
    let _nodes: Vec<Server> = (0..2)
        .map(|i| {
            Server::start(&[
                "--coordinator",
                &coordinator.url,
                "--node-id",
                &format!("n{i}"),
                "--slots",
                "2",
            ])
        })
        .collect();
    ride_out_a_restart(&postgres, &coordinator.client(), 30);
}

/// Submits `jobs` jobs of 100 ms through `client`, restarts the server once one has
/// finished, submits one more once the server takes submissions again (the first
/// calls may fail while it reconnects), and checks every job finished, each once.
fn ride_out_a_restart(postgres: &Private, client: &wasmesh_host::client::Client, jobs: usize) {
    let worker = upload_test_guest(client);
    // Each its own input, so no job is answered from another's cached result.
    let sleeper = |i: usize| {
        action(
            client,
            worker,
            &["sleep", "100"],
            Some(format!("{i}").as_bytes()),
        )
    };
    let mut lsns: Vec<u64> = (0..jobs)
        .map(|i| client.submit(&sleeper(i), None, None).unwrap())
        .collect();
    let finished = |lsn: &u64| crate::server::job_state(client, *lsn) == "succeeded";
    eventually(WAIT, || lsns.iter().any(finished).then_some(()));
    postgres.script("restart");
    lsns.push(eventually(WAIT, || {
        client.submit(&sleeper(jobs), None, None).ok()
    }));
    each_finished_once(client, &postgres.url, &lsns);
}

/// Pins the lone owner of a journal: a second process on the same schema would
/// schedule the same jobs from its own memory (several active coordinators are not
/// built yet), so it is refused at start, as on the same SQLite file; once the first
/// is gone (its session, and the lock with it), another starts on that journal.
#[test]
fn a_second_process_on_the_same_journal_is_refused() {
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = journal_of(dir.path());
    let first = Server::coordinator_in(dir.path(), &[]);
    let other_dir = other.path().to_str().unwrap();
    // Through the environment this time (WASMESH_JOURNAL, as deployments set it).
    let refused = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            other_dir,
        ])
        .env("WASMESH_JOURNAL", &url)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{}", err(&refused));
    assert!(
        err(&refused).contains("in use by another process"),
        "{}",
        err(&refused)
    );
    first.kill();
    // Its server session ends a moment after the process: wait until the lock is free.
    let key = "hashtextextended('wasmesh journal ' || current_schema(), 0)";
    eventually(WAIT, || {
        let free = format!("SELECT pg_try_advisory_lock({key}) AND pg_advisory_unlock({key})");
        (psql(&url, &free) == "t").then_some(())
    });
    let taken_over = Server::coordinator_in(other.path(), &["--journal", &url]);
    let health = taken_over
        .http()
        .get(taken_over.at("/health"))
        .send()
        .unwrap();
    assert!(health.status().is_success());
}

/// Pins the call timeout: a PostgreSQL backend that stops answering (SIGSTOP: its
/// socket stays open, so no TCP timeout fires) fails the call waiting on it after 30 s
/// instead of holding the journal forever; the coordinator then connects again and
/// answers as before.
#[test]
fn a_frozen_database_fails_calls_instead_of_hanging_them() {
    let postgres = Private::start();
    let coordinator = Server::coordinator(&["--journal", &postgres.url]);
    let _node = Server::start(&["--coordinator", &coordinator.url]);
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    let backends = psql(
        &postgres.url,
        "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name = 'wasmesh'",
    );
    assert!(!backends.is_empty(), "the coordinator's connection");
    let signal = |name: &str| {
        for pid in backends.split(' ') {
            let sent = Command::new("kill").args([name, pid]).status().unwrap();
            assert!(sent.success(), "kill {name} {pid}");
        }
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let frozen = client.submit(&action(&client, worker, &["echo"], None), None, None);
    let waited = started.elapsed();
    signal("-CONT");
    let (status, _) = crate::server::api_code(frozen.expect_err("no answer from the journal"));
    assert_eq!(status, 500);
    assert!(
        waited < std::time::Duration::from_secs(50),
        "failed after {waited:?}"
    );
    let lsn = eventually(WAIT, || {
        client
            .submit(
                &action(&client, worker, &["echo"], Some(b"again")),
                None,
                None,
            )
            .ok()
    });
    assert_eq!(client.wait(lsn, WAIT).unwrap().state.as_str(), "succeeded");
}

/// A standby coordinator on a free port of 127.0.0.1, waiting for the journal at `url`:
/// its process, its URL, and (once it owns the journal and listens) its first line.
struct Standby {
    child: std::process::Child,
    url: String,
    listening: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Standby {
    fn start(url: &str, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
            .args([
                "coordinator",
                "--standby",
                "--listen",
                &listen,
                "--journal",
                url,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            url: format!("http://{listen}"),
            listening,
            _dir: dir,
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The failover tests' timings: heartbeats every 100 ms, leases of 2 s, a takeover
/// after 2 s without a beat.
const FAST: [&str; 6] = [
    "--heartbeat-interval",
    "100ms",
    "--lease",
    "2s",
    "--takeover-after",
    "2s",
];

/// The cluster of the failover tests: a coordinator owning the journal in a private
/// PostgreSQL server, a standby sharing its blob directory, two nodes that know both,
/// and a client of both.
fn failover_cluster(
    postgres: &Private,
) -> (Server, Standby, Vec<Server>, wasmesh_host::client::Client) {
    // The standby shares the blob directory too.
    let cas = postgres.dir.path().join("cas");
    let cas = cas.to_str().unwrap();
    let shared = [&FAST[..], &["--cas-dir", cas]].concat();
    let first = Server::coordinator(&[&shared[..], &["--journal", &postgres.url]].concat());
    let standby = Standby::start(&postgres.url, &shared);
    let both = format!("{},{}", first.url, standby.url);
    let nodes = (0..2)
        .map(|i| {
            Server::start(&[
                "--coordinator",
                &both,
                "--node-id",
                &format!("f{i}"),
                "--slots",
                "2",
            ])
        })
        .collect();
    (
        first,
        standby,
        nodes,
        wasmesh_host::client::Client::new(&both, None),
    )
}

/// Submits `count` jobs of 20 ms in batches of 100 (each its own input), returns them
/// once some have finished.
fn submit_many(client: &wasmesh_host::client::Client, count: usize) -> Vec<u64> {
    let worker = upload_test_guest(client);
    let mut lsns = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(100) {
        let actions: Vec<_> = batch
            .iter()
            .map(|i| {
                action(
                    client,
                    worker,
                    &["sleep", "20"],
                    Some(format!("{i}").as_bytes()),
                )
            })
            .collect();
        lsns.extend(client.submit_batch(&actions, None).unwrap());
    }
    let finished = |lsn: &u64| crate::server::job_state(client, *lsn) == "succeeded";
    eventually(WAIT, || lsns.iter().take(50).any(finished).then_some(()));
    lsns
}

/// Every job finished, each once: one succeeded row per job, one usage row per ended
/// attempt (written with its result or its retry), no attempt left open.
fn each_finished_once(client: &wasmesh_host::client::Client, url: &str, lsns: &[u64]) {
    for lsn in lsns {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state.as_str(), "succeeded", "job {lsn}: {result:?}");
    }
    let n = lsns.len().to_string();
    assert_eq!(
        psql(url, "SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'"),
        n
    );
    // Every attempt is billed once (a retried one too: issue 25, item 7).
    assert_eq!(
        psql(url, "SELECT COUNT(*) FROM usage"),
        psql(
            url,
            "SELECT COUNT(*) FROM attempts WHERE ended_ms IS NOT NULL"
        ),
        "one usage row an ended attempt"
    );
    assert_eq!(psql(url, "SELECT COUNT(DISTINCT lsn) FROM usage"), n);
    assert_eq!(
        psql(url, "SELECT COUNT(*) FROM attempts WHERE ended_ms IS NULL"),
        "0",
        "no attempt left open"
    );
}

/// The owner of the journal is killed mid-run (1,000 jobs submitted through both
/// coordinators' client): the standby takes the journal over, the nodes and the
/// client move to it, and every job finishes exactly once.
#[test]
fn a_standby_takes_over_from_a_killed_coordinator_and_every_job_finishes_once() {
    let postgres = Private::start();
    let (first, standby, _nodes, client) = failover_cluster(&postgres);
    let lsns = submit_many(&client, 1000);
    first.kill();
    let line = standby
        .listening
        .recv_timeout(WAIT)
        .expect("the standby took over");
    assert!(line.contains(&standby.url), "{line}");
    each_finished_once(&client, &postgres.url, &lsns);
}

/// The owner is frozen (SIGSTOP) past the takeover time: the standby ends its session
/// and takes over; resumed, the frozen coordinator finds the journal another's and
/// exits (status 3) without writing to it; every job finishes exactly once. Pins a
/// defect it found: a session ended during a COMMIT left the connection refusing every
/// later call (its beat included), so the resumed owner never noticed and never exited.
#[test]
fn a_frozen_coordinator_is_taken_over_and_exits_when_it_resumes() {
    let postgres = Private::start();
    let (first, standby, _nodes, client) = failover_cluster(&postgres);
    let lsns = submit_many(&client, 300);
    let pid = first.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let line = standby
        .listening
        .recv_timeout(WAIT)
        .expect("the standby took over");
    assert!(line.contains(&standby.url), "{line}");
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Not first.exited() alone: an owner that never gives up must fail the test, not
    // hang it.
    let (tx, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(first.exited().code()));
    let code = exited.recv_timeout(WAIT).expect("the resumed owner exits");
    assert_eq!(code, Some(3), "the resumed owner gives up");
    each_finished_once(&client, &postgres.url, &lsns);
}

/// The same restart under a lone node (its own slots run the jobs): no job is failed
/// or left pending by it; the results the journal could not take are recorded once it
/// answers, each once.
#[test]
fn a_lone_node_rides_out_a_restart_of_postgresql() {
    let postgres = Private::start();
    let node = Server::start(&["--journal", &postgres.url, "--slots", "2"]);
    ride_out_a_restart(&postgres, &node.client(), 20);
}
