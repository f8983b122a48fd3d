//! Benchmark scenarios, each with a baseline measured in the same run:
//!
//! - `wasmesh bench node`: one node over loopback HTTP (baselines: the `/health` round
//!   trip, a raw `PUT /cas`). The node runs in this process on 127.0.0.1:0.
//! - `wasmesh bench cluster`: a coordinator and 2 node processes (baselines: the same
//!   jobs sent directly to one node; the Mandelbrot kernel compiled natively).
//! - `wasmesh bench placement`: placement with simulated nodes in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::api::{AppState, auth::Auth};
use crate::client::Client;
use crate::model::{HashHex, JobResult};
use crate::node::{Node, NodeConfig};

/// `(module (memory (export "memory") 1) (func (export "_start")))`, hand-assembled so
/// the benchmark needs no toolchain: the cheapest possible action.
pub const TRIVIAL_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
    0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
    0x05, 0x03, 0x01, 0x00, 0x01, // memory section: one memory, min 1 page
    0x07, 0x13, 0x02, // export section: 19 bytes, 2 exports
    0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // "memory" -> memory 0
    0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // "_start" -> function 0
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section: an empty body
];

/// A running in-process node.
struct Running {
    url: String,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start_node(slots: usize) -> anyhow::Result<Running> {
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.slots = slots;
    config.max_blob_bytes = 1 << 30;
    config.max_request_bytes = (1 << 30) + (16 << 20);
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let node = Node::open(config)?;
        node.start();
        let state = AppState {
            node,
            auth: Arc::new(Auth::open()),
        };
        tokio::spawn(crate::api::serve(
            listener,
            crate::api::app(state),
            std::future::pending(),
        ));
        anyhow::Ok(format!("http://{address}"))
    })?;
    Ok(Running {
        url,
        _runtime: runtime,
        _dir: dir,
    })
}

/// Registers the trivial module as a worker (the needs dance); returns its id.
fn upload_trivial(client: &Client) -> anyhow::Result<HashHex> {
    let module = HashHex::of(TRIVIAL_WASM);
    Ok(client
        .upload_worker(
            &json!({"name": "trivial", "module": module}),
            &[(module, TRIVIAL_WASM)],
        )?
        .worker)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn wait_ok(client: &Client, lsn: u64) -> anyhow::Result<()> {
    let result = client.wait(lsn, Duration::from_secs(60))?;
    ensure!(result.state == "succeeded", "job {lsn} {}", result.state);
    Ok(())
}

/// Runs the node benchmark and prints its numbers.
pub fn node(jobs: usize, upload_mib: usize) -> anyhow::Result<()> {
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

    if upload_mib > 0 {
        upload(upload_mib)?;
    }
    Ok(())
}

/// A valid module of about `mib` MiB: the trivial module plus one custom section, so
/// validating it costs little beyond reading it.
fn big_module(mib: usize) -> Vec<u8> {
    let payload = vec![0x5au8; mib << 20];
    let name = b"bench-payload";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&payload);
    let mut out = TRIVIAL_WASM.to_vec();
    out.push(0);
    let mut size = section.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        out.push(if size == 0 { byte } else { byte | 0x80 });
        if size == 0 {
            break;
        }
    }
    out.extend_from_slice(&section);
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

/// The Mandelbrot kernel the wasm job runs, compiled natively for the baseline.
#[path = "../../examples/mandelbrot/src/kernel.rs"]
mod kernel;

use crate::demo::GRID;

/// Submits `jobs` trivial actions in batches of 100 and waits for every result;
/// returns jobs per second. `salt` keeps the actions distinct from earlier runs.
fn trivial_throughput(client: &Client, jobs: usize, salt: &str) -> anyhow::Result<f64> {
    let worker = upload_trivial(client)?;
    // Warm: the module reaches (and compiles on) every node before the clock starts.
    for n in 0..8 {
        let lsn = client.submit(
            &json!({"worker": worker, "args": [format!("warm-{salt}-{n}")]}),
            None,
            None,
        )?;
        wait_ok(client, lsn)?;
    }
    let start = Instant::now();
    let mut lsns = Vec::with_capacity(jobs);
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(100) {
        let actions: Vec<Value> = chunk
            .iter()
            .map(|n| json!({"worker": worker, "args": [format!("{salt}-{n}")]}))
            .collect();
        lsns.extend(client.submit_batch(&actions, None)?);
    }
    for lsn in &lsns {
        wait_ok(client, *lsn)?;
    }
    Ok(jobs as f64 / start.elapsed().as_secs_f64())
}

