//! The PostgreSQL journal's own behaviour (the rest of the suite runs on it too, in
//! scripts/test.sh's second pass). These tests need the server scripts/test.sh starts
//! (`WASMESH_TEST_JOURNAL`, its URL); the one that restarts PostgreSQL starts a server
//! of its own (scripts/postgres.sh), so the tests running beside it never see the
//! restart. The SQLite pass skips them (`--skip journal_postgres::`).

use std::process::Command;

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
    let client = coordinator.client();
    let worker = upload_test_guest(&client);
    // Each its own input, so no job is answered from another's cached result.
    let sleeper = |i: usize| {
        action(
            &client,
            worker,
            &["sleep", "100"],
            Some(format!("{i}").as_bytes()),
        )
    };
    let mut lsns: Vec<u64> = (0..30)
        .map(|i| client.submit(&sleeper(i), None, None).unwrap())
        .collect();
    let finished = |lsn: &u64| crate::server::job_state(&client, *lsn) == "succeeded";
    eventually(WAIT, || lsns.iter().any(finished).then_some(()));
    postgres.script("restart");
    // Taking submissions again (the first calls may fail while it reconnects).
    let after = eventually(WAIT, || client.submit(&sleeper(30), None, None).ok());
    lsns.push(after);
    for lsn in &lsns {
        let result = client.wait(*lsn, WAIT).unwrap();
        assert_eq!(result.state.as_str(), "succeeded", "job {lsn}: {result:?}");
    }
    let url = postgres.url.as_str();
    assert_eq!(
        psql(url, "SELECT COUNT(*) FROM jobs WHERE state = 'succeeded'"),
        lsns.len().to_string(),
        "every accepted job finished, once"
    );
    assert_eq!(
        psql(url, "SELECT COUNT(*) FROM usage"),
        lsns.len().to_string(),
        "one result recorded per job"
    );
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
