//! The command line as a newcomer meets it: pipes into `head`, and `--help`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::server::{Server, submit, upload_test_guest};
use crate::{err, out, wasmesh};
use wasmesh_test_support::{TEST_GUEST, guest_path};

/// Runs the binary with a stdout pipe whose reader is already gone, as `| head` leaves
/// it once head has its lines; returns (exit code, stderr).
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running wasmesh");
    (output.status.code(), err(&output))
}

/// Regression: `wasmesh result 1 | head` panicked in `println!` with a backtrace when
/// the pipe closed; a closed stdout now ends the command quietly.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let server = Server::start(&[]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let lsn = submit(&client, worker, &["args", "hello"]);
    client.wait(lsn, Duration::from_secs(30)).unwrap();
    let lsn = lsn.to_string();
    for args in [
        vec!["result", &lsn, "--server", &server.url],
        vec!["result", &lsn, "--output", "--server", &server.url],
    ] {
        let (code, stderr) = with_closed_stdout(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
    let guest = guest_path(TEST_GUEST).display().to_string();
    let (code, stderr) = with_closed_stdout(&["exec", &guest, "args", "hi"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Regression: `wasmesh coordinator --help` called it "the registry of node hosts"
/// although it schedules every job of its fleet.
#[test]
fn the_coordinator_is_described_as_the_fleet_scheduler() {
    let listing = wasmesh(&["--help"], b"");
    let help = out(&listing);
    let line = help
        .lines()
        .find(|l| l.trim_start().starts_with("coordinator"))
        .expect("coordinator is listed");
    assert!(line.contains("scheduler"), "{line}");
    assert!(!help.contains("registry of node hosts"), "{help}");
    let long = out(&wasmesh(&["coordinator", "--help"], b""));
    assert!(
        long.contains("leases each runnable one to a node"),
        "{long}"
    );
}

/// `wasmesh new` makes a crate that builds outside the repository and runs in the
/// sandbox: built with the same cargo as this test, against this checkout's SDK.
#[test]
fn a_new_job_scaffolded_elsewhere_builds_and_runs_in_the_sandbox() {
    use crate::{err, out, wasmesh};
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("greeter");
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    let made = wasmesh(
        &[
            "new",
            "greeter",
            "--path",
            crate_dir.to_str().unwrap(),
            "--sdk-path",
            sdk.to_str().unwrap(),
        ],
        b"",
    );
    assert!(made.status.success(), "{}", err(&made));
    for file in [
        "Cargo.toml",
        "src/main.rs",
        ".cargo/config.toml",
        "README.md",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file}");
    }
    // A second time refuses to write over it.
    let again = wasmesh(
        &["new", "greeter", "--path", crate_dir.to_str().unwrap()],
        b"",
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(err(&again).contains("not empty"), "{}", err(&again));

    // Its own `cargo build --release`: the target comes from its .cargo/config.toml.
    // The guests' target directory is shared so the SDK's dependencies are built once.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", err(&build));
    let module = target.join("wasm32-wasip1/release/greeter.wasm");
    let module = module.to_str().unwrap();

    let ran = wasmesh(&["exec", module], br#"{"name":"fleet","times":2}"#);
    assert!(ran.status.success(), "{}", err(&ran));
    assert_eq!(out(&ran), r#"{"greeting":"Hello, fleet! Hello, fleet!"}"#);
    let refused = wasmesh(&["exec", module], br#"{"name":""}"#);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        err(&refused).contains("a name is required"),
        "{}",
        err(&refused)
    );
}

/// A data directory whose journal a newer release wrote is refused at start, with a
/// message that says so, and left as it was.
#[test]
fn a_node_refuses_a_journal_written_by_a_newer_release() {
    use crate::{err, wasmesh};
    let dir = tempfile::tempdir().unwrap();
    // About the SQLite file: not switched to PostgreSQL.
    crate::Server::start_in_env(dir.path(), &[], &[("WASMESH_TEST_JOURNAL", "")]).kill();
    let db = dir.path().join("wasmesh.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert!(version >= 1, "a journal records its schema version");
    conn.pragma_update(None, "user_version", version + 1)
        .unwrap();
    drop(conn);
    let data_dir = dir.path().to_str().unwrap();
    let refused = wasmesh(
        &["node", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        b"",
    );
    assert_eq!(refused.status.code(), Some(2));
    let said = err(&refused);
    assert!(said.contains("newer release"), "{said}");
    assert!(said.contains(&format!("version {}", version + 1)), "{said}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let kept: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(kept, version + 1, "left as it was");
}

/// A `--journal` that is not a PostgreSQL URL is refused before anything starts, with
/// what it must be; an unreachable server is refused at start with why.
#[test]
fn a_journal_that_is_not_a_postgres_url_is_refused() {
    use crate::{err, wasmesh};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let base = [
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
    ];
    let refused = wasmesh(
        &[&base[..], &["--journal", "/tmp/journal.db"]].concat(),
        b"",
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        err(&refused).contains("postgres:// URL"),
        "{}",
        err(&refused)
    );
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://wasmesh@127.0.0.1:{port}/postgres");
    let unreachable = wasmesh(&[&base[..], &["--journal", &url]].concat(), b"");
    assert_ne!(unreachable.status.code(), Some(0));
    assert!(
        err(&unreachable).contains("journal"),
        "{}",
        err(&unreachable)
    );
}
