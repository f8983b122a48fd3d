//! `wasmesh demo`: renders the Mandelbrot set as 16 tiles through the sandbox, first on
//! one slot and then on every core, and writes the picture as a PNG.
//!
//! Until the cluster exists this is the main job; later it fans the same tiles out to
//! nodes through a coordinator.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use wasmesh_runtime::{CompiledModule, Config, Outcome, RunSpec, Sandbox};

use crate::cli::DemoArgs;

/// Tiles per image edge: 4 x 4 = 16 tiles.
const GRID: u32 = 4;

/// One rendered tile: its grid position, its pixels and which slot ran it.
struct Tile {
    column: u32,
    row: u32,
    pixels: Vec<u8>,
    slot: usize,
}

/// Runs `wasmesh demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    ensure!(
        args.size >= GRID && args.size.is_multiple_of(GRID),
        "--size must be a positive multiple of {GRID}"
    );
    let wasm = std::fs::read(&args.module).with_context(|| {
        format!(
            "reading {} (build the examples first: cargo build --release --target wasm32-wasip1 --manifest-path examples/Cargo.toml)",
            args.module.display()
        )
    })?;
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let sandbox = Sandbox::new(Config::default())?;
    let module = sandbox.load(&wasm)?;

    println!(
        "wasmesh demo: {0}x{0} Mandelbrot, {1} tiles, max_iter {2}",
        args.size,
        GRID * GRID,
        args.max_iter
    );
    let (_, one_slot) = render(&sandbox, &module, &args, 1)?;
    println!("  1 slot : {:>8.1} ms", ms(one_slot));
    let (tiles, many_slots) = render(&sandbox, &module, &args, slots)?;
    println!(
        "  {slots} slots: {:>8.1} ms  (speed-up {:.2}x)",
        ms(many_slots),
        one_slot.as_secs_f64() / many_slots.as_secs_f64()
    );
    for slot in 0..slots {
        println!(
            "    slot {slot}: {} tiles",
            tiles.iter().filter(|t| t.slot == slot).count()
        );
    }
    write_png(&args.out, args.size, &tiles)?;
    println!("  wrote {}", args.out.display());
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Renders all tiles with `slots` threads pulling from a shared counter.
fn render(
    sandbox: &Sandbox,
    module: &CompiledModule,
    args: &DemoArgs,
    slots: usize,
) -> anyhow::Result<(Vec<Tile>, Duration)> {
    let tile_size = args.size / GRID;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<anyhow::Result<Vec<Tile>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..slots)
            .map(|slot| {
                let next = &next;
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed) as u32;
                        if index >= GRID * GRID {
                            return Ok(done);
                        }
                        let (column, row) = (index % GRID, index / GRID);
                        let input = serde_json::json!({
                            "x": column * tile_size, "y": row * tile_size, "size": tile_size,
                            "image_size": args.size, "max_iter": args.max_iter,
                        });
                        let report =
                            sandbox.run(module, RunSpec::new().stdin(input.to_string()))?;
                        if report.outcome != Outcome::Exited(0) {
                            bail!(
                                "tile {index} {}: {}",
                                report.outcome,
                                String::from_utf8_lossy(&report.stderr)
                            );
                        }
                        done.push(Tile {
                            column,
                            row,
                            pixels: report.stdout,
                            slot,
                        });
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a demo worker panicked"))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut tiles = Vec::new();
    for result in results {
        tiles.extend(result?);
    }
    Ok((tiles, elapsed))
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
