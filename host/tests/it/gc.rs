//! Garbage collection of the store with real node processes: an unreferenced blob is
//! freed after the grace period and a referenced one never is (including one named
//! by a job submitted while a sweep runs), and a crash in the middle of a sweep leaves
//! a store the next sweep finishes cleanly.

use std::path::{Path, PathBuf};

use serde_json::Value;
use wasmesh_host::client::Client;
use wasmesh_host::model::HashHex;

use crate::Server;
use crate::server::{WAIT, action, eventually, submit, upload_test_guest};

/// A one-second grace period and no automatic sweep: the tests sweep when they say.
const GC: &[&str] = &["--gc-grace", "1s", "--gc-interval", "0s"];

fn file(data_dir: &Path, hash: &HashHex) -> PathBuf {
    let hex = hash.to_string();
    data_dir
        .join("cas")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(hex)
}

fn sweep(client: &Client, dry_run: bool) -> Value {
    client
        .call(
            reqwest::Method::POST,
            &format!("/compute/gc?dry_run={dry_run}"),
            None,
        )
        .unwrap()
}

fn freed(report: &Value) -> Vec<String> {
    report["freed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

/// Waits until a dry run would free every one of `hashes` (their grace has passed);
/// returns that report.
fn until_collectable(client: &Client, hashes: &[HashHex]) -> Value {
    eventually(WAIT, || {
        let report = sweep(client, true);
        let listed = freed(&report);
        hashes
            .iter()
            .all(|h| listed.contains(&h.to_string()))
            .then_some(report)
    })
}

#[test]
fn gc_frees_unreferenced_blobs_after_the_grace_and_never_referenced_ones() {
    let server = Server::start(GC);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let module = HashHex::of(&wasmesh_test_support::guest_bytes(
        wasmesh_test_support::TEST_GUEST,
    ));
    let loose = client
        .put_blob(b"uploaded and never used".to_vec())
        .unwrap();
    // A pending job's input, a finished job's input and output, a retired job's output.
    let pending_input = client.put_blob(b"input of a pending job".to_vec()).unwrap();
    let pending = client
        .submit(
            &{
                let mut a = action(&client, worker, &["progress-then", "sleep", "60000"], None);
                a["input"] = serde_json::json!(pending_input);
                a
            },
            None,
            None,
        )
        .unwrap();
    let finished_input = client
        .put_blob(b"input of a finished job".to_vec())
        .unwrap();
    let finished = client
        .submit(
            &{
                let mut a = action(&client, worker, &["args", "a finished job's output"], None);
                a["input"] = serde_json::json!(finished_input);
                a
            },
            None,
            None,
        )
        .unwrap();
    let output = client.wait(finished, WAIT).unwrap().output;
    let retired = submit(&client, worker, &["args", "the output of a retired job"]);
    let retired_output = client.wait(retired, WAIT).unwrap().output;
    client
        .call(
            reqwest::Method::DELETE,
            &format!("/compute/jobs/{retired}"),
            None,
        )
        .unwrap();

    // The dry run (through the CLI) lists what would go and deletes nothing.
    let report = until_collectable(&client, &[loose, retired_output]);
    let listed = freed(&report);
    for kept in [module, pending_input, finished_input, output] {
        assert!(
            !listed.contains(&kept.to_string()),
            "{kept} is needed: {report}"
        );
    }
    let dry = crate::wasmesh(&["gc", "--dry-run", "--server", &server.url], b"");
    let text = crate::out(&dry);
    assert!(dry.status.success(), "{}", crate::err(&dry));
    assert!(
        text.contains(&loose.to_string()) && text.contains("would free"),
        "{text}"
    );
    assert!(file(&server.data_dir, &loose).is_file());

    let done = sweep(&client, false);
    let gone = freed(&done);
    assert!(
        gone.contains(&loose.to_string()) && gone.contains(&retired_output.to_string()),
        "{done}"
    );
    for hash in [loose, retired_output] {
        assert!(
            !file(&server.data_dir, &hash).exists(),
            "{hash} stays on disk"
        );
    }
    assert_eq!(
        client.needs(&[loose]).unwrap(),
        vec![loose],
        "the row went with the file"
    );
    for kept in [module, pending_input, finished_input, output] {
        assert!(client.blob(&kept).is_ok(), "{kept} must survive");
    }
    assert_eq!(crate::server::job_state(&client, pending), "running");
    let metrics = server.metrics(None);
    let freed_bytes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wasmesh_gc_freed_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        freed_bytes >= done["bytes"].as_u64().unwrap() as f64,
        "{metrics}"
    );
    assert!(freed_bytes > 0.0);
    assert!(metrics.contains("wasmesh_store_bytes "), "{metrics}");
}

/// A blob that a sweep has marked as garbage, named by a job submitted before the
/// sweep deletes anything, stays: the submission marks it used, and a row is deleted
/// only if it is still stale when it is deleted.
#[test]
fn a_job_submitted_during_a_sweep_keeps_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    let data = dir.path().join("data");
    let server = Server::start_in_env(
        &data,
        GC,
        &[("WASMESH_GC_PAUSE_AFTER_MARK", pause.to_str().unwrap())],
    );
    let client = server.client();
    let worker = upload_test_guest(&client);
    let input = client.put_blob(b"named during the sweep".to_vec()).unwrap();
    let loose = client
        .put_blob(b"garbage in the same sweep".to_vec())
        .unwrap();
    until_collectable(&client, &[input, loose]);
    let sweeper = {
        let client = server.client();
        std::thread::spawn(move || sweep(&client, false))
    };
    eventually(WAIT, || pause.exists().then_some(()));
    let mut job = action(&client, worker, &["echo"], None);
    job["input"] = serde_json::json!(input);
    let lsn = client.submit(&job, None, None).unwrap();
    std::fs::remove_file(&pause).unwrap();
    let report = sweeper.join().unwrap();
    let gone = freed(&report);
    assert!(gone.contains(&loose.to_string()), "{report}");
    assert!(!gone.contains(&input.to_string()), "{report}");
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(result.state, "succeeded", "{result:?}");
    assert_eq!(
        client.blob(&result.output).unwrap(),
        b"named during the sweep"
    );
    assert!(file(&data, &input).is_file());
}

