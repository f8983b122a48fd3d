#!/usr/bin/env python3
"""Whole-process runs of the same jobs: native, `wasmtime run` and `wasmesh exec`.

Run by scripts/bench-exec-vs-wasmtime.sh (results in BENCHMARKS.md, issue 13). Each
case is one process start to exit, median of --runs after one warm-up run (which also
fills both compile caches). Every wasm run's stdout is checked against native's.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def timed(cmd, stdin, runs):
    """Median wall time of `runs` runs of `cmd` (after a warm-up) and its stdout."""
    def once():
        start = time.perf_counter()
        done = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        return elapsed, done.stdout

    _, out = once()
    times = [once()[0] for _ in range(runs)]
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--wasmesh", required=True)
    p.add_argument("--wasmtime", required=True)
    p.add_argument("--wasm-dir", required=True, help="examples' wasm32-wasip1 release dir")
    p.add_argument("--native-dir", required=True, help="the same examples built natively")
    p.add_argument("--cache-dir", required=True, help="wasmesh exec's compile cache")
    p.add_argument("--runs", type=int, default=11)
    args = p.parse_args()

    tile = json.dumps({"x": 0, "y": 0, "size": 1024, "image_size": 1024, "max_iter": 1000})
    cases = [
        ("trivial: hash of empty input", "hash", [], b""),
        ("float: mandelbrot 1024x1024 @ 1000", "mandelbrot", [], tile.encode()),
        ("integer: sieve to 30,000,000", "sieve", ["30000000"], b""),
    ]
    # Each line: (label, command builder). `wasmtime run` enforces no limit by default;
    # `-W fuel` meters fuel, `-W timeout` turns epoch interruption on for its deadline.
    # `wasmesh exec` enforces all of them (fuel, memory, wall time, output) always.
    big = str(10**15)
    lines = [
        ("wasmtime run (no limits)", lambda m, a: [args.wasmtime, "run", m, *a]),
        ("wasmtime run -W fuel", lambda m, a: [args.wasmtime, "run", "-W", f"fuel={big}", m, *a]),
        ("wasmtime run -W timeout (epoch)", lambda m, a: [args.wasmtime, "run", "-W", "timeout=600s", m, *a]),
        ("wasmesh exec (every limit)", lambda m, a: [args.wasmesh, "exec", "--cache-dir", args.cache_dir,
                                                     "--fuel", big, "--timeout", "600s", m, "--", *a]),
    ]
    print(f"whole process, median of {args.runs} runs after a warm-up")
    for label, name, guest_args, stdin in cases:
        native, expected = timed([f"{args.native_dir}/{name}", *guest_args], stdin, args.runs)
        print(f"  {label}")
        print(f"    native (same source)               {native * 1e3:9.1f} ms   1.00x")
        base = None
        for line, build in lines:
            t, out = timed(build(f"{args.wasm_dir}/{name}.wasm", guest_args), stdin, args.runs)
            if out != expected:
                sys.exit(f"{line} on {name}: output differs from native's")
            base = base or t
            print(f"    {line:<34} {t * 1e3:9.1f} ms   {t / native:5.2f}x native   {t / base:5.2f}x wasmtime run")


if __name__ == "__main__":
    main()
