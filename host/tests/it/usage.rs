//! `GET /compute/usage`, the per-tenant usage metrics and `wasmesh usage`: sums of
//! what finished jobs' results say they used, scoped by tenant.

use serde_json::Value;

use crate::Server;
use crate::server::{WAIT, submit, upload_test_guest};
use crate::{out, wasmesh};

const ACME: &str = "acme-key-0123456789";
const GLOBEX: &str = "globex-key-0123456789";
const OPS: &str = "ops-key-0123456789";

fn usage(server: &Server, key: &str, query: &str) -> (u16, Value) {
    let response = server
        .http()
        .get(server.at(&format!("/compute/usage{query}")))
        .header("x-api-key", key)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn usage_sums_the_results_of_each_tenant_and_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "acme = [\"{ACME}\"]\nglobex = [\"{GLOBEX}\"]\n\
             ops = {{ keys = [\"{OPS}\"], role = \"operator\" }}\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--tenants", tenants.to_str().unwrap()]);
    let acme = server.client_with_key(ACME);
    let worker = upload_test_guest(&acme);
    let mut expected = [0u64; 3];
    for args in [
        &["alloc", "4000000"][..],
        &["sleep", "50"],
        &["burn", "20000"],
    ] {
        let result = acme.wait(submit(&acme, worker, args), WAIT).unwrap();
        assert_eq!(result.state, "succeeded", "{result:?}");
        assert_eq!(
            result.usage.memory_byte_seconds,
            result.usage.peak_memory_bytes * result.usage.wall_ms / 1000
        );
        for (sum, n) in expected.iter_mut().zip([
            result.usage.fuel,
            result.usage.wall_ms,
            result.usage.memory_byte_seconds,
        ]) {
            *sum += n;
        }
    }
    let globex = server.client_with_key(GLOBEX);
    let other = upload_test_guest(&globex);
    globex
        .wait(submit(&globex, other, &["noop"]), WAIT)
        .unwrap();

    let (status, own) = usage(&server, ACME, "");
    assert_eq!(status, 200, "{own}");
    let rows = own["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "acme sees itself only: {own}");
    let row = &rows[0];
    assert_eq!(row["tenant"], "acme");
    assert_eq!(row["jobs"], 3);
    let sums = [
        row["fuel"].as_u64().unwrap(),
        row["wall_ms"].as_u64().unwrap(),
        row["memory_byte_seconds"].as_u64().unwrap(),
    ];
    assert_eq!(sums, expected, "the sums of the results' usage");
    assert!(expected[0] > 0 && expected[2] > 0, "{expected:?}");

    let (_, by_worker) = usage(&server, ACME, "?by=worker");
    assert_eq!(by_worker["usage"][0]["worker"], worker.to_string());
    let (_, by_queue) = usage(&server, ACME, "?by=queue");
    assert_eq!(by_queue["usage"][0]["queue_id"], Value::Null, "{by_queue}");
    let (_, later) = usage(&server, ACME, "?from=99999999999999");
    assert_eq!(later["usage"], serde_json::json!([]));
    let (status, bad) = usage(&server, ACME, "?by=planet");
    assert_eq!(
        (status, &bad["error"]["code"]),
        (400, &"invalid_request".into())
    );

    // The operator sees every tenant.
    let (_, all) = usage(&server, OPS, "");
    let names: Vec<&str> = all["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex"]);

    // Per-tenant counters in /metrics, labelled by the configured tenants.
    let metrics = server.metrics(Some(OPS));
    assert!(
        metrics.contains("wasmesh_tenant_jobs_total{tenant=\"acme\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "wasmesh_tenant_fuel_total{{tenant=\"acme\"}} {}",
            expected[0]
        )),
        "{metrics}"
    );

    // The command line shows the same.
    let table = wasmesh(&["usage", "--server", &server.url, "--api-key", ACME], b"");
    assert!(table.status.success());
    let text = out(&table);
    assert!(text.contains("acme") && !text.contains("globex"), "{text}");
    let json = wasmesh(
        &["usage", "--json", "--server", &server.url, "--api-key", OPS],
        b"",
    );
    let parsed: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed["usage"].as_array().unwrap().len(), 2);
}
