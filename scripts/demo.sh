#!/usr/bin/env bash
# Static-mode demo: the echo upstream on 127.0.0.1:18080 and Envoy 1.40 with the tollgate
# filter and the ACME seed catalogue (envoy/static-demo.yaml) on 127.0.0.1:10000, admin on
# 127.0.0.1:9901. Runs in the foreground; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh >/dev/null
scripts/build-wasm.sh

mkdir -p .demo
pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "demo stopped"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

.venv/bin/python tests/echo_upstream.py --port 18080 > .demo/upstream.log 2>&1 &
pids+=($!)
"$(scripts/envoy-path.sh)" --config-path envoy/static-demo.yaml --concurrency 2 \
    --disable-hot-restart --log-level info > .demo/envoy.log 2>&1 &
envoy_pid=$!
pids+=("$envoy_pid")

deadline=$((SECONDS + 60))
until curl -fsS http://127.0.0.1:9901/ready >/dev/null 2>&1; do
    if ! kill -0 "$envoy_pid" 2>/dev/null || ((SECONDS > deadline)); then
        echo "envoy did not become ready; last lines of .demo/envoy.log:" >&2
        tail -n 30 .demo/envoy.log >&2
        exit 1
    fi
    sleep 0.2
done

cat <<'TEXT'

tollgate demo is up: Envoy on http://127.0.0.1:10000 (admin :9901), echo upstream on :18080.
Logs in .demo/. Try, in another terminal:

  # a public API: no key needed
  curl -i http://127.0.0.1:10000/status/v1/health

  # a private API without a key: 401 with WWW-Authenticate and a problem+json body
  curl -i http://127.0.0.1:10000/orders/v1/42

  # with the Gold client's key: the upstream sees x-tollgate-client / x-tollgate-plan and
  # no key; the response carries X-RateLimit-Limit / -Remaining / -Reset
  curl -i -H 'x-api-key: acme-gold-demo-key' http://127.0.0.1:10000/orders/v1/42

  # the key may also come as a query parameter (removed before the upstream)
  curl -i 'http://127.0.0.1:10000/orders/v1/42?apikey=acme-bronze-demo-key&expand=items'

  # an unknown key: 401
  curl -i -H 'x-api-key: not-a-real-key' http://127.0.0.1:10000/orders/v1/42

  # Bronze allows 100 a day: the 101st request is 429 with Retry-After
  for i in $(seq 101); do curl -s -o /dev/null -w '%{http_code}\n' \
      -H 'x-api-key: acme-bronze-demo-key' http://127.0.0.1:10000/orders/v1/42; done | sort | uniq -c

  # decisions as metrics
  curl -s http://127.0.0.1:9901/stats/prometheus | grep tollgate_

Press Ctrl-C to stop.
TEXT

# Stay in the foreground until a child exits or we are interrupted.
wait -n "${pids[@]}"
echo "a demo process exited; see .demo/*.log" >&2
exit 1
