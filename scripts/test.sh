#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the guest jobs, every test.
# Installs the wasm32-wasip1 target, and Debian's chromium and chromium-driver (for
# the dashboard's browser tests), when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "==> installing the wasm32-wasip1 target"
  rustup target add wasm32-wasip1
fi

# The dashboard's tests drive headless Chromium through chromedriver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "==> installing chromium and chromium-driver (the dashboard's browser tests)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
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
