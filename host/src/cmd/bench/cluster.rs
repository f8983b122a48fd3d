//! `wasmesh bench cluster|fanin|events`: a coordinator and node processes on loopback
//! (a `LocalCluster`), against the same work sent directly to one node, the kernel
//! compiled natively, or the client doing the fan-in itself.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use wasmesh_host::client::Client;
use wasmesh_host::model::{HashHex, JobResult, JobState};

use super::{micros, percentile, upload_trivial, wait_ok};
use crate::cmd::local::LocalCluster;

/// The Mandelbrot kernel the wasm job runs, compiled natively for the baseline.
use super::mandelbrot as kernel;

use crate::cmd::demo::GRID;

/// Submits `jobs` trivial actions in batches of 100 and waits for every result;
/// returns jobs per second. With several clients (one per coordinator sharing a
/// journal), each submits its share from a thread of its own. `salt` keeps the
/// actions distinct from earlier runs.
fn trivial_throughput(clients: &[Client], jobs: usize, salt: &str) -> anyhow::Result<f64> {
    let worker = upload_trivial(&clients[0])?;
    // Warm: the module reaches (and compiles on) every node before the clock starts.
    for (c, client) in clients.iter().enumerate() {
        for n in 0..8 {
            let lsn = client.submit(
                &json!({"worker": worker, "args": [format!("warm-{salt}-{c}-{n}")]}),
                None,
                None,
            )?;
            wait_ok(client, lsn)?;
        }
    }
    let share = jobs.div_ceil(clients.len());
    let start = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let threads: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(c, client)| {
                let count = share.min(jobs - (c * share).min(jobs));
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut lsns = Vec::with_capacity(count);
                    for actions in trivial_batches(worker, &format!("{salt}-{c}"), count) {
                        lsns.extend(client.submit_batch(&actions, None)?);
                    }
                    lsns.iter().try_for_each(|lsn| wait_ok(client, *lsn))
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a submitting thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(jobs as f64 / start.elapsed().as_secs_f64())
}

/// `jobs` distinct trivial actions (`salt` keeps them apart from other runs' in the
/// result cache), in batches of 100.
fn trivial_batches(worker: HashHex, salt: &str, jobs: usize) -> Vec<Vec<Value>> {
    (0..jobs)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            chunk
                .iter()
                .map(|n| json!({"worker": worker, "args": [format!("{salt}-{n}")]}))
                .collect()
        })
        .collect()
}

