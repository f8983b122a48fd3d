#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the guest jobs, every test.
# Installs the wasm32-wasip1 target when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "==> installing the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

# The guest jobs share one target directory with the test build's guest step.
GUESTS=(--manifest-path examples/Cargo.toml --target wasm32-wasip1 --target-dir target/guests)

echo "==> cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --all --manifest-path examples/Cargo.toml -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --all-targets -- -D warnings
cargo clippy --release "${GUESTS[@]}" -- -D warnings

echo "==> building the guest jobs"
cargo build --release "${GUESTS[@]}"

echo "==> cargo test"
cargo test
