#!/usr/bin/env bash
# Runs the cargo-fuzz targets over tollgate-core, one after another, for N minutes each
# (default 10). Not part of CI: it is for a developer's machine, and its findings go to
# SECURITY.md ("Fuzzing").
#
#   fuzz/run.sh [minutes] [target …]       targets: snapshot gateway limits keydir token
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only flags to rustc
# (-Zsanitizer=address, sanitizer coverage); on a machine with only stable Rust,
# RUSTC_BOOTSTRAP=1 makes the stable compiler accept them. It is set below for the fuzz
# builds only; the main workspace never sees it.
#
# Targets are built with debug assertions (integer overflow panics) and AddressSanitizer.
# libFuzzer starts from the committed seeds (seeds/<target>/, written by
# `cargo run --example seeds`) and grows corpus/<target>/ (not committed); a crash is written
# to artifacts/<target>/ and stops that target. Each target's output is in logs/<target>.log;
# the summary at the end gives executions, coverage and findings per target.
set -euo pipefail
cd "$(dirname "$0")"

minutes="${1:-10}"
shift || true
# libFuzzer reads -max_total_time=0 as "forever".
if ! [[ "$minutes" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: fuzz/run.sh [minutes ≥ 1] [target …]" >&2
    exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=(snapshot gateway limits keydir token); fi
export RUSTC_BOOTSTRAP=1

mkdir -p logs
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    max_len=4096
    if [ "$target" = snapshot ]; then max_len=65536; fi
    echo "==> $target: ${minutes} min"
    status=0
    cargo fuzz run --debug-assertions "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time=$((minutes * 60)) -max_len="$max_len" -print_final_stats=1 \
        -timeout=10 -rss_limit_mb=2048 >"logs/$target.log" 2>&1 || status=$?
    echo "    exit $status; log fuzz/logs/$target.log"
done

echo
printf '%-9s %12s %8s %8s %8s %s\n' target executions exec/s cov ft findings
for target in "${targets[@]}"; do
    log="logs/$target.log"
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    found=$(find "artifacts/$target" -type f | wc -l)
    printf '%-9s %12s %8s %8s %8s %s\n' "$target" "$runs" "$rate" "$cov" "$ft" "$found"
done