/// Submits `count` trivial jobs one at a time, each waited for; (p50, p99) latency.
fn sequential_latency(
    client: &Client,
    count: usize,
    salt: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let worker = upload_trivial(client)?;
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let start = Instant::now();
        let lsn = client.submit(
            &json!({"worker": worker, "args": [format!("seq-{salt}-{n}")]}),
            None,
            None,
        )?;
        wait_ok(client, lsn)?;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
}

/// Renders the 16 tiles through `client` (node or coordinator) and returns the time
/// from submission to the last result.
fn mandelbrot_round(
    client: &Client,
    worker: HashHex,
    size: u32,
    max_iter: u32,
    salt: &str,
) -> anyhow::Result<Duration> {
    let actions: Vec<Value> = (0..GRID * GRID)
        .map(|i| crate::demo::tile_action(client, worker, i, size, max_iter, salt))
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    for lsn in client.submit_batch(&actions, None)? {
        wait_ok(client, lsn)?;
    }
    Ok(start.elapsed())
}

/// `wasmesh bench cluster`: trivial jobs through a coordinator and 2 nodes vs directly
/// on one node; the Mandelbrot tiles natively, on one node and on two.
pub fn cluster(
    jobs: usize,
    module: &std::path::Path,
    size: u32,
    max_iter: u32,
    prefetch: u64,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmesh bench cluster: real processes on loopback, {cores} cores");

    let prefetch_arg = prefetch.to_string();
    let mut cluster = crate::local::LocalCluster::start(&["--prefetch", &prefetch_arg])?;
    cluster.add_node("node-1", cores)?;
    let direct = Client::new(&cluster.nodes[0].url, None);
    let on_node = trivial_throughput(&direct, jobs, "direct")?;
    let direct_latency = sequential_latency(&direct, 300, "direct")?;
    cluster.add_node("node-2", cores)?;
    let via = trivial_throughput(&cluster.client(), jobs, "cluster")?;
    let via_latency = sequential_latency(&cluster.client(), 300, "cluster")?;
    println!(
        "trivial jobs, batches of 100, {jobs} jobs, {cores} slots per node, prefetch {prefetch}:"
    );
    println!("  directly on one node (baseline)       {on_node:>8.0} jobs/s");
    println!(
        "  coordinator + 2 nodes                 {via:>8.0} jobs/s   ({:.2}x the single node)",
        via / on_node
    );
    println!("trivial jobs one at a time, submit -> result:");
    println!(
        "  directly on one node (baseline)       p50 {:>8.1} us   p99 {:>8.1} us",
        micros(direct_latency.0),
        micros(direct_latency.1)
    );
    println!(
        "  coordinator + 2 nodes                 p50 {:>8.1} us   p99 {:>8.1} us   ({:.2}x the baseline p50)",
        micros(via_latency.0),
        micros(via_latency.1),
        via_latency.0.as_secs_f64() / direct_latency.0.as_secs_f64()
    );
    cluster.shutdown()?;

    let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let hash = HashHex::of(&wasm);
    let descriptor = json!({"name": "mandelbrot", "module": hash});
    let tile = size / GRID;
    let start = Instant::now();
    for i in 0..GRID * GRID {
        std::hint::black_box(kernel::render_tile(
            (i % GRID) * tile,
            (i / GRID) * tile,
            tile,
            size,
            max_iter,
        ));
    }
    let native = start.elapsed();
    let mut cluster = crate::local::LocalCluster::start(&[])?;
    cluster.add_node("node-1", 1)?;
    let client = cluster.client();
    let worker = client.upload_worker(&descriptor, &[(hash, &wasm)])?.worker;
    mandelbrot_round(&client, worker, 64, 10, "warm-1")?;
    let one = mandelbrot_round(&client, worker, size, max_iter, "one")?;
    cluster.add_node("node-2", 1)?;
    // Two warm-up tiles at once: the new node fetches and compiles the module.
    mandelbrot_round(&client, worker, 64, 10, "warm-2")?;
    let two = mandelbrot_round(&client, worker, size, max_iter, "two")?;
    cluster.shutdown()?;
    println!("mandelbrot {size}x{size}, 16 tiles, max_iter {max_iter}, nodes with 1 slot each:");
    println!(
        "  native kernel, one thread (baseline)  {:>8.1} ms",
        native.as_secs_f64() * 1e3
    );
    println!(
        "  1 node                                {:>8.1} ms   ({:.2}x native)",
        one.as_secs_f64() * 1e3,
        one.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "  2 nodes                               {:>8.1} ms   ({:.2}x native, {:.2}x faster than 1 node)",
        two.as_secs_f64() * 1e3,
        two.as_secs_f64() / native.as_secs_f64(),
        one.as_secs_f64() / two.as_secs_f64()
    );
    Ok(())
}

