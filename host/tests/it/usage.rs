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

/// `acme` and `globex` are tenants, `ops` the operator.
fn tenants(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "acme = [\"{ACME}\"]\nglobex = [\"{GLOBEX}\"]\n\
             ops = {{ keys = [\"{OPS}\"], role = \"operator\" }}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn usage_sums_the_results_of_each_tenant_and_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
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

#[test]
fn a_price_list_turns_usage_and_storage_time_into_cost() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "currency = \"EUR\"\nfuel = 0.000001\nwall_second = 0.5\n\
         memory_gib_second = 2.0\nstored_gib_hour = 3600.0\n",
    )
    .unwrap();
    // Housekeeping (which charges storage-time) every 100 ms.
    let server = Server::start(&[
        "--tenants",
        tenants.to_str().unwrap(),
        "--prices",
        prices.to_str().unwrap(),
        "--idempotency-retention",
        "400ms",
    ]);
    let acme = server.client_with_key(ACME);
    let worker = upload_test_guest(&acme);
    let result = acme
        .wait(submit(&acme, worker, &["burn", "20000"]), WAIT)
        .unwrap();
    // Globex only stores: it shows with no jobs.
    let globex = server.client_with_key(GLOBEX);
    globex.put_blob(vec![7u8; 1 << 20]).unwrap();
    let stored = |tenant: &str| {
        let (_, all) = usage(&server, OPS, "");
        all["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["tenant"] == tenant)
            .cloned()
    };
    let globex_row = crate::server::eventually(WAIT, || {
        stored("globex").filter(|row| row["stored_byte_seconds"].as_u64() > Some(0))
    });
    assert_eq!(globex_row["jobs"], 0, "{globex_row}");
    let acme_row = crate::server::eventually(WAIT, || {
        stored("acme").filter(|row| row["stored_byte_seconds"].as_u64() > Some(0))
    });
    let cost = &acme_row["cost"];
    assert_eq!(cost["currency"], "EUR", "{acme_row}");
    let gib = (1u64 << 30) as f64;
    let close = |a: &Value, b: f64| (a.as_f64().unwrap() - b).abs() <= 1e-9 * b.max(1.0);
    assert!(
        close(&cost["fuel"], result.usage.fuel as f64 * 0.000001),
        "{acme_row}"
    );
    assert!(close(
        &cost["wall"],
        result.usage.wall_ms as f64 / 1000.0 * 0.5
    ));
    assert!(close(
        &cost["memory"],
        result.usage.memory_byte_seconds as f64 / gib * 2.0
    ));
    let storage = acme_row["stored_byte_seconds"].as_u64().unwrap() as f64 / gib / 3600.0 * 3600.0;
    assert!(close(&cost["storage"], storage), "{acme_row}");
    let parts: f64 = ["fuel", "wall", "memory", "storage"]
        .iter()
        .map(|k| cost[k].as_f64().unwrap())
        .sum();
    assert!(close(&cost["total"], parts));
    // Worker and queue rows have cost but no storage (it belongs to no worker).
    let (_, by_worker) = usage(&server, ACME, "?by=worker");
    assert!(by_worker["usage"][0].get("stored_byte_seconds").is_none());
    assert_eq!(by_worker["usage"][0]["cost"]["currency"], "EUR");
    let table = wasmesh(&["usage", "--server", &server.url, "--api-key", ACME], b"");
    let text = out(&table);
    assert!(
        text.contains("cost_EUR") && text.contains("stored_GiB_h"),
        "{text}"
    );
}

#[test]
fn a_price_list_with_a_negative_price_is_refused_at_start() {
    let err = crate::refused_at_start("--prices", "prices.toml", "fuel = -1.0\n");
    assert!(err.contains("fuel") && err.contains("prices.toml"), "{err}");
}
