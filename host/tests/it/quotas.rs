//! Per-tenant quotas from the tenants file: `max_queued`, `max_store_bytes` and the
//! submit rate, on a node and through a coordinator; each refusal names its quota.

use serde_json::Value;
use wasmesh_host::client::{Client, ClientError};

use crate::Server;
use crate::server::{action, start_blocker, submit, upload_test_guest};

const QUEUED: &str = "queued-key-0123456789";
const ROOMY: &str = "roomy-key-0123456789";
const STORED: &str = "stored-key-0123456789";
const RATED: &str = "rated-key-0123456789";
const CAPPED: &str = "capped-key-0123456789";
const FUELED: &str = "fueled-key-0123456789";

/// Every tenant gets `max_queued = 2` from `[defaults]` (last: in TOML, the keys after
/// a table header belong to it); `roomy` overrides it, `stored`
/// holds at most 100 kB, `rated` may submit 2 jobs at once and then one a minute.
fn tenants(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "queued = [\"{QUEUED}\"]\n\
             roomy = {{ keys = [\"{ROOMY}\"], max_queued = 100 }}\n\
             stored = {{ keys = [\"{STORED}\"], max_store_bytes = 100000 }}\n\
             rated = {{ keys = [\"{RATED}\"], max_queued = 100, submit_rate = 0.016, submit_burst = 2 }}\n\
             capped = {{ keys = [\"{CAPPED}\"], max_queued = 100, max_running = 1 }}\n\
             fueled = {{ keys = [\"{FUELED}\"], max_queued = 100, max_fuel_per_hour = 1000 }}\n\
             \n[defaults]\nmax_queued = 2\n"
        ),
    )
    .unwrap();
    path
}

/// The status, code and message of a refusal.
fn refusal(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String, String) {
    match result {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn batch(client: &Client, worker: wasmesh_host::model::HashHex, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| action(client, worker, &["args", &format!("batch-{i}")], None))
        .collect()
}

#[test]
fn max_queued_refuses_a_submission_whole_and_names_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--tenants", tenants(dir.path()).to_str().unwrap()]);
    let client = server.client_with_key(QUEUED);
    let worker = upload_test_guest(&client);
    let running = start_blocker(&client, worker);
    let (status, code, message) = refusal(client.submit_batch(&batch(&client, worker, 2), None));
    assert_eq!(
        (status, code.as_str()),
        (403, "quota_exceeded"),
        "{message}"
    );
    assert!(
        message.contains("max_queued") && message.contains("is 2") && message.contains("1 in use"),
        "{message}"
    );
    // Nothing of the refused batch was kept: the next job gets the next LSN.
    let second = start_blocker(&client, worker);
    assert_eq!(second, running + 1);
    let (status, code, _) =
        refusal(client.submit(&action(&client, worker, &["noop"], None), None, None));
    assert_eq!((status, code.as_str()), (403, "quota_exceeded"));
    // A finished job frees its place.
    client
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{running}/cancel"),
            None,
        )
        .unwrap();
    client.wait(running, crate::server::WAIT).unwrap();
    submit(&client, worker, &["noop"]);
    // A tenant's own quota wins over the defaults.
    let roomy = server.client_with_key(ROOMY);
    let roomy_worker = upload_test_guest(&roomy);
    roomy
        .submit_batch(&batch(&roomy, roomy_worker, 5), None)
        .unwrap();
}

#[test]
fn max_running_makes_jobs_wait_for_the_tenant_s_own_slot() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let server = Server::start(&["--slots", "2", "--tenants", tenants.to_str().unwrap()]);
    let capped = server.client_with_key(CAPPED);
    let worker = upload_test_guest(&capped);
    let blocker = start_blocker(&capped, worker);
    let waiting = submit(&capped, worker, &["args", "waiting"]);
    // The second slot is free: another tenant's job runs in it to the end...
    let roomy = server.client_with_key(ROOMY);
    let roomy_worker = upload_test_guest(&roomy);
    let other = submit(&roomy, roomy_worker, &["noop"]);
    assert_eq!(
        roomy.wait(other, crate::server::WAIT).unwrap().state,
        "succeeded"
    );
    // ...while the capped tenant's second job waits: it is not refused either.
    assert_eq!(crate::server::job_state(&capped, waiting), "queued");
    capped
        .call(
            reqwest::Method::POST,
            &format!("/compute/jobs/{blocker}/cancel"),
            None,
        )
        .unwrap();
    assert_eq!(
        capped.wait(waiting, crate::server::WAIT).unwrap().state,
        "succeeded"
    );
}