/// Submits `count` trivial jobs one at a time, each waited for, through `clients` in
/// turn; (p50, p99) latency. `one_trip`: the submission itself waits for the result
/// (`?wait_ms=`); otherwise the job is submitted, then long-polled (two round trips).
fn sequential_latency(
    clients: &[Client],
    count: usize,
    salt: &str,
    one_trip: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let worker = upload_trivial(&clients[0])?;
    let mut latencies = Vec::with_capacity(count);
    let wait = if one_trip {
        Duration::from_secs(30)
    } else {
        Duration::ZERO
    };
    for n in 0..count {
        let client = &clients[n % clients.len()];
        let start = Instant::now();
        let action = json!({"worker": worker, "args": [format!("seq-{salt}-{one_trip}-{n}")]});
        let (lsn, result) = client.submit_waiting(&action, None, None, wait)?;
        match result {
            Some(result) => ensure!(
                result.state == JobState::Succeeded,
                "job {lsn} {}",
                result.state
            ),
            None => wait_ok(client, lsn)?,
        }
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
        .map(|i| crate::cmd::demo::tile_action(client, worker, i, size, max_iter, salt))
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
    prefetch: wasmesh_host::cluster::prefetch::Prefetch,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmesh bench cluster: real processes on loopback, {cores} cores");

    let prefetch_arg = prefetch.to_string();
    let mut cluster = LocalCluster::start(&["--prefetch", &prefetch_arg])?;
    cluster.add_node("node-1", cores)?;
    let direct = Client::new(&cluster.nodes[0].url, None);
    let direct = [direct];
    let on_node = trivial_throughput(&direct, jobs, "direct")?;
    let direct_latency = sequential_latency(&direct, 300, "direct", false)?;
    let direct_one_trip = sequential_latency(&direct, 300, "direct", true)?;
    cluster.add_node("node-2", cores)?;
    let coordinator = [cluster.client()];
    let via = trivial_throughput(&coordinator, jobs, "cluster")?;
    let via_latency = sequential_latency(&coordinator, 300, "cluster", false)?;
    let via_one_trip = sequential_latency(&coordinator, 300, "cluster", true)?;
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
    let line = |name: &str, (p50, p99): (Duration, Duration)| {
        println!(
            "  {name:<37} p50 {:>8.1} us   p99 {:>8.1} us   ({:.2}x the baseline p50)",
            micros(p50),
            micros(p99),
            p50.as_secs_f64() / direct_latency.0.as_secs_f64()
        );
    };
    line("directly, submit?wait_ms (1 trip)", direct_one_trip);
    line("coordinator + 2 nodes", via_latency);
    line("coordinator, submit?wait_ms (1 trip)", via_one_trip);
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
    let mut cluster = LocalCluster::start(&[])?;
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

/// `wasmesh bench journal`: trivial jobs/s and sequential latency through a
/// coordinator and 2 nodes, its journal the SQLite file (baseline), then a fresh
/// schema in the PostgreSQL server at `postgres` (alone, `--shared` alone, and shared
/// by 2 coordinators, each with one of the nodes and a client of its own).
pub fn journal(postgres: &str, jobs: usize, sequential: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("wasmesh bench journal: coordinators and 2 nodes on loopback, {cores} cores");
    let cas = tempfile::tempdir()?;
    let cas = cas.path().to_str().context("a UTF-8 temporary path")?;
    let mut rows = Vec::new();
    let mut schemas = Vec::new();
    for (name, backend, coordinators) in [
        ("SQLite (baseline)", None, 1),
        ("PostgreSQL", Some(false), 1),
        ("PostgreSQL, --shared", Some(true), 1),
        ("PostgreSQL, 2 --shared", Some(true), 2),
    ] {
        // Each PostgreSQL case in a fresh schema.
        let (schema, url) = fresh_schema(postgres);
        let mut args = Vec::new();
        if let Some(shared) = backend {
            schemas.push(schema);
            args.extend(["--journal", url.as_str()]);
            if shared {
                args.extend(["--shared", "--cas-dir", cas]);
            }
        }
        let mut cluster = LocalCluster::start(&args)?;
        for _ in 1..coordinators {
            cluster.add_peer(&args)?;
        }
        // Each node with its own coordinator first.
        cluster.add_node_at("node-1", cores, 0)?;
        cluster.add_node_at("node-2", cores, 1 % coordinators)?;
        let clients: Vec<Client> = (0..coordinators).map(|c| cluster.client_of(c)).collect();
        let salt = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        let throughput = trivial_throughput(&clients, jobs, &salt)?;
        let latency = sequential_latency(&clients, sequential, &salt, true)?;
        rows.push((name, throughput, latency));
    }
    println!(
        "{jobs} trivial jobs in batches of 100 (split between the coordinators); \
         {sequential} submitted one at a time (through each coordinator in turn), each \
         waiting for its result (?wait_ms):"
    );
    let (base, base_latency) = (rows[0].1, rows[0].2.0);
    for (name, throughput, (p50, p99)) in rows {
        println!(
            "  {name:<24} {throughput:>7.0} jobs/s ({:.2}x)   sync p50 {:>6.0} us ({:.2}x)  p99 {:>6.0} us",
            throughput / base,
            micros(p50),
            p50.as_secs_f64() / base_latency.as_secs_f64(),
            micros(p99),
        );
    }
    println!(
        "  (the PostgreSQL journals are in schemas {})",
        schemas.join(", ")
    );
    Ok(())
}

/// A fresh schema's name, and the URL of `postgres` with it first in the search path.
fn fresh_schema(postgres: &str) -> (String, String) {
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let joiner = if postgres.contains('?') { '&' } else { '?' };
    let url = format!("{postgres}{joiner}options=-csearch_path%3D{schema}");
    (schema, url)
}

/// `wasmesh bench failover`: a coordinator owning a PostgreSQL journal, a standby
/// sharing it and the blob store, 2 nodes and a client that know both; `jobs` trivial
/// jobs submitted, the owner SIGKILLed once a third of them finished. Measures the gap
/// between the last result recorded before the kill and the first after it (polling
/// the usage ledger's job count, which grows with every result, every 5 ms).
/// `shared`: both coordinators active (`--shared`), each with one node first; the
/// time until the killed one's node is ready with the other is measured too.
pub fn failover(postgres: &str, jobs: usize, shared: bool) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let second = if shared {
        "both active"
    } else {
        "one a standby"
    };
    println!("wasmesh bench failover: 2 coordinators ({second}), 2 nodes, {cores} cores");
    let (_, url) = fresh_schema(postgres);
    let cas = tempfile::tempdir()?;
    let cas = cas
        .path()
        .to_str()
        .context("a UTF-8 temporary path")?
        .to_string();
    let mut args = vec![
        "--journal",
        &url,
        "--cas-dir",
        &cas,
        "--lease",
        "2s",
        "--takeover-after",
        "2s",
    ];
    if shared {
        args.push("--shared");
    }
    let mut cluster = LocalCluster::start(&args)?;
    if shared {
        cluster.add_peer(&args)?;
    } else {
        cluster.add_standby(&args)?;
    }
    cluster.add_node_at("node-1", cores, 0)?;
    cluster.add_node_at("node-2", cores, usize::from(shared))?;
    let (client, operator) = (cluster.client(), cluster.operator());
    let recorded = || -> Option<u64> {
        let usage = operator
            .call(reqwest::Method::GET, "/compute/usage", None)
            .ok()?;
        Some(
            usage["usage"]
                .as_array()?
                .iter()
                .filter_map(|r| r["jobs"].as_u64())
                .sum(),
        )
    };
    let worker = upload_trivial(&client)?;
    // Submitted meanwhile (through the failover too: the client moves to the standby,
    // each batch under its Idempotency-Key).
    let submitting = std::thread::spawn({
        let client = client.clone();
        move || -> anyhow::Result<Vec<u64>> {
            let mut lsns = Vec::with_capacity(jobs);
            for actions in trivial_batches(worker, "failover", jobs) {
                // While neither coordinator answers (the standby is taking over),
                // again. (A batch whose answer was lost may be taken twice: the same
                // actions, the second answered from the result cache.)
                let retry_until = Instant::now() + Duration::from_secs(60);
                loop {
                    match client.submit_batch(&actions, None) {
                        Ok(taken) => break lsns.extend(taken),
                        Err(_) if Instant::now() < retry_until => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(lsns)
        }
    });
    // Until a third finished: the time of the last change seen.
    let (mut seen, mut last_change) = (0, Instant::now());
    while seen < jobs as u64 / 3 {
        if let Some(now) = recorded().filter(|n| *n != seen) {
            (seen, last_change) = (now, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.kill_coordinator()?;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(120);
    let first_after = loop {
        ensure!(
            Instant::now() < deadline,
            "no result within 120 s of the kill"
        );
        if recorded().is_some_and(|n| n > seen) {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // With both active, the killed one's node moves to the other.
    let moved = if shared {
        let other = cluster.operator_of(1);
        loop {
            ensure!(
                Instant::now() < deadline,
                "node-1 did not move within 120 s of the kill"
            );
            let listed = other.call(reqwest::Method::GET, "/api/v1/cluster/nodes", None)?;
            let ready = listed["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["id"] == "node-1" && n["state"] == "ready");
            if ready {
                break Some(killed.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    } else {
        None
    };
    let lsns = submitting
        .join()
        .map_err(|_| anyhow::anyhow!("the submitting thread panicked"))??;
    for lsn in &lsns {
        wait_ok(&client, *lsn)?;
    }
    let moved = moved.map_or(String::new(), |m| {
        format!(
            "; the killed one's node ready with the other after {:.2} s",
            m.as_secs_f64()
        )
    });
    println!(
        "{jobs} trivial jobs; the first coordinator killed after {seen} results: last \
         result before the kill -> first after: {:.2} s (the kill -> first result: \
         {:.2} s){moved}; every job succeeded",
        (first_after - last_change).as_secs_f64(),
        (first_after - killed).as_secs_f64()
    );
    Ok(())
}

/// A coordinator and 2 one-slot nodes with `module` uploaded as worker `name`.
fn two_nodes_with(
    module: &std::path::Path,
    name: &str,
) -> anyhow::Result<(LocalCluster, Client, HashHex)> {
    let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let hash = HashHex::of(&wasm);
    let mut cluster = LocalCluster::start(&[])?;
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
            ensure!(
                reduce.state == JobState::Succeeded,
                "the reduce failed: {reduce:?}"
            );
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
