//! `wasmesh demo`: the main job. Starts a local cluster (a coordinator and nodes, real
//! processes on loopback, data in a temporary directory), uploads the `mandelbrot`
//! example with the needs dance, renders 16 tiles as one queue on one node and then on
//! all of them, writes the picture as a PNG, prints per-node tile counts, timings and
//! the speed-up, and shuts the cluster down cleanly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::json;

use std::path::PathBuf;
use std::process::ExitCode;

use wasmesh_host::client::Client;
use wasmesh_host::model::{HashHex, JobState};

use crate::cmd::local::LocalCluster;
use crate::cmd::say;

/// Arguments of `wasmesh demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The compiled mandelbrot example.
    #[arg(
        long,
        default_value = "examples/target/wasm32-wasip1/release/mandelbrot.wasm"
    )]
    pub module: PathBuf,
    /// Where to write the picture.
    #[arg(long, default_value = "mandelbrot.png")]
    pub out: PathBuf,
    /// Edge of the square image in pixels (a multiple of 4: 16 tiles in a 4 x 4 grid).
    #[arg(long, default_value_t = 1024)]
    pub size: u32,
    /// Iteration cap per pixel.
    #[arg(long, default_value_t = 1000)]
    pub max_iter: u32,
    /// Nodes in the local cluster (the first round uses one, the second all).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Slots of each node.
    #[arg(long, default_value_t = 1)]
    pub slots_per_node: usize,
}

/// Tiles per image edge: 4 x 4 = 16 tiles.
pub(crate) const GRID: u32 = 4;

/// The action rendering tile `index` (row by row) of an `image_size` image: its input
/// put in the store, and `round` in its environment so that no round is answered from
/// an earlier one's result cache.
pub(crate) fn tile_action(
    client: &Client,
    worker: HashHex,
    index: u32,
    image_size: u32,
    max_iter: u32,
    round: &str,
) -> anyhow::Result<serde_json::Value> {
    let size = image_size / GRID;
    let input = json!({
        "x": (index % GRID) * size, "y": (index / GRID) * size, "size": size,
        "image_size": image_size, "max_iter": max_iter,
    });
    let hash = client.put_blob(input.to_string().into_bytes())?;
    Ok(json!({"worker": worker, "input": hash, "env": {"WASMESH_ROUND": round}}))
}

/// One rendered tile: its grid position and its pixels.
struct Tile {
    column: u32,
    row: u32,
    pixels: Vec<u8>,
}

/// A round's outcome.
struct Round {
    tiles: Vec<Tile>,
    elapsed: Duration,
    per_node: BTreeMap<String, usize>,
}