#[test]
fn max_store_bytes_counts_only_what_the_tenant_does_not_hold_yet() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--tenants", tenants(dir.path()).to_str().unwrap()]);
    let stored = server.client_with_key(STORED);
    let first = vec![1u8; 60_000];
    stored.put_blob(first.clone()).unwrap();
    let (status, code, message) = refusal(stored.put_blob(vec![2u8; 60_000]));
    assert_eq!(
        (status, code.as_str()),
        (403, "quota_exceeded"),
        "{message}"
    );
    assert!(
        message.contains("max_store_bytes") && message.contains("100000"),
        "{message}"
    );
    // Bytes it holds already cost nothing again; another tenant has its own room.
    stored.put_blob(first).unwrap();
    let roomy = server.client_with_key(ROOMY);
    roomy.put_blob(vec![2u8; 60_000]).unwrap();
    roomy.put_blob(vec![3u8; 60_000]).unwrap();
}

#[test]
fn the_submit_rate_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--tenants", tenants(dir.path()).to_str().unwrap()]);
    let rated = server.client_with_key(RATED);
    let worker = upload_test_guest(&rated);
    rated.submit_batch(&batch(&rated, worker, 2), None).unwrap();
    let response = server
        .http()
        .post(server.at("/compute/jobs"))
        .header("x-api-key", RATED)
        .json(&action(&rated, worker, &["noop"], None))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=63).contains(&retry), "one job at 0.016/s: {retry}");
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // A batch larger than the burst can never pass: a hard refusal instead.
    let (status, code, message) = refusal(rated.submit_batch(&batch(&rated, worker, 3), None));
    assert_eq!(
        (status, code.as_str()),
        (403, "quota_exceeded"),
        "{message}"
    );
    assert!(message.contains("submit_burst"), "{message}");
}

#[test]
fn quotas_count_across_the_fleet_on_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Server::coordinator(&[
        "--tenants",
        tenants(dir.path()).to_str().unwrap(),
        "--node-key",
        "node-key-0123456789",
    ]);
    // No node: the jobs stay queued in the coordinator's journal.
    let client = coordinator.client_with_key(QUEUED);
    let worker = upload_test_guest(&client);
    client
        .submit_batch(&batch(&client, worker, 2), None)
        .unwrap();
    let (status, code, message) =
        refusal(client.submit(&action(&client, worker, &["noop"], None), None, None));
    assert_eq!(
        (status, code.as_str()),
        (403, "quota_exceeded"),
        "{message}"
    );
    assert!(message.contains("max_queued"), "{message}");
}

#[test]
fn max_fuel_per_hour_refuses_submissions_once_the_hour_s_fuel_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--tenants", tenants(dir.path()).to_str().unwrap()]);
    let fueled = server.client_with_key(FUELED);
    let worker = upload_test_guest(&fueled);
    // Under the limit nothing is refused: this job then burns far more than 1000.
    let burner = submit(&fueled, worker, &["burn", "2000000"]);
    let result = fueled.wait(burner, crate::server::WAIT).unwrap();
    assert!(result.usage.fuel > 1000, "{:?}", result.usage);
    let (status, code, message) =
        refusal(fueled.submit(&action(&fueled, worker, &["noop"], None), None, None));
    assert_eq!(
        (status, code.as_str()),
        (403, "quota_exceeded"),
        "{message}"
    );
    assert!(
        message.contains("max_fuel_per_hour")
            && message.contains("1000")
            && message.contains(&result.usage.fuel.to_string()),
        "{message}"
    );
    // Another tenant's fuel is its own.
    let roomy = server.client_with_key(ROOMY);
    let roomy_worker = upload_test_guest(&roomy);
    submit(&roomy, roomy_worker, &["noop"]);
}

#[test]
fn a_weight_that_is_not_above_zero_is_refused_at_start() {
    let contents = format!("acme = {{ keys = [\"{QUEUED}\"], weight = 0 }}\n");
    let err = crate::refused_at_start("--tenants", "tenants.toml", &contents);
    assert!(err.contains("acme") && err.contains("weight"), "{err}");
}

#[test]
fn a_tenants_file_with_an_unknown_quota_is_refused_at_start() {
    let contents = format!("acme = {{ keys = [\"{QUEUED}\"], max_queue = 5 }}\n");
    let err = crate::refused_at_start("--tenants", "tenants.toml", &contents);
    assert!(err.contains("acme") && err.contains("max_queue"), "{err}");
}
