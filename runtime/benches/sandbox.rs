//! Sandbox benchmarks: the Mandelbrot kernel native vs wasm (fuel on and off), trivial
//! action latency with a warm cache, and cold compile time.
//! Run: cargo bench -p wasmesh-runtime --bench sandbox
//!
//! Criterion measures each case; afterwards a summary measured in the same process
//! prints the ratios and latency percentiles that BENCHMARKS.md records.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use wasmesh_runtime::{CompiledModule, Config, Outcome, RunSpec, Sandbox};
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

#[path = "../../examples/mandelbrot/src/kernel.rs"]
mod kernel;

/// One 128 x 128 tile of a 512-pixel image at 500 iterations: ~10 ms of real work.
const TILE: (u32, u32, u32, u32, u32) = (192, 192, 128, 512, 500);

fn tile_input() -> String {
    let (x, y, size, image_size, max_iter) = TILE;
    serde_json::json!({"x": x, "y": y, "size": size, "image_size": image_size, "max_iter": max_iter}).to_string()
}

fn native_tile() -> Vec<u8> {
    let (x, y, size, image_size, max_iter) = TILE;
    kernel::render_tile(x, y, size, image_size, max_iter)
}

fn sandbox(fuel_metering: bool) -> Sandbox {
    Sandbox::new(Config {
        fuel_metering,
        max_instances: 8,
        ..Config::default()
    })
    .expect("sandbox")
}

fn run_ok(sandbox: &Sandbox, module: &CompiledModule, spec: RunSpec) -> Vec<u8> {
    let report = sandbox.run(module, spec).expect("run");
    assert_eq!(report.outcome, Outcome::Exited(0));
    report.stdout
}

/// The smallest WASI command there is: `_start` returns at once.
fn trivial_wasm() -> Vec<u8> {
    wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
        .expect("wat")
}

/// A module differing from `wasm` only by a custom section, so it hashes (and
/// compiles) afresh.
fn variant(wasm: &[u8], n: u64) -> Vec<u8> {
    let mut out = wasm.to_vec();
    let name = b"wasmesh-bench";
    let payload = n.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    out.push(0); // custom section id
    out.push(size as u8); // LEB128 of a size < 128
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

fn benches(c: &mut Criterion) {
    let mandelbrot = guest_bytes("mandelbrot");
    let metered = sandbox(true);
    let unmetered = sandbox(false);
    let metered_module = metered.load(&mandelbrot).unwrap();
    let unmetered_module = unmetered.load(&mandelbrot).unwrap();
    assert_eq!(
        run_ok(
            &metered,
            &metered_module,
            RunSpec::new().stdin(tile_input())
        ),
        native_tile()
    );

    let mut group = c.benchmark_group("mandelbrot_tile_128px_500iter");
    group.sample_size(20);
    group.bench_function("native", |b| b.iter(|| black_box(native_tile())));
    group.bench_function("wasm_fuel_on", |b| {
        b.iter(|| {
            run_ok(
                &metered,
                &metered_module,
                RunSpec::new().stdin(tile_input()),
            )
        })
    });
    group.bench_function("wasm_fuel_off", |b| {
        b.iter(|| {
            run_ok(
                &unmetered,
                &unmetered_module,
                RunSpec::new().stdin(tile_input()),
            )
        })
    });
    group.finish();

    let trivial = metered.load(&trivial_wasm()).unwrap();
    let rust_guest = metered.load(&guest_bytes(TEST_GUEST)).unwrap();
    let mut group = c.benchmark_group("action");
    group.bench_function("trivial_wat_warm", |b| {
        b.iter(|| run_ok(&metered, &trivial, RunSpec::new().without_tmp()))
    });
    group.bench_function("rust_noop_warm", |b| {
        b.iter(|| {
            run_ok(
                &metered,
                &rust_guest,
                RunSpec::new().without_tmp().arg("noop"),
            )
        })
    });
    group.bench_function("rust_noop_warm_with_tmp", |b| {
        b.iter(|| run_ok(&metered, &rust_guest, RunSpec::new().arg("noop")))
    });
    group.finish();

    let guest = guest_bytes(TEST_GUEST);
    let mut n = 0u64;
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("test_guest_cold", |b| {
        b.iter(|| {
            n += 1;
            metered.load(&variant(&guest, n)).unwrap()
        })
    });
    group.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median_of(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    percentile(&times, 0.5)
}

/// Ratios and percentiles measured in this run, for BENCHMARKS.md.
fn summary() {
    let mandelbrot = guest_bytes("mandelbrot");
    let metered = sandbox(true);
    let unmetered = sandbox(false);
    let metered_module = metered.load(&mandelbrot).unwrap();
    let unmetered_module = unmetered.load(&mandelbrot).unwrap();
    let native = median_of(30, || {
        black_box(native_tile());
    });
    let fuel_on = median_of(30, || {
        run_ok(
            &metered,
            &metered_module,
            RunSpec::new().stdin(tile_input()),
        );
    });
    let fuel_off = median_of(30, || {
        run_ok(
            &unmetered,
            &unmetered_module,
            RunSpec::new().stdin(tile_input()),
        );
    });
    println!("\n== summary (medians, same process) ==");
    println!(
        "mandelbrot tile native        {:>9.3} ms",
        native.as_secs_f64() * 1e3
    );
    println!(
        "mandelbrot tile wasm fuel on  {:>9.3} ms  ({:.2}x native)",
        fuel_on.as_secs_f64() * 1e3,
        fuel_on.as_secs_f64() / native.as_secs_f64()
    );
    println!(
        "mandelbrot tile wasm fuel off {:>9.3} ms  ({:.2}x native; fuel costs {:+.1}%)",
        fuel_off.as_secs_f64() * 1e3,
        fuel_off.as_secs_f64() / native.as_secs_f64(),
        (fuel_on.as_secs_f64() / fuel_off.as_secs_f64() - 1.0) * 100.0
    );

    for (name, wasm, args) in [
        ("trivial (WAT _start)", trivial_wasm(), vec![]),
        (
            "rust test guest noop",
            guest_bytes(TEST_GUEST),
            vec!["noop"],
        ),
    ] {
        let module = metered.load(&wasm).unwrap();
        let mut times: Vec<Duration> = (0..10_000)
            .map(|_| {
                let start = Instant::now();
                run_ok(
                    &metered,
                    &module,
                    RunSpec::new().without_tmp().args(args.iter().copied()),
                );
                start.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "{name:<22} warm instantiate+run: p50 {:>7.1} us  p99 {:>7.1} us",
            percentile(&times, 0.5).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6
        );
    }

    let guest = guest_bytes(TEST_GUEST);
    let guest_kib = guest.len() / 1024;
    let cold = median_of(5, {
        let mut n = 1_000_000u64;
        move || {
            n += 1;
            metered.load(&variant(&guest, n)).unwrap();
        }
    });
    println!(
        "test guest ({} KiB) cold compile: median {:.1} ms",
        guest_kib,
        cold.as_secs_f64() * 1e3
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    summary();
}
