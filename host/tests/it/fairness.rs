//! Weighted fair share between tenants, on a node and through a coordinator: slots
//! split by weight while tenants saturate the fleet, and a tenant flooding it does
//! not make a small tenant wait much longer than it would alone. Times come from the
//! results' `timing` (the node's clock) and the client's clock on the same machine;
//! the assertions are ratios with margins, never raw times.

use wasmesh_host::client::Client;
use wasmesh_host::model::{HashHex, JobResult};

use crate::Server;
use crate::cluster::nodes;
use crate::scheduling::CLUSTER;
use crate::server::{WAIT, action, eventually, upload_test_guest};

const HEAVY: &str = "heavy-key-0123456789";
const LIGHT: &str = "light-key-0123456789";
const FLOOD: &str = "flood-key-0123456789";
const SMALL: &str = "small-key-0123456789";
const OPS: &str = "ops-key-0123456789";
const NODE_KEY: &str = "node-key-0123456789";

/// `heavy` has weight 3, `light` weight 1 (from `[defaults]`), `flood` and `small`
/// weight 1; `ops` is the operator.
fn tenants(dir: &std::path::Path) -> String {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        format!(
            "heavy = {{ keys = [\"{HEAVY}\"], weight = 3 }}\n\
             light = [\"{LIGHT}\"]\n\
             flood = [\"{FLOOD}\"]\n\
             small = [\"{SMALL}\"]\n\
             ops = {{ keys = [\"{OPS}\"], role = \"operator\" }}\n\
             \n[defaults]\nweight = 1\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// Submits `n` jobs that each hold a slot `ms` milliseconds (distinct actions, so the
/// result cache answers none); returns their LSNs and the client's clock just before
/// the submission (Unix ms).
fn sleepers(client: &Client, worker: HashHex, tag: &str, n: usize, ms: u64) -> (Vec<u64>, i64) {
    let actions: Vec<_> = (0..n)
        .map(|i| {
            let id = format!("{tag}-{i}");
            action(client, worker, &["sleep", &ms.to_string(), &id], None)
        })
        .collect();
    let submitted = wasmesh_host::model::RunTiming::now_ms();
    (client.submit_batch(&actions, None).unwrap(), submitted)
}

fn results(client: &Client, lsns: &[u64]) -> Vec<JobResult> {
    lsns.iter()
        .map(|lsn| {
            let result = client.wait(*lsn, WAIT).unwrap();
            assert_eq!(result.outcome, "exited", "{result:?}");
            result
        })
        .collect()
}

/// (started, finished) of each run.
fn spans(results: &[JobResult]) -> Vec<(i64, i64)> {
    results
        .iter()
        .map(|r| {
            let timing = r.timing.expect("a run has timing");
            (timing.started_ms, timing.finished_ms)
        })
        .collect()
}

/// Milliseconds of slot time the runs held within `from..to`.
fn held(spans: &[(i64, i64)], (from, to): (i64, i64)) -> i64 {
    spans
        .iter()
        .map(|(start, end)| (end.min(&to) - start.max(&from)).max(0))
        .sum()
}

/// Both tenants saturate the fleet; returns heavy's slot time over light's within the
/// window where both still had work queued. A third tenant warms every slot first (a
/// node's first runs compile the module, and a tenant charged for that is owed the
/// difference, which is fair share working but not the steady split).
fn split(heavy: &Client, light: &Client, warmer: &Client) -> f64 {
    let worker = upload_test_guest(warmer);
    let (lsns, _) = sleepers(warmer, worker, "warm", 8, 50);
    results(warmer, &lsns);
    let (hw, lw) = (upload_test_guest(heavy), upload_test_guest(light));
    // 120 and 40 jobs of 100 ms on 4 slots: at 3:1 both run out together, ~4 s.
    let (heavy_lsns, _) = sleepers(heavy, hw, "heavy", 120, 100);
    let (light_lsns, _) = sleepers(light, lw, "light", 40, 100);
    let heavy_spans = spans(&results(heavy, &heavy_lsns));
    let light_spans = spans(&results(light, &light_lsns));
    // The steady window: from when both run (plus a settling moment) until the first
    // of the two starts its last job.
    let first = |s: &[(i64, i64)]| s.iter().map(|x| x.0).min().unwrap();
    let last = |s: &[(i64, i64)]| s.iter().map(|x| x.0).max().unwrap();
    let from = first(&heavy_spans).max(first(&light_spans)) + 300;
    let to = last(&heavy_spans).min(last(&light_spans));
    assert!(to - from > 1000, "a steady window of {} ms", to - from);
    let window = (from, to);
    held(&heavy_spans, window) as f64 / held(&light_spans, window) as f64
}

fn assert_three_to_one(ratio: f64) {
    assert!(
        (ratio - 3.0).abs() <= 3.0 * 0.15,
        "weights 3:1 split the slots {ratio:.2}:1"
    );
}

#[test]
fn weights_3_to_1_split_a_node_s_slots_3_to_1() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--tenants", &tenants(dir.path()), "--slots", "4"]);
    let ratio = split(
        &server.client_with_key(HEAVY),
        &server.client_with_key(LIGHT),
        &server.client_with_key(SMALL),
    );
    assert_three_to_one(ratio);
    // /metrics shows each tenant's standing: heavy used about 3x light's slot time.
    let metrics = server.metrics(Some(OPS));
    let charge = |tenant: &str| -> f64 {
        let prefix =
            format!("wasmesh_tenant_fair_share_charge_slot_seconds{{tenant=\"{tenant}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no charge for {tenant}: {metrics}"))
            .parse()
            .unwrap()
    };
    let (heavy, light) = (charge("heavy"), charge("light"));
    assert!(
        heavy > 2.0 * light && light > 1.0,
        "heavy {heavy}, light {light}"
    );
    assert!(
        metrics.contains("wasmesh_tenant_running{tenant=\"heavy\"} 0"),
        "{metrics}"
    );
}

