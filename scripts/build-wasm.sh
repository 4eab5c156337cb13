#!/usr/bin/env bash
# Builds the filter for wasm32-wasip1 and puts it at target/tollgate.wasm, the one path that
# the Envoy configurations and the end-to-end tests load.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --target wasm32-wasip1 -p tollgate-filter
cp target/wasm32-wasip1/release/tollgate_filter.wasm target/tollgate.wasm
echo "built target/tollgate.wasm ($(wc -c < target/tollgate.wasm) bytes)"