/// Runs `wasmesh demo`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    ensure!(
        args.size >= GRID && args.size.is_multiple_of(GRID),
        "--size must be a positive multiple of {GRID}"
    );
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let wasm = std::fs::read(&args.module).with_context(|| {
        format!(
            "reading {} (build the examples first: cargo build --release --target wasm32-wasip1 --manifest-path examples/Cargo.toml)",
            args.module.display()
        )
    })?;
    say!(
        "wasmesh demo: {0}x{0} Mandelbrot as {1} tiles, max_iter {2}, on a local cluster",
        args.size,
        GRID * GRID,
        args.max_iter
    )?;
    let mut cluster = LocalCluster::start(&[])?;
    say!(
        "  coordinator  {} (fresh tenant, operator and node keys)",
        cluster.coordinator.url
    )?;
    cluster.add_node("node-1", args.slots_per_node)?;
    say!(
        "  node-1       {} ({} slot(s))",
        cluster.nodes[0].url,
        args.slots_per_node
    )?;
    let client = cluster.client();

    let module = HashHex::of(&wasm);
    let first = client.upload_worker(
        &json!({"name": "mandelbrot", "module": module}),
        &[(module, &wasm)],
    )?;
    let again = client.upload_worker(
        &json!({"name": "mandelbrot", "module": module}),
        &[(module, &wasm)],
    )?;
    say!(
        "  uploaded worker {} ({} bytes sent; uploading it again sent {})",
        &first.worker.to_string()[..12],
        first.sent_bytes,
        again.sent_bytes
    )?;

    let one = render(&client, first.worker, &args, 1, "one node")?;
    for i in 2..=args.nodes {
        let id = format!("node-{i}");
        cluster.add_node(&id, args.slots_per_node)?;
        say!(
            "  {id:<12} {} ({} slot(s))",
            cluster.nodes[i - 1].url,
            args.slots_per_node
        )?;
    }
    let all = render(
        &client,
        first.worker,
        &args,
        args.nodes,
        &format!("{} nodes", args.nodes),
    )?;
    say!(
        "  speed-up with {} nodes: {:.2}x",
        args.nodes,
        one.elapsed.as_secs_f64() / all.elapsed.as_secs_f64()
    )?;
    for (node, count) in &all.per_node {
        say!("    {node}: {count} tiles")?;
    }
    ensure!(
        all.tiles.len() == (GRID * GRID) as usize && one.tiles.len() == all.tiles.len(),
        "tiles are missing"
    );
    write_png(&args.out, args.size, &all.tiles)?;
    say!("  wrote {}", args.out.display())?;
    cluster.shutdown()?;
    say!("  cluster stopped")?;
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Renders every tile as one queue through the coordinator and reads the pixels back.
/// A warm-up job per node first, so that module fetch and compile are not timed; every
/// round's actions carry the round in their environment, so none is answered from the
/// result cache of an earlier round.
fn render(
    client: &Client,
    worker: HashHex,
    args: &Args,
    nodes: usize,
    label: &str,
) -> anyhow::Result<Round> {
    let queue = client.call(
        reqwest::Method::POST,
        "/compute/queues",
        Some(&json!({"name": format!("mandelbrot on {label}")})),
    )?;
    let q = queue["queue_id"]
        .as_u64()
        .context("no queue id in the answer")?
        .to_string();
    let round = format!("{nodes}-{}", uuid::Uuid::new_v4().simple());
    // Warm-up: one small job per slot in the cluster, all at once, so every node
    // fetches and compiles the module.
    let warm: Vec<serde_json::Value> = (0..(nodes * args.slots_per_node) as u32)
        .map(|i| {
            tile_action(
                client,
                worker,
                i % (GRID * GRID),
                4 * GRID,
                args.max_iter,
                &round,
            )
        })
        .collect::<anyhow::Result<_>>()?;
    for lsn in client.submit_batch(&warm, Some(&q))? {
        client.wait(lsn, Duration::from_secs(300))?;
    }

    let actions: Vec<serde_json::Value> = (0..GRID * GRID)
        .map(|i| tile_action(client, worker, i, args.size, args.max_iter, &round))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let lsns = client.submit_batch(&actions, Some(&q))?;
    let mut results = Vec::with_capacity(lsns.len());
    for lsn in &lsns {
        results.push(client.wait(*lsn, Duration::from_secs(600))?);
    }
    let elapsed = started.elapsed();
    say!("  {label:<9}: {:>8.1} ms", ms(elapsed))?;
    let mut tiles = Vec::with_capacity(results.len());
    let mut per_node = BTreeMap::new();
    for (index, result) in results.into_iter().enumerate() {
        if result.state != JobState::Succeeded {
            bail!(
                "tile {index} {} ({}): {}",
                result.state,
                result.outcome,
                result.message.unwrap_or_default()
            );
        }
        *per_node.entry(result.node.clone()).or_insert(0) += 1;
        let index = index as u32;
        tiles.push(Tile {
            column: index % GRID,
            row: index / GRID,
            pixels: client.blob(&result.output)?,
        });
    }
    Ok(Round {
        tiles,
        elapsed,
        per_node,
    })
}

/// Assembles the grey tiles into one RGB image through a blue-to-gold palette.
fn write_png(path: &Path, size: u32, tiles: &[Tile]) -> anyhow::Result<()> {
    let tile_size = size / GRID;
    let mut rgb = vec![0u8; (size * size * 3) as usize];
    for tile in tiles {
        ensure!(
            tile.pixels.len() == (tile_size * tile_size) as usize,
            "tile has {} bytes",
            tile.pixels.len()
        );
        for (i, &grey) in tile.pixels.iter().enumerate() {
            let x = tile.column * tile_size + i as u32 % tile_size;
            let y = tile.row * tile_size + i as u32 / tile_size;
            let at = ((y * size + x) * 3) as usize;
            rgb[at..at + 3].copy_from_slice(&palette(grey));
        }
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size, size);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&rgb)?;
    Ok(())
}

/// The Bernstein-polynomial palette (deep blue -> teal -> orange -> white-ish) over the
/// square root of the grey level, which spreads the many fast-escaping points.
fn palette(grey: u8) -> [u8; 3] {
    if grey == 0 {
        return [0, 0, 0];
    }
    let t = (f32::from(grey) / 255.0).sqrt();
    let u = 1.0 - t;
    let channel = |v: f32| (v.clamp(0.0, 1.0) * 255.0) as u8;
    [
        channel(9.0 * u * t * t * t),
        channel(15.0 * u * u * t * t),
        channel(8.5 * u * u * u * t),
    ]
}