/// A coordinator and 2 one-slot nodes with `module` uploaded as worker `name`.
fn two_nodes_with(
    module: &std::path::Path,
    name: &str,
) -> anyhow::Result<(crate::local::LocalCluster, Client, HashHex)> {
    let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let hash = HashHex::of(&wasm);
    let mut cluster = crate::local::LocalCluster::start(&[])?;
    cluster.add_node("node-1", 1)?;
    cluster.add_node("node-2", 1)?;
    let client = cluster.client();
    let worker = client
        .upload_worker(&json!({"name": name, "module": hash}), &[(hash, &wasm)])?
        .worker;
    Ok((cluster, client, worker))
}

/// `wasmesh bench fanin`: map/reduce rounds (wordcount, `maps` shards) on a
/// coordinator and 2 nodes. Measures the gap from the last map's end to the reduce's
/// start (both from the results' `timing`): with the reduce submitted up front naming
/// the maps' outputs (`output_of`, fan-in on the coordinator), against the client
/// waiting for every map and then submitting the reduce with the hashes (baseline).
pub fn fanin(rounds: usize, maps: usize, module: &std::path::Path) -> anyhow::Result<()> {
    let (cluster, client, worker) = two_nodes_with(module, "wordcount")?;
    let gap = |reduce: &JobResult, maps: &[JobResult]| -> anyhow::Result<f64> {
        let last_map = maps
            .iter()
            .map(|m| m.timing.map(|t| t.finished_ms))
            .max()
            .flatten()
            .context("a map result without timing")?;
        let start = reduce.timing.context("a reduce without timing")?.started_ms;
        Ok((start - last_map) as f64)
    };
    let mut by_reference = Vec::with_capacity(rounds);
    let mut by_client = Vec::with_capacity(rounds);
    for round in 0..=rounds {
        for (mode, gaps) in [("ref", &mut by_reference), ("client", &mut by_client)] {
            // Distinct texts every round and mode: nothing comes from the cache.
            let texts: Vec<Vec<u8>> = (0..maps)
                .map(|i| {
                    format!("{mode} round {round} shard {i} the cat sat on the mat").into_bytes()
                })
                .collect();
            let borrowed: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
            let inputs = client.ensure_blobs(&borrowed)?;
            let actions: Vec<Value> = inputs
                .iter()
                .map(|input| json!({"worker": worker, "args": ["map"], "input": input}))
                .collect();
            let lsns = client.submit_batch(&actions, None)?;
            let reduce_lsn = if mode == "ref" {
                let files: serde_json::Map<String, Value> = lsns
                    .iter()
                    .enumerate()
                    .map(|(i, lsn)| (format!("{i}.json"), json!({"output_of": lsn})))
                    .collect();
                client.submit(
                    &json!({"worker": worker, "args": ["reduce"], "files": files}),
                    None,
                    None,
                )?
            } else {
                let mut files = serde_json::Map::new();
                for (i, lsn) in lsns.iter().enumerate() {
                    let result = client.wait(*lsn, Duration::from_secs(60))?;
                    files.insert(format!("{i}.json"), json!(result.output));
                }
                client.submit(
                    &json!({"worker": worker, "args": ["reduce"], "files": files}),
                    None,
                    None,
                )?
            };
            let reduce = client.wait(reduce_lsn, Duration::from_secs(60))?;
            ensure!(reduce.state == "succeeded", "the reduce failed: {reduce:?}");
            let map_results = lsns
                .iter()
                .map(|lsn| client.wait(*lsn, Duration::from_secs(60)))
                .collect::<Result<Vec<_>, _>>()?;
            // Round 0 warms both nodes up (fetch and compile); it is not counted.
            if round > 0 {
                gaps.push(gap(&reduce, &map_results)?);
            }
        }
    }
    cluster.shutdown()?;
    let stats = |gaps: &mut Vec<f64>| {
        gaps.sort_by(f64::total_cmp);
        let at = |p: f64| gaps[((gaps.len() - 1) as f64 * p).round() as usize];
        (
            at(0.5),
            at(0.9),
            gaps.iter().sum::<f64>() / gaps.len() as f64,
        )
    };
    let (client_p50, client_p90, client_mean) = stats(&mut by_client);
    let (ref_p50, ref_p90, ref_mean) = stats(&mut by_reference);
    println!(
        "wasmesh bench fanin: {rounds} rounds of {maps} wordcount maps + 1 reduce, coordinator + 2 nodes (1 slot each)"
    );
    println!("last map end -> reduce start (node clocks, ms resolution):");
    println!(
        "  client waits, then submits the reduce (baseline)  p50 {client_p50:>6.1} ms   p90 {client_p90:>6.1} ms   mean {client_mean:>6.2} ms"
    );
    println!(
        "  reduce submitted up front with output_of          p50 {ref_p50:>6.1} ms   p90 {ref_p90:>6.1} ms   mean {ref_mean:>6.2} ms   ({:.2}x the baseline mean)",
        ref_mean / client_mean
    );
    Ok(())
}

