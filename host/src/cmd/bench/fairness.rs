//! `wasmesh bench fairness`: the fair share on an in-process node over loopback HTTP.
//!
//! 1. Baseline: a small tenant submits `small_jobs` jobs alone; their waits from
//!    submission to start (p50, p99).
//! 2. Flood: another tenant of the same weight submits `flood_factor` times as many
//!    jobs of the same cost and holds the node a while; then the small tenant submits
//!    the same jobs again. Its p99 against the baseline is the measure.
//! 3. Weights: tenants of weight 3 and 1 both saturate the node; how their slot time
//!    splits over the window where both have work queued.
//!
//! Every job sleeps `job_ms` (WASI `poll_oneoff` on the monotonic clock, so it holds a
//! slot without using a core) and has its own arguments, so the result cache answers
//! none.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;

use wasmesh_host::api::auth::{Auth, Role};
use wasmesh_host::client::Client;
use wasmesh_host::engine::quota::{Quota, Quotas};
use wasmesh_host::model::{HashHex, RunTiming};

use super::{Running, start_node_with};

/// A module whose `_start` sleeps `ms` milliseconds.
fn sleeper_wasm(ms: u64) -> anyhow::Result<Vec<u8>> {
    let nanos = ms * 1_000_000;
    // One clock subscription at 0 (userdata, tag 0 = clock, clock id 1 = monotonic at
    // 16, relative timeout at 24, precision at 32, flags at 40); the event goes to 64.
    let text = format!(
        r#"(module
             (import "wasi_snapshot_preview1" "poll_oneoff"
               (func $poll (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "_start")
               (i32.store (i32.const 16) (i32.const 1))
               (i64.store (i32.const 24) (i64.const {nanos}))
               (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#
    );
    wat::parse_str(text).context("assembling the sleeper")
}

const TENANTS: [&str; 5] = ["small", "flood", "heavy", "light", "warmer"];

fn key(tenant: &str) -> String {
    format!("{tenant}-bench-key-0123456789")
}

/// A node whose tenants are [`TENANTS`], `heavy` with weight 3.
fn start(slots: usize) -> anyhow::Result<Running> {
    let mut auth = Auth::open();
    for tenant in TENANTS {
        auth.add("bench", tenant, &key(tenant), Role::Tenant)?;
    }
    let heavy = Quota {
        weight: Some(3.0),
        ..Quota::default()
    };
    let quotas = Quotas::new(Quota::default(), HashMap::from([("heavy".into(), heavy)]));
    start_node_with(slots, quotas, auth)
}

struct Tenant {
    client: Client,
    worker: HashHex,
}

impl Tenant {
    fn new(node: &Running, name: &str, wasm: &[u8]) -> anyhow::Result<Self> {
        let client = Client::new(&node.url, Some(key(name)));
        let module = HashHex::of(wasm);
        let worker = client
            .upload_worker(
                &json!({"name": "sleeper", "module": module}),
                &[(module, wasm)],
            )?
            .worker;
        Ok(Self { client, worker })
    }

    /// Submits `n` jobs (in batches of 1000); returns their LSNs and the Unix ms just
    /// before the first batch went.
    fn submit(&self, tag: &str, n: usize) -> anyhow::Result<(Vec<u64>, i64)> {
        let submitted = RunTiming::now_ms();
        let mut lsns = Vec::with_capacity(n);
        let indices: Vec<usize> = (0..n).collect();
        for chunk in indices.chunks(1000) {
            let actions: Vec<_> = chunk
                .iter()
                .map(|i| json!({"worker": self.worker, "args": [format!("{tag}-{i}")]}))
                .collect();
            lsns.extend(self.client.submit_batch(&actions, None)?);
        }
        Ok((lsns, submitted))
    }

    /// Each job's (started, finished), waiting for them.
    fn spans(&self, lsns: &[u64]) -> anyhow::Result<Vec<(i64, i64)>> {
        lsns.iter()
            .map(|lsn| {
                let result = self.client.wait(*lsn, Duration::from_secs(600))?;
                let timing = result
                    .timing
                    .with_context(|| format!("job {lsn} ({}) did not run", result.outcome))?;
                Ok((timing.started_ms, timing.finished_ms))
            })
            .collect()
    }

    /// Runs `n` jobs and returns their waits from submission to start, sorted.
    fn waits(&self, tag: &str, n: usize) -> anyhow::Result<Vec<i64>> {
        let (lsns, submitted) = self.submit(tag, n)?;
        let mut waits: Vec<i64> = self
            .spans(&lsns)?
            .iter()
            .map(|(start, _)| start - submitted)
            .collect();
        waits.sort_unstable();
        Ok(waits)
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Milliseconds of slot time the runs held within `from..to`.
fn held(spans: &[(i64, i64)], (from, to): (i64, i64)) -> i64 {
    spans
        .iter()
        .map(|(start, end)| (end.min(&to) - start.max(&from)).max(0))
        .sum()
}

/// Runs the scenarios and prints their numbers.
pub fn run(
    slots: usize,
    job_ms: u64,
    small_jobs: usize,
    flood_factor: usize,
) -> anyhow::Result<()> {
    ensure!(
        slots > 0 && small_jobs > 0,
        "--slots and --small-jobs are at least 1"
    );
    let wasm = sleeper_wasm(job_ms)?;
    println!(
        "wasmesh bench fairness: {slots} slots, jobs of {job_ms} ms, the small tenant's {small_jobs} jobs, a flood of {}",
        small_jobs * flood_factor
    );

    // 1. The small tenant alone.
    let alone = {
        let node = start(slots)?;
        let small = Tenant::new(&node, "small", &wasm)?;
        small.waits("warm", slots)?;
        small.waits("alone", small_jobs)?
    };
    println!(
        "  small tenant alone           wait p50 {:>6} ms   p99 {:>6} ms   (baseline)",
        percentile(&alone, 0.5),
        percentile(&alone, 0.99)
    );

    // 2. The same after a flood has held the node for 20 jobs per slot.
    let node = start(slots)?;
    let small = Tenant::new(&node, "small", &wasm)?;
    let flood = Tenant::new(&node, "flood", &wasm)?;
    small.waits("warm", slots)?;
    let (flood_lsns, _) = flood.submit("flood", small_jobs * flood_factor)?;
    let held_for = (slots * 20).min(flood_lsns.len()) - 1;
    flood.spans(&flood_lsns[held_for..=held_for])?;
    let flooded = small.waits("flooded", small_jobs)?;
    let p99 = |w: &[i64]| percentile(w, 0.99).max(1) as f64;
    println!(
        "  small tenant under the flood wait p50 {:>6} ms   p99 {:>6} ms   p99 {:.2}x the baseline",
        percentile(&flooded, 0.5),
        percentile(&flooded, 0.99),
        p99(&flooded) / p99(&alone)
    );
    drop(node);

    // 3. Weights 3:1, both saturating (the slots warmed by a third tenant first).
    let node = start(slots)?;
    let warmer = Tenant::new(&node, "warmer", &wasm)?;
    warmer.waits("warm", slots * 2)?;
    let heavy = Tenant::new(&node, "heavy", &wasm)?;
    let light = Tenant::new(&node, "light", &wasm)?;
    let rounds = 40;
    let (heavy_lsns, _) = heavy.submit("heavy", slots * rounds * 3 / 4)?;
    let (light_lsns, _) = light.submit("light", slots * rounds / 4)?;
    let heavy_spans = heavy.spans(&heavy_lsns)?;
    let light_spans = light.spans(&light_lsns)?;
    let first = |s: &[(i64, i64)]| s.iter().map(|x| x.0).min().unwrap_or(0);
    let last = |s: &[(i64, i64)]| s.iter().map(|x| x.0).max().unwrap_or(0);
    let window = (
        first(&heavy_spans).max(first(&light_spans)) + job_ms as i64 * 3,
        last(&heavy_spans).min(last(&light_spans)),
    );
    ensure!(window.1 > window.0, "no window where both tenants had work");
    let ratio = held(&heavy_spans, window) as f64 / held(&light_spans, window).max(1) as f64;
    println!(
        "  weights 3:1, both saturating  slot time {ratio:.2}:1 over {} ms   ({:+.1} % off 3:1)",
        window.1 - window.0,
        (ratio / 3.0 - 1.0) * 100.0
    );
    Ok(())
}
