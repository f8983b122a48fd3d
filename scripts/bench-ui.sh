#!/usr/bin/env bash
# The dashboard under load in headless Chromium (issue 14; results in BENCHMARKS.md):
# first data on screen for each page with 100,000 jobs in the journal, and the Jobs
# page following a burst of jobs. Needs chromium and chromedriver (scripts/test.sh
# installs them); installs selenium into a virtual environment when missing
# (target/bench-venv, or $WASMESH_BENCH_VENV). Arguments go to scripts/bench_ui.py
# (--jobs, --burst, --fail).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${WASMESH_BENCH_VENV:-target/bench-venv}
if ! "$VENV/bin/python" -c 'import selenium' 2>/dev/null; then
  echo "==> installing selenium into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'selenium>=4,<5'
fi
command -v chromedriver >/dev/null || { echo "chromedriver is missing (see scripts/test.sh)" >&2; exit 1; }

echo "==> building wasmesh and the hash example"
cargo build --release -p wasmesh-host
cargo build --release --target wasm32-wasip1 --manifest-path examples/Cargo.toml -p hash
BIN=$PWD/target/release/wasmesh

DIR=$(mktemp -d -t wasmesh-bench-ui-XXXXXX)
NODE=""
cleanup() {
  if [ -n "$NODE" ]; then kill "$NODE" 2>/dev/null || true; wait "$NODE" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN" node --listen 127.0.0.1:0 --data-dir "$DIR/node" >"$DIR/node.log" 2>&1 &
NODE=$!
URL=""
for _ in $(seq 300); do
  if line=$(grep -o 'listening on http://[0-9.:]*' "$DIR/node.log" | head -1); then URL=${line#listening on }; break; fi
  kill -0 "$NODE" 2>/dev/null || { cat "$DIR/node.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "the node did not start" >&2; exit 1; }
WORKER=$("$BIN" upload --server "$URL" examples/target/wasm32-wasip1/release/hash.wasm)
echo "==> running (node $URL)"
"$VENV/bin/python" scripts/bench_ui.py --server "$URL" --worker "$WORKER" "$@"