/// `wasmesh bench events`: events routed through a group (sensor-alerts on 2 nodes),
/// one inject at a time and in batches of 100, against the same handler submitted as
/// plain jobs and waited for one at a time (the baseline).
pub fn events(events: usize, module: &std::path::Path) -> anyhow::Result<()> {
    let (cluster, client, worker) = two_nodes_with(module, "sensor-alerts")?;
    let group = client.call(
        reqwest::Method::POST,
        "/api/v1/cluster/groups",
        Some(&json!({
            "name": "bench",
            "handlers": [{"name": "alerts", "worker": worker}],
            "routes": [{"from": "_external", "to": "alerts", "event_types": ["Reading"]}],
        })),
    )?;
    let inject = format!(
        "/api/v1/cluster/groups/{}/inject",
        group["id"].as_str().context("group id")?
    );
    let reading = |n: usize| json!({"event_type": "Reading", "fields": {"sensor": format!("s{n}"), "value": (n % 60) as u64}});
    // Warm both nodes.
    client.call(
        reqwest::Method::POST,
        &inject,
        Some(&json!({"events": [reading(0), reading(1)]})),
    )?;

    let start = Instant::now();
    for n in 0..events {
        let input = client.put_blob(reading(n).to_string().into_bytes())?;
        let lsn = client.submit(
            &json!({"worker": worker, "input": input, "env": {"RUN": format!("job-{n}")}}),
            None,
            None,
        )?;
        wait_ok(&client, lsn)?;
    }
    let jobs = events as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for n in 0..events {
        client.call(reqwest::Method::POST, &inject, Some(&reading(n)))?;
    }
    let single = events as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for chunk in (0..events).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Value> = chunk.iter().map(|n| reading(*n)).collect();
        client.call(
            reqwest::Method::POST,
            &inject,
            Some(&json!({ "events": batch })),
        )?;
    }
    let batched = events as f64 / start.elapsed().as_secs_f64();
    cluster.shutdown()?;
    println!(
        "wasmesh bench events: sensor-alerts on 2 nodes (1 slot each), {events} events per scenario"
    );
    println!("  put input + submit + wait, one at a time (baseline) {jobs:>8.0} events/s");
    println!(
        "  inject, one at a time                              {single:>8.0} events/s   ({:.2}x baseline)",
        single / jobs
    );
    println!(
        "  inject, batches of 100                             {batched:>8.0} events/s   ({:.2}x baseline)",
        batched / jobs
    );
    Ok(())
}

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// `wasmesh bench placement`: placement in process with simulated nodes (registered in
/// the fleet, never contacted) and a real coordinator journal.
pub fn placement(nodes: usize, jobs: usize) -> anyhow::Result<()> {
    use crate::coordinator::placement::{Demand, NodeView, Placer, Strategy, Weights};
    use crate::coordinator::protocol::Registration;
    use crate::coordinator::{CoordinatorConfig, Fleet};
    use crate::node::ActionSubmission;

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
            if let Some(decision) = placer.choose(&views, &demand(i)) {
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
        fleet.register(Registration {
            id: format!("sim-{i:05}"),
            address: format!("http://127.0.0.1:{}", 20000 + i),
            slots,
            labels: Default::default(),
            limits: None,
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    let mut config = NodeConfig::new(dir.path().to_path_buf());
    config.slots = 1;
    let node = Node::open_with(config, Some(fleet.clone()))?;
    let module = HashHex::of(TRIVIAL_WASM);
    node.cas.put_own(TRIVIAL_WASM)?;
    node.db
        .own_blob("default", &module, TRIVIAL_WASM.len() as u64)?;
    let descriptor = json!({"name": "trivial", "module": module});
    let canonical = String::from_utf8(
        crate::model::canonical_json(&descriptor).map_err(|e| anyhow::anyhow!(e.0))?,
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
    let start = Instant::now();
    crate::coordinator::place_batch(&node, &fleet);
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