/// The process aborts right after the first row a sweep deletes, before that blob's
/// file goes. After a restart nothing needed is missing, and the next sweep deletes
/// the orphaned file with the rest.
#[test]
fn a_crash_in_the_middle_of_a_sweep_leaves_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in_env(dir.path(), GC, &[("WASMESH_GC_ABORT_AFTER", "1")]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let loose: Vec<HashHex> = (0..3)
        .map(|i| client.put_blob(format!("loose {i}").into_bytes()).unwrap())
        .collect();
    until_collectable(&client, &loose);
    let crashed = client.call(reqwest::Method::POST, "/compute/gc", None);
    assert!(
        crashed.is_err(),
        "the sweep aborts the process: {crashed:?}"
    );
    assert!(!server.exited().success());
    // Every loose file is still there; exactly one lost its row.
    assert!(loose.iter().all(|h| file(dir.path(), h).is_file()));

    let server = Server::start_in(dir.path(), GC);
    let client = server.client();
    // (Read, not asked with /cas/needs: a needs check marks what it finds as used.)
    let unheld: Vec<_> = loose.iter().filter(|h| client.blob(h).is_err()).collect();
    assert_eq!(unheld.len(), 1, "one row went before the crash: {unheld:?}");
    // What is needed survived: the worker's module, so it still runs.
    let lsn = submit(&client, worker, &["args", "after the crash"]);
    assert_eq!(client.wait(lsn, WAIT).unwrap().state, "succeeded");
    let report = sweep(&client, false);
    let gone = freed(&report);
    for hash in &loose {
        assert!(gone.contains(&hash.to_string()), "{hash}: {report}");
        assert!(!file(dir.path(), hash).exists());
    }
    assert_eq!(report["rows"], 2, "the two rows left: {report}");
}
