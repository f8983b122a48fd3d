#!/usr/bin/env bash
# The main job: builds wasmesh and the example guests, then starts a local cluster (a
# coordinator and 2 nodes on loopback, data in a temporary directory), renders the
# Mandelbrot set as 16 tiles on one node and then on both into mandelbrot.png, prints
# per-node tile counts and the speed-up, and stops the cluster.
# Installs the wasm32-wasip1 target when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "==> installing the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

echo "==> building the example guests (wasm32-wasip1)"
cargo build --release --manifest-path examples/Cargo.toml --target wasm32-wasip1
echo "==> building wasmesh"
cargo build --release -p wasmesh-host
echo "==> running the demo"
./target/release/wasmesh demo --module examples/target/wasm32-wasip1/release/mandelbrot.wasm --out mandelbrot.png "$@"
