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
