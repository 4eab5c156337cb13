#!/usr/bin/env bash
# The project's test command (`make test`, and CI through .ci/run): installs what is missing,
# checks formatting and lints on both targets, runs the native tests, builds the filter and the
# control plane binary once, then runs the end-to-end suite against real Envoy 1.40 (static mode,
# and live mode with the real control plane), and its live-mode tests once more with the control
# planes on PostgreSQL. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==> %s\n' "$*"; }

scripts/setup.sh

section "cargo fmt --check"
cargo fmt --all -- --check

section "control-plane layers run one way (scripts/check-layers.py)"
.venv/bin/python scripts/check_layers_test.py
.venv/bin/python scripts/check-layers.py

section "cargo clippy (native, all targets)"
cargo clippy --workspace --all-targets -- -D warnings

section "cargo clippy (filter, wasm32-wasip1)"
cargo clippy -p tollgate-filter --target wasm32-wasip1 -- -D warnings

section "cargo test (native)"
cargo test --workspace

section "cargo test (control plane on PostgreSQL: every server of its tests keeps the catalogue there)"
TOLLGATE_TEST_BACKEND=postgres cargo test -p tollgate-control-plane --tests

section "build target/tollgate.wasm"
scripts/build-wasm.sh

section "build target/debug/tollgate (control plane and CLI for the live-mode tests)"
cargo build -p tollgate-control-plane

section "end-to-end tests (Envoy 1.40, --concurrency 2, real control plane)"
.venv/bin/python -m pytest tests/e2e "$@"

# The schema fuzz (minutes, the same HTTP input on either backend) and test_replicas.py (always
# on PostgreSQL) ran above; the fleet tests keep SQLite.
section "end-to-end tests of live mode again, the control planes on PostgreSQL (TOLLGATE_TEST_BACKEND=postgres)"
TOLLGATE_TEST_BACKEND=postgres .venv/bin/python -m pytest tests/e2e -m backend \
  --ignore=tests/e2e/test_management_api_fuzz.py --ignore=tests/e2e/test_replicas.py "$@"
bench/run --quick >/dev/null  # issue 6: the benchmark harness must keep working; timings are not asserted
