#!/usr/bin/env bash
# wasmesh against Ray on this machine, in one run (issue 13; results in BENCHMARKS.md):
# 5,000 trivial tasks then every result, and one task at a time, on both. Builds
# wasmesh (release), starts a coordinator and 2 nodes (2 slots each) on 127.0.0.1 with
# data in a temporary directory, installs Ray into a virtual environment when missing
# (target/bench-venv, or $WASMESH_BENCH_VENV), and runs scripts/bench_vs_ray.py.
# Arguments are passed to it (--tasks, --latency-tasks, --batch, --rounds, --cpus);
# WASMESH_BIN=PATH uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${WASMESH_BENCH_VENV:-target/bench-venv}
if ! "$VENV/bin/python" -c 'import ray' 2>/dev/null; then
  echo "==> installing Ray into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'ray>=2,<3'
fi

# WASMESH_BIN runs another build (an older commit's, for a before/after).
if [ -n "${WASMESH_BIN:-}" ]; then
  BIN=$(realpath "$WASMESH_BIN")
else
  echo "==> building wasmesh"
  cargo build --release -p wasmesh-host
  BIN=$PWD/target/release/wasmesh
fi

DIR=$(mktemp -d -t wasmesh-vs-ray-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# Starts `wasmesh ARGS...` with its output in $DIR/NAME.log and sets URL to the URL it
# announces ("... listening on http://..."). Not called in `$(...)`: a subshell's
# PIDS would not reach `cleanup`, which then left the process running.
start() {
  local name=$1; shift
  "$BIN" "$@" >"$DIR/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do
    if url=$(grep -o 'listening on http://[0-9.:]*' "$DIR/$name.log" | head -1); then
      URL=${url#listening on }
      return
    fi
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$DIR/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not start" >&2; exit 1
}

start coordinator coordinator --listen 127.0.0.1:0 --data-dir "$DIR/coordinator" \
  --heartbeat-interval 200ms
COORD=$URL
for n in 1 2; do
  start "node-$n" node --listen 127.0.0.1:0 --node-id "node-$n" --slots 2 \
    --data-dir "$DIR/node-$n" --coordinator "$COORD"
done
for _ in $(seq 300); do
  ready=$(curl -fsS "$COORD/api/v1/cluster/nodes" | "$VENV/bin/python" -c \
    'import json,sys; print(sum(n.get("state") == "ready" for n in json.load(sys.stdin)["nodes"]))')
  [ "$ready" = 2 ] && break
  sleep 0.1
done
[ "$ready" = 2 ] || { echo "the nodes did not become ready" >&2; exit 1; }

# The cheapest action: a module whose _start returns (the 39 bytes `wasmesh bench` uses).
printf '\x00asm\x01\x00\x00\x00\x01\x04\x01\x60\x00\x00\x03\x02\x01\x00\x05\x03\x01\x00\x01\x07\x13\x02\x06memory\x02\x00\x06_start\x00\x00\x0a\x04\x01\x02\x00\x0b' >"$DIR/trivial.wasm"
WORKER=$("$BIN" upload "$DIR/trivial.wasm" --name trivial --server "$COORD")

echo "==> running (coordinator $COORD, worker $WORKER)"
"$VENV/bin/python" scripts/bench_vs_ray.py --server "$COORD" --worker "$WORKER" "$@"
