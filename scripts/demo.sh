#!/usr/bin/env bash
# The main job: builds wasmesh and the example guests, then renders the Mandelbrot demo
# (16 tiles through the sandbox, one core vs all cores) into mandelbrot.png.
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
