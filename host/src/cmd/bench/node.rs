//! `wasmesh bench node`: one in-process node over loopback HTTP, against the `/health`
//! round trip and a raw `PUT /cas` measured in the same run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::HashHex;

use super::{TRIVIAL_WASM, micros, percentile, start_node, upload_trivial, wait_ok};

/// Runs the node benchmark and prints its numbers.
pub fn run(jobs: usize, upload_mib: usize) -> anyhow::Result<()> {
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    let running = start_node(slots)?;
    let client = Client::new(&running.url, None);
    let http = reqwest::blocking::Client::new();
    println!(
        "wasmesh bench node: {slots} slots, {jobs} jobs per scenario, node at {}",
        running.url
    );

    let mut health: Vec<Duration> = (0..2000)
        .map(|_| {
            let start = Instant::now();
            http.get(format!("{}/health", running.url))
                .send()
                .and_then(|r| r.error_for_status())
                .map(|_| start.elapsed())
        })
        .collect::<Result<_, _>>()?;
    health.sort();
    println!(
        "GET /health round trip (baseline)      p50 {:>8.1} us   p99 {:>8.1} us",
        micros(percentile(&health, 0.5)),
        micros(percentile(&health, 0.99))
    );

    let worker = upload_trivial(&client)?;
    let action = |n: usize| json!({"worker": worker, "args": [n.to_string()]});

    let mut latencies = Vec::with_capacity(500);
    for n in 0..500 {
        let start = Instant::now();
        let lsn = client.submit(&action(n), None, None)?;
        wait_ok(&client, lsn)?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    println!(
        "submit -> result, one at a time        p50 {:>8.1} us   p99 {:>8.1} us   ({:.1}x the /health p50)",
        micros(p50),
        micros(percentile(&latencies, 0.99)),
        p50.as_secs_f64() / percentile(&health, 0.5).as_secs_f64()
    );

    let base = 1_000_000;
    let start = Instant::now();
    let lsns: Vec<u64> = (0..jobs)
        .map(|n| client.submit(&action(base + n), None, None))
        .collect::<Result<_, _>>()?;
    for lsn in &lsns {
        wait_ok(&client, *lsn)?;
    }
    let single = jobs as f64 / start.elapsed().as_secs_f64();
    println!("single submissions, then all results    {single:>8.0} jobs/s");

    let base = 2_000_000;
    let start = Instant::now();
    let mut lsns = Vec::with_capacity(jobs);
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(100) {
        let actions: Vec<Value> = chunk.iter().map(|n| action(base + n)).collect();
        lsns.extend(client.submit_batch(&actions, None)?);
    }
    for lsn in &lsns {
        wait_ok(&client, *lsn)?;
    }
    let batched = jobs as f64 / start.elapsed().as_secs_f64();
    println!(
        "batches of 100, then all results        {batched:>8.0} jobs/s   ({:.2}x single)",
        batched / single
    );

    list(
        &http,
        &running.url,
        lsns[lsns.len() / 2],
        percentile(&health, 0.5),
    )?;
    if upload_mib > 0 {
        upload(upload_mib)?;
    }
    Ok(())
}

/// `GET /compute/jobs` with every job of the scenarios above in the journal: the
/// first page, a page from the middle, and a filter nothing matches (the longest
/// page: a whole window looked at).
fn list(
    http: &reqwest::blocking::Client,
    url: &str,
    middle: u64,
    health: Duration,
) -> anyhow::Result<()> {
    let total = http
        .get(format!("{url}/compute/jobs?limit=1"))
        .send()?
        .error_for_status()?
        .json::<Value>()?["jobs"][0]["lsn"]
        .as_u64()
        .unwrap_or(0);
    println!("listing jobs, {total} in the journal (median of 50 requests):");
    for (name, query) in [
        ("first page of 50", "limit=50".to_string()),
        (
            "a page from the middle",
            format!("limit=50&before={middle}"),
        ),
        (
            "state=failed (no match)",
            "state=failed&limit=50".to_string(),
        ),
    ] {
        let mut times: Vec<Duration> = (0..50)
            .map(|_| {
                let start = Instant::now();
                http.get(format!("{url}/compute/jobs?{query}"))
                    .send()
                    .and_then(|r| r.error_for_status())
                    .and_then(|r| r.bytes())
                    .map(|_| start.elapsed())
            })
            .collect::<Result<_, _>>()?;
        times.sort();
        let p50 = percentile(&times, 0.5);
        println!(
            "  {name:<28} p50 {:>8.1} us   ({:.1}x the /health p50)",
            micros(p50),
            p50.as_secs_f64() / health.as_secs_f64()
        );
    }
    Ok(())
}

/// A valid module of about `mib` MiB: the trivial module plus one custom section, so
/// validating it costs little beyond reading it.
fn big_module(mib: usize) -> Vec<u8> {
    let mut out = TRIVIAL_WASM.to_vec();
    let payload = wasm_encoder::CustomSection {
        name: "bench-payload".into(),
        data: vec![0x5au8; mib << 20].into(),
    };
    wasm_encoder::Section::append_to(&payload, &mut out);
    out
}

fn upload(mib: usize) -> anyhow::Result<()> {
    let wasm = big_module(mib);
    let module = HashHex::of(&wasm);
    let descriptor = json!({"name": "big", "module": module});

    // Raw PUT on one fresh node, the needs dance on another, so neither finds the
    // bytes already stored.
    let raw_node = start_node(1)?;
    let raw = Client::new(&raw_node.url, None);
    let start = Instant::now();
    raw.put_blob(wasm.clone())?;
    let raw_time = start.elapsed();

    let dance_node = start_node(1)?;
    let dance = Client::new(&dance_node.url, None);
    let start = Instant::now();
    let first = dance.upload_worker(&descriptor, &[(module, &wasm)])?;
    let dance_time = start.elapsed();
    let start = Instant::now();
    let again = dance.upload_worker(&descriptor, &[(module, &wasm)])?;
    let again_time = start.elapsed();

    let mbps = |d: Duration| wasm.len() as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!("upload of a {mib} MiB worker:");
    println!(
        "  raw PUT /cas (baseline)               {:>8.0} ms   {:>6.0} MiB/s",
        raw_time.as_secs_f64() * 1e3,
        mbps(raw_time)
    );
    println!(
        "  needs dance, first upload             {:>8.0} ms   {:>6.0} MiB/s   ({:.2}x raw; sent {} chunk, {} bytes)",
        dance_time.as_secs_f64() * 1e3,
        mbps(dance_time),
        dance_time.as_secs_f64() / raw_time.as_secs_f64(),
        first.sent_chunks,
        first.sent_bytes
    );
    println!(
        "  needs dance, re-upload                {:>8.1} ms   sent {} chunks, {} bytes",
        again_time.as_secs_f64() * 1e3,
        again.sent_chunks,
        again.sent_bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_assembled_modules_are_valid_commands() {
        let sandbox = wasmesh_runtime::Sandbox::new(wasmesh_runtime::Config {
            max_instances: 2,
            ..Default::default()
        })
        .unwrap();
        for wasm in [TRIVIAL_WASM.to_vec(), big_module(1)] {
            let module = sandbox.load(&wasm).unwrap();
            let report = sandbox
                .run(&module, wasmesh_runtime::RunSpec::new())
                .unwrap();
            assert_eq!(report.outcome, wasmesh_runtime::Outcome::Exited(0));
        }
    }
}
