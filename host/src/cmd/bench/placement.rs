//! `wasmesh bench placement`: placement decisions with simulated nodes, memory per
//! queued job, and the whole placement path on a real coordinator journal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::json;
use wasmesh_host::engine::{Engine, NodeConfig};
use wasmesh_host::model::HashHex;

use super::{TRIVIAL_WASM, resident_bytes};

/// `wasmesh bench placement`: placement in process with simulated nodes (registered in
/// the fleet, never contacted) and a real coordinator journal.
pub fn run(nodes: usize, jobs: usize) -> anyhow::Result<()> {
    use wasmesh_host::cluster::placement::{Demand, NodeView, Placer, Strategy, Weights};
    use wasmesh_host::cluster::protocol::Registration;
    use wasmesh_host::cluster::{CoordinatorConfig, Fleet};
    use wasmesh_host::engine::ActionSubmission;

    println!("wasmesh bench placement: {nodes} simulated nodes, {jobs} queued jobs");
    // 1. The decision alone: filter + score over NodeViews.
    let mut views: Vec<NodeView> = (0..nodes)
        .map(|i| {
            let mut labels = std::collections::BTreeMap::new();
            labels.insert("zone".to_string(), ["a", "b", "c"][i % 3].to_string());
            labels.insert("cost_per_hour".to_string(), format!("{}", 1 + i % 5));
            NodeView::new(format!("sim-{i:05}"), 8, labels)
        })
        .collect();
    let demand = |i: usize| Demand {
        requires: std::collections::BTreeMap::new(),
        limits: Default::default(),
        module: HashHex([(i % 7) as u8; 32]),
        inputs: Vec::new(),
    };
    for strategy in [Strategy::Score, Strategy::LeastLoaded, Strategy::RoundRobin] {
        let mut placer = Placer::new(strategy, Weights::default(), Duration::from_secs(3600));
        for view in &mut views {
            view.leased = 0;
        }
        let start = Instant::now();
        let mut placed = 0;
        for i in 0..jobs {
            if let Some(decision) = placer.choose(&views, &demand(i), Instant::now()) {
                let view = &mut views[decision.index];
                view.leased = (view.leased + 1) % 8;
                placed += 1;
            }
        }
        let elapsed = start.elapsed();
        ensure!(placed == jobs, "only {placed} of {jobs} placed");
        println!(
            "  decision only, {:<13} {:>10.0} decisions/s   ({:.2} us each)",
            strategy.name(),
            jobs as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / jobs as f64
        );
    }

    // 2. The whole path on a coordinator: queue the jobs in the journal, then place
    //    them all (read the job, filter + score, write the leases, fill the mailboxes).
    let dir = tempfile::tempdir()?;
    let fleet = Arc::new(Fleet::new(CoordinatorConfig {
        lease: Duration::from_secs(3600),
        ..CoordinatorConfig::default()
    }));
    let slots = jobs.div_ceil(nodes) as u64;
    for i in 0..nodes {
        fleet.register(
            Registration {
                id: format!("sim-{i:05}"),
                address: format!("http://127.0.0.1:{}", 20000 + i),
                slots,
                labels: Default::default(),
                limits: None,
            },
            Instant::now(),
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.slots = 1;
    let node = Engine::open_with(config, fleet.clone())?;
    let module = HashHex::of(TRIVIAL_WASM);
    node.cas().put_own(TRIVIAL_WASM)?;
    node.store()
        .tenant("default")
        .own_blob(&module, TRIVIAL_WASM.len() as u64)?;
    let descriptor = json!({"name": "trivial", "module": module});
    let canonical = String::from_utf8(
        wasmesh_host::model::canonical_json(&descriptor).map_err(|e| anyhow::anyhow!(e.0))?,
    )?;
    let worker_id = HashHex::of(canonical.as_bytes());
    node.register_worker(
        "default",
        worker_id,
        &serde_json::from_value(descriptor)?,
        &canonical,
    )
    .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let before = resident_bytes();
    let start = Instant::now();
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let actions = chunk
            .iter()
            .map(|n| {
                let value = json!({"worker": worker_id, "args": [n.to_string()]});
                ActionSubmission::parse(value).map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        node.submit("default", actions, None, None)
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    }
    let queued_in = start.elapsed();
    let per_job = resident_bytes().saturating_sub(before) as f64 / jobs as f64;
    println!(
        "  queueing {jobs} jobs in the journal  {:>10.0} jobs/s   memory {:.0} bytes per queued job (RSS growth)",
        jobs as f64 / queued_in.as_secs_f64(),
        per_job
    );
    // What the autoscaler reads every interval: one pass over the queued jobs under
    // the scheduler's lock (the placement loop waits that long).
    let rounds = 20;
    let start = Instant::now();
    for _ in 0..rounds {
        let ahead = node.work_ahead();
        ensure!(
            ahead.queued_jobs == jobs,
            "the backlog counts {} of {jobs}",
            ahead.queued_jobs
        );
    }
    println!(
        "  the autoscaler's backlog of {jobs} queued jobs   {:>8.2} ms a look",
        start.elapsed().as_secs_f64() * 1e3 / rounds as f64
    );
    let start = Instant::now();
    wasmesh_host::cluster::driver::place_batch(&node, &fleet);
    let elapsed = start.elapsed();
    ensure!(
        fleet.leases() == jobs,
        "placed {} of {jobs} jobs",
        fleet.leases()
    );
    println!(
        "  full placement (job read, score, lease write, mailbox) {:>8.0} jobs/s   ({:.1} us each)",
        jobs as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / jobs as f64
    );
    Ok(())
}
