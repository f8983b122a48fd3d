#!/usr/bin/env bash
# `wasmesh exec` against `wasmtime run` (the CLI of the wasmtime version wasmesh embeds)
# and native builds of the same jobs, whole process (issue 13; results in
# BENCHMARKS.md): a trivial job, the Mandelbrot float kernel and the integer sieve.
# Installs wasmtime-cli into target/bench-tools when missing (a ~10 minute build),
# builds wasmesh, the examples for wasm32-wasip1 and natively, and runs
# scripts/bench_exec.py. Arguments are passed to it (--runs).
set -euo pipefail
cd "$(dirname "$0")/.."

WASMTIME_VERSION=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c \
  'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wasmtime"))')
TOOLS=target/bench-tools
WASMTIME=$TOOLS/bin/wasmtime
if ! "$WASMTIME" --version 2>/dev/null | grep -q "^wasmtime $WASMTIME_VERSION"; then
  echo "==> installing wasmtime-cli $WASMTIME_VERSION into $TOOLS"
  cargo install --locked --quiet --root "$TOOLS" "wasmtime-cli@$WASMTIME_VERSION"
fi

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi
echo "==> building wasmesh and the examples (wasm32-wasip1 and native)"
cargo build --release -p wasmesh-host
cargo build --release --target wasm32-wasip1 --manifest-path examples/Cargo.toml
cargo build --release --manifest-path examples/Cargo.toml --target-dir target/examples-native \
  -p hash -p mandelbrot -p sieve

CACHE=$(mktemp -d -t wasmesh-exec-cache-XXXXXX)
trap 'rm -rf "$CACHE"' EXIT
python3 scripts/bench_exec.py --wasmesh target/release/wasmesh --wasmtime "$WASMTIME" \
  --wasm-dir examples/target/wasm32-wasip1/release --native-dir target/examples-native/release \
  --cache-dir "$CACHE" "$@"
