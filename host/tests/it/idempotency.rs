//! `Idempotency-Key` on POSTs against the real node: replay of the first response,
//! 422 for another request under the same key, per-tenant scope, durable across a
//! restart, and a coordinator's groups.

use reqwest::blocking::Response;
use serde_json::{Value, json};

use crate::Server;
use crate::server::{WAIT, upload_test_guest};

fn post(
    server: &Server,
    path: &str,
    key: Option<&str>,
    tenant_key: &str,
    body: &Value,
) -> Response {
    let mut request = server
        .http()
        .post(server.at(path))
        .header("x-api-key", tenant_key)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().unwrap()
}

#[test]
fn a_retried_post_with_the_same_key_creates_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = crate::tenants::two_tenants(dir.path());
    let data = tempfile::tempdir().unwrap();
    let args = ["--tenants", tenants.to_str().unwrap()];
    let server = Server::start_in(data.path(), &args);
    let (acme, globex) = ("acme-key-0123456789", "globex-key-0123456789");

    // Queues: the replay answers the first queue, with the same status.
    let first = post(
        &server,
        "/compute/queues",
        Some("q-1"),
        acme,
        &json!({"name": "a"}),
    );
    assert_eq!(first.status(), 201);
    let first: Value = first.json().unwrap();
    let again = post(
        &server,
        "/compute/queues",
        Some("q-1"),
        acme,
        &json!({"name": "a"}),
    );
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().unwrap(), first);
    // Another request under the same key is refused; without a key it creates anew.
    let other = post(
        &server,
        "/compute/queues",
        Some("q-1"),
        acme,
        &json!({"name": "b"}),
    );
    assert_eq!(other.status(), 422);
    assert_eq!(
        other.json::<Value>().unwrap()["error"]["code"],
        "idempotency_key_mismatch"
    );
    let fresh: Value = post(
        &server,
        "/compute/queues",
        None,
        acme,
        &json!({"name": "a"}),
    )
    .json()
    .unwrap();
    assert_ne!(fresh["queue_id"], first["queue_id"]);
    // Keys belong to a tenant: the same key elsewhere is a new request.
    let theirs: Value = post(
        &server,
        "/compute/queues",
        Some("q-1"),
        globex,
        &json!({"name": "a"}),
    )
    .json()
    .unwrap();
    assert_ne!(theirs["queue_id"], first["queue_id"]);

    // Jobs: a retried submission is one job.
    let client = server.client_with_key(acme);
    let worker = upload_test_guest(&client);
    let action = json!({"worker": worker, "args": ["args", "once"]});
    let job: Value = post(&server, "/compute/jobs", Some("job-1"), acme, &action)
        .json()
        .unwrap();
    let replayed: Value = post(&server, "/compute/jobs", Some("job-1"), acme, &action)
        .json()
        .unwrap();
    assert_eq!(replayed, job);
    let lsn = job["lsn"].as_u64().unwrap();
    assert_eq!(client.wait(lsn, WAIT).unwrap().state, "succeeded");
    assert!(client.result(lsn + 1).is_err(), "no second job was created");

    // Durable: after a restart the key still answers the first response.
    server.kill();
    let server = Server::start_in(data.path(), &args);
    let after: Value = post(&server, "/compute/jobs", Some("job-1"), acme, &action)
        .json()
        .unwrap();
    assert_eq!(after, job);
    // A malformed key is a 400.
    let bad = post(
        &server,
        "/compute/jobs",
        Some(&"k".repeat(300)),
        acme,
        &action,
    );
    assert_eq!(bad.status(), 400);
}
