//! `wasmesh bench sandbox`: the same kernels native and in the sandbox, under each
//! way of enforcing limits, in one run.
//!
//! Kernels: the Mandelbrot tile (an escape-time float loop) and the sieve (integer and
//! memory), each built from the very source the wasm module is built from. The
//! sandbox runs them with every limit enforced in each configuration: fuel metering
//! and epoch interruption (the default), epoch interruption without fuel, and fuel
//! without epoch checks (deadlines checked at fuel yields). Each case runs `runs`
//! times after a warm-up; the medians are compared with native's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use wasmesh_runtime::{Config, Outcome, RunSpec, Sandbox};

use super::{mandelbrot, sieve};

/// A way of enforcing the limits.
struct Knobs {
    name: &'static str,
    fuel: bool,
    epoch: bool,
}

const KNOBS: [Knobs; 3] = [
    Knobs {
        name: "fuel + epoch (default)",
        fuel: true,
        epoch: true,
    },
    Knobs {
        name: "epoch only (no fuel)",
        fuel: false,
        epoch: true,
    },
    Knobs {
        name: "fuel only (yields)",
        fuel: true,
        epoch: false,
    },
];

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    f()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    Ok(median(times))
}

/// One kernel: its wasm, how to run it there, and natively.
struct Kernel<'a> {
    name: &'a str,
    wasm: Vec<u8>,
    spec: RunSpec,
    expected: Vec<u8>,
    native: Box<dyn Fn() -> Vec<u8> + 'a>,
}

/// Runs the scenarios and prints their numbers.
pub fn run(mandelbrot_wasm: &Path, sieve_wasm: &Path, runs: usize) -> anyhow::Result<()> {
    ensure!(runs > 0, "--runs is at least 1");
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (x, y, size, image, iter) = (0, 0, 384, 384, 500);
    let tile =
        serde_json::json!({"x": x, "y": y, "size": size, "image_size": image, "max_iter": iter});
    let n = 30_000_000usize;
    let kernels = [
        Kernel {
            name: "mandelbrot 384x384 @ 500 (float)",
            wasm: read(mandelbrot_wasm)?,
            spec: RunSpec::new().stdin(tile.to_string()),
            expected: mandelbrot::render_tile(x, y, size, image, iter),
            native: Box::new(move || mandelbrot::render_tile(x, y, size, image, iter)),
        },
        Kernel {
            name: "sieve to 30,000,000 (integer)",
            wasm: read(sieve_wasm)?,
            spec: RunSpec::new().arg(n.to_string()),
            expected: format!("{}\n", sieve::count_primes(n)).into_bytes(),
            native: Box::new(move || format!("{}\n", sieve::count_primes(n)).into_bytes()),
        },
    ];
    println!(
        "wasmesh bench sandbox: median of {runs} runs each, whole runs (instantiate included)"
    );
    for kernel in &kernels {
        let native = time(runs, || {
            ensure!(std::hint::black_box((kernel.native)()) == kernel.expected);
            Ok(())
        })?;
        println!("  {}", kernel.name);
        println!(
            "    native (same source, LLVM)    {:>9.1} ms   1.00x",
            native.as_secs_f64() * 1e3
        );
        for knobs in &KNOBS {
            let sandbox = Sandbox::new(Config {
                fuel_metering: knobs.fuel,
                epoch_interruption: knobs.epoch,
                max_instances: 4,
                ..Config::default()
            })?;
            let module = sandbox.load(&kernel.wasm)?;
            let wasm = time(runs, || {
                let report = sandbox.run(&module, kernel.spec.clone())?;
                ensure!(
                    report.outcome == Outcome::Exited(0) && report.stdout == kernel.expected,
                    "{}: {:?}",
                    kernel.name,
                    report.outcome
                );
                Ok(())
            })?;
            println!(
                "    wasm, {:<24} {:>9.1} ms   {:.2}x",
                knobs.name,
                wasm.as_secs_f64() * 1e3,
                wasm.as_secs_f64() / native.as_secs_f64()
            );
        }
    }
    Ok(())
}