#[test]
fn weights_3_to_1_split_a_fleet_s_slots_3_to_1_through_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let mut args = vec!["--tenants", &tenants, "--node-key", NODE_KEY];
    args.extend_from_slice(CLUSTER);
    let coordinator = Server::coordinator(&args);
    let _nodes = ["f1", "f2"].map(|id| {
        let node = Server::start(&[
            "--coordinator",
            &coordinator.url,
            "--node-id",
            id,
            "--node-key",
            NODE_KEY,
            "--slots",
            "2",
        ]);
        eventually(WAIT, || {
            nodes(&coordinator, Some(OPS))
                .iter()
                .any(|n| n["id"] == id && n["state"] == "ready")
                .then_some(())
        });
        node
    });
    let ratio = split(
        &coordinator.client_with_key(HEAVY),
        &coordinator.client_with_key(LIGHT),
        &coordinator.client_with_key(SMALL),
    );
    assert_three_to_one(ratio);
}

/// The 99th percentile of the small tenant's waits from submission to start.
fn p99_wait(client: &Client, worker: HashHex, tag: &str) -> i64 {
    let (lsns, submitted) = sleepers(client, worker, tag, 20, 100);
    let mut waits: Vec<i64> = spans(&results(client, &lsns))
        .iter()
        .map(|(start, _)| start - submitted)
        .collect();
    waits.sort_unstable();
    waits[(waits.len() * 99).div_ceil(100) - 1]
}

/// A warmed-up server: the test guest uploaded and run once for `client`.
fn warm(client: &Client) -> HashHex {
    let worker = upload_test_guest(client);
    let (lsns, _) = sleepers(client, worker, "warm", 1, 1);
    results(client, &lsns);
    worker
}

/// The measure: tenant A floods 100x more jobs than B (same weight, same
/// cost); B's p99 wait from submit to start is at most 2x what it is when B runs
/// alone on the same fleet.
#[test]
fn a_flood_of_another_tenant_at_most_doubles_a_small_tenant_s_wait() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let args = ["--tenants", tenants.as_str(), "--slots", "4"];
    let alone = {
        let server = Server::start(&args);
        let small = server.client_with_key(SMALL);
        let worker = warm(&small);
        p99_wait(&small, worker, "alone")
    };
    let server = Server::start(&args);
    let (flood, small) = (server.client_with_key(FLOOD), server.client_with_key(SMALL));
    let flood_worker = warm(&flood);
    let small_worker = warm(&small);
    let (flood_lsns, _) = sleepers(&flood, flood_worker, "flood", 2000, 100);
    // The flood has held the fleet for a while (80 jobs done, 2 s on 4 slots) before
    // the small tenant's 20 arrive.
    flood.wait(flood_lsns[79], WAIT).unwrap();
    let flooded = p99_wait(&small, small_worker, "flooded");
    assert!(
        flooded <= 2 * alone.max(1),
        "p99 waits: {flooded} ms flooded, {alone} ms alone ({:.2}x)",
        flooded as f64 / alone as f64
    );
}

/// The fair share's memory survives a restart: charges are rebuilt from the usage
/// ledger, so a tenant that used the node is still behind after it restarts.
#[test]
fn charges_are_rebuilt_from_the_usage_ledger_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = tenants(dir.path());
    let data = dir.path().join("data");
    let args = ["--tenants", tenants.as_str(), "--slots", "2"];
    let charge_of = |server: &Server| -> f64 {
        let metrics = server.metrics(Some(OPS));
        let prefix = "wasmesh_tenant_fair_share_charge_slot_seconds{tenant=\"heavy\"} ";
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map_or(0.0, |v| v.parse().unwrap())
    };
    let before = {
        let server = Server::start_in(&data, &args);
        let heavy = server.client_with_key(HEAVY);
        let worker = upload_test_guest(&heavy);
        let (lsns, _) = sleepers(&heavy, worker, "before", 4, 300);
        results(&heavy, &lsns);
        let charge = charge_of(&server);
        assert!(server.terminate(), "a clean stop");
        charge
    };
    assert!(before >= 1.0, "4 jobs of 300 ms: {before}");
    let server = Server::start_in(&data, &args);
    let after = charge_of(&server);
    // The ledger has the runs' wall time (4 x 300 ms), barely decayed (15 min
    // half-life).
    assert!(
        after >= 1.0 && after <= before * 1.5,
        "before {before}, after the restart {after}"
    );
}
