#!/usr/bin/env bash
# The live demo: the tollgate control plane (SQLite in .demo/tollgate), seeded with the ACME
# catalogue of demo/catalogue.yaml through `tollgate apply -f`, an echo upstream, and Envoy 1.40
# running the bootstrap that `tollgate envoy-config` prints.
#
#   scripts/demo.sh           starts everything, prints the keys and a walkthrough, and stays in
#                             the foreground; Ctrl-C stops every process it started.
#   scripts/demo.sh --check   starts the same, runs the walkthrough, asserts every answer, stops
#                             everything, and exits 0 (all answers as documented) or 1.
#
# Re-running works: the seed is idempotent, and the client keys (shown once by the control
# plane) are kept in .demo/keys from the run that created them; a key missing there or no longer
# valid (say, rotated by hand) is rotated to get a fresh one.
#
# Environment (defaults in brackets), so that a test or a busy machine can move the demo:
#   TOLLGATE_DEMO_DIR                  state and logs [.demo]
#   TOLLGATE_DEMO_PORT                 Envoy's listener [10000]
#   TOLLGATE_DEMO_ADMIN_PORT           Envoy's admin interface [9901]
#   TOLLGATE_DEMO_UPSTREAM_PORT        the echo upstream [18080]
#   TOLLGATE_DEMO_CONTROL_PLANE_PORT   the control plane [7100]
#   TOLLGATE_DEMO_FLEET=1              fleet-wide limits: redis-server (Debian's package) and a
#                                      second Envoy; the two gateways share every limit
#   TOLLGATE_DEMO_PORT_2               the second Envoy's listener [10001]
#   TOLLGATE_DEMO_ADMIN_PORT_2         the second Envoy's admin interface [9902]
#   TOLLGATE_DEMO_REDIS_PORT           redis-server [16379]
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
mode=run
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

demo_dir="${TOLLGATE_DEMO_DIR:-.demo}"
port="${TOLLGATE_DEMO_PORT:-10000}"
admin_port="${TOLLGATE_DEMO_ADMIN_PORT:-9901}"
upstream_port="${TOLLGATE_DEMO_UPSTREAM_PORT:-18080}"
cp_port="${TOLLGATE_DEMO_CONTROL_PLANE_PORT:-7100}"
fleet=false
if [ "${TOLLGATE_DEMO_FLEET:-0}" = 1 ]; then fleet=true; fi
port_2="${TOLLGATE_DEMO_PORT_2:-10001}"
admin_port_2="${TOLLGATE_DEMO_ADMIN_PORT_2:-9902}"
redis_port="${TOLLGATE_DEMO_REDIS_PORT:-16379}"

mkdir -p -m 0700 "$demo_dir"
demo_dir="$(cd "$demo_dir" && pwd)"
data_dir="$demo_dir/tollgate"
gateway="http://127.0.0.1:$port"
admin="http://127.0.0.1:$admin_port"
control_plane="http://127.0.0.1:$cp_port"
gateway_2="http://127.0.0.1:$port_2"
admin_2="http://127.0.0.1:$admin_port_2"
tollgate="$repo/target/debug/tollgate"
python="$repo/.venv/bin/python"

# The seed's clients, their plans, and the variable each key is exported as in .demo/env.
clients=(acme/mobile-app/1 acme/partner-portal/1 acme/hobby-script/1)
key_vars=(GOLD_KEY SILVER_KEY BRONZE_KEY)

say() { printf '%s\n' "$*"; }
fail() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Install and build (quick when already done).

say "demo: checking the toolchain and Envoy (scripts/setup.sh; the first run installs them)"
scripts/setup.sh --demo >"$demo_dir/setup.log" 2>&1 || {
    tail -n 30 "$demo_dir/setup.log" >&2
    fail "scripts/setup.sh failed; full log in $demo_dir/setup.log"
}
say "demo: building the control plane and the filter (the first build takes a few minutes)"
cargo build -p tollgate-control-plane
scripts/build-wasm.sh >/dev/null
envoy_bin="$(scripts/envoy-path.sh)"
if $fleet && ! command -v redis-server >/dev/null 2>&1; then
    fail "TOLLGATE_DEMO_FLEET=1 needs redis-server: apt-get install -y redis-server"
fi
# From here on every file the demo writes is private: keys, tokens, the Envoy configuration.
umask 077
chmod -R go-rwx "$demo_dir"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=("$port" "$admin_port" "$upstream_port" "$cp_port")
if $fleet; then ports+=("$port_2" "$admin_port_2" "$redis_port"); fi
for p in "${ports[@]}"; do
    if listening "$p"; then
        fail "127.0.0.1:$p is already in use (another demo still running?); stop it, or move the \
demo with TOLLGATE_DEMO_PORT, TOLLGATE_DEMO_ADMIN_PORT, TOLLGATE_DEMO_UPSTREAM_PORT, \
TOLLGATE_DEMO_CONTROL_PLANE_PORT (and TOLLGATE_DEMO_PORT_2, TOLLGATE_DEMO_ADMIN_PORT_2, \
TOLLGATE_DEMO_REDIS_PORT with TOLLGATE_DEMO_FLEET=1)"
    fi
done

# ---------------------------------------------------------------------------------------------
# Processes: every child is recorded and stopped, last started first, on any exit.

pids=()
names=()
stop() {
    trap - INT TERM EXIT
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do wait "${pids[i]}" 2>/dev/null || true; done
    say "demo stopped"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name log command...
    local name="$1" log="$2"
    shift 2
    "$@" >"$log" 2>&1 &
    pids+=($!)
    names+=("$name")
}

# Waits for `condition` (a command) to succeed; fails naming `what` and the log at the deadline.
wait_for() { # seconds what log condition...
    local deadline=$((SECONDS + $1)) what="$2" log="$3" i
    shift 3
    until "$@"; do
        for i in "${!pids[@]}"; do
            if ! kill -0 "${pids[i]}" 2>/dev/null; then
                tail -n 30 "$log" >&2
                fail "${names[i]} exited while waiting for $what; log: $log"
            fi
        done
        if ((SECONDS > deadline)); then
            tail -n 30 "$log" >&2
            fail "timed out waiting for $what; log: $log"
        fi
        sleep 0.1
    done
}

# The control plane and the CLI read the secrets from the demo's data directory only.
unset TOLLGATE_ADMIN_TOKEN TOLLGATE_GATEWAY_TOKEN TOLLGATE_SNAPSHOT_SIGNING_KEY TOLLGATE_LISTEN
export TOLLGATE_DATA_DIR="$data_dir" TOLLGATE_SERVER="$control_plane"

serve_args=()
if $fleet; then
    # Nothing is persisted: the demo's counts live as long as this redis-server.
    say "demo: starting redis-server on 127.0.0.1:$redis_port (fleet-wide counts; nothing persisted)"
    mkdir -p "$demo_dir/redis"
    start "redis-server" "$demo_dir/redis.log" \
        redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$demo_dir/redis" \
        --save "" --appendonly no
    wait_for 30 "redis-server" "$demo_dir/redis.log" listening "$redis_port"
    serve_args=(--redis "redis://127.0.0.1:$redis_port")
fi

say "demo: starting the control plane on $control_plane (data in $data_dir)"
start "the control plane" "$demo_dir/control-plane.log" \
    "$tollgate" serve --listen "127.0.0.1:$cp_port" --data-dir "$data_dir" "${serve_args[@]}"
wait_for 30 "the control plane" "$demo_dir/control-plane.log" \
    curl -fs -o /dev/null "$control_plane/healthz"

# ---------------------------------------------------------------------------------------------
# Seed, and the three client keys.

say "demo: tollgate apply -f demo/catalogue.yaml"
report="$("$tollgate" --json apply -f demo/catalogue.yaml)" || fail "the seed was refused"
printf '%s' "$report" >"$demo_dir/apply.json"
"$python" - "$demo_dir/apply.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for change in report["changes"] or ["no changes: the catalogue already matches the seed"]:
    print(f"  {change}")
print(f"  revision {report['revision']}")
PY

keys_file="$demo_dir/keys"
touch "$keys_file"
# Keys created by this apply replace any stored ones.
"$python" - "$demo_dir/apply.json" "$keys_file" <<'PY'
import json, sys
issued = {k["client_version"]: k["api_key"] for k in json.load(open(sys.argv[1]))["issued_keys"]}
path = sys.argv[2]
stored = dict(line.split(" ", 1) for line in open(path).read().splitlines() if " " in line)
stored.update(issued)
with open(path, "w") as f:
    f.writelines(f"{client} {key}\n" for client, key in sorted(stored.items()))
PY

# A stored key is kept only while it is its client version's current key in the catalogue the
# gateways receive (compared by SHA-256, as the gateway does); otherwise a fresh one is issued.
curl -fsS -H "authorization: Bearer $(cat "$data_dir/gateway-token")" \
    -o "$demo_dir/snapshot.json" "$control_plane/v1/snapshot"
stale="$("$python" - "$demo_dir/snapshot.json" "$keys_file" "${clients[@]}" <<'PY'
import hashlib, json, sys
snapshot = json.load(open(sys.argv[1]))
stored = dict(line.split(" ", 1) for line in open(sys.argv[2]).read().splitlines() if " " in line)
current = {
    c["id"]: {k["sha256"] for k in c["keys"] if k.get("expires_at") is None}
    for c in snapshot["clients"]
}
for client in sys.argv[3:]:
    key = stored.get(client)
    if key is None or hashlib.sha256(key.encode()).hexdigest() not in current.get(client, ()):
        print(client)
PY
)"
for client in $stale; do
    say "demo: no valid stored key for $client: rotating it to get a fresh one"
    rotated="$("$tollgate" --json client version rotate-key "$client" --grace-seconds 0)"
    key="$(printf '%s' "$rotated" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"
    grep -v "^$client " "$keys_file" >"$keys_file.new" || true
    printf '%s %s\n' "$client" "$key" >>"$keys_file.new"
    mv "$keys_file.new" "$keys_file"
done

key_of() { sed -n "s|^$1 ||p" "$keys_file"; }
GOLD_KEY="$(key_of acme/mobile-app/1)"
SILVER_KEY="$(key_of acme/partner-portal/1)"
BRONZE_KEY="$(key_of acme/hobby-script/1)"

# `source .demo/env` gives another terminal the CLI, the demo's control plane and the keys.
cat >"$demo_dir/env" <<ENV
# Written by scripts/demo.sh: the demo's CLI settings and client keys (demo secrets).
export PATH="$repo/target/debug:\$PATH"
export TOLLGATE_SERVER="$control_plane"
export TOLLGATE_DATA_DIR="$data_dir"
export GOLD_KEY="$GOLD_KEY"      # acme/mobile-app/1, plan acme/gold/1
export SILVER_KEY="$SILVER_KEY"    # acme/partner-portal/1, plan acme/silver/1
export BRONZE_KEY="$BRONZE_KEY"    # acme/hobby-script/1, plan acme/bronze/1
ENV

# ---------------------------------------------------------------------------------------------
# Upstream and Envoy.

say "demo: starting the echo upstream on 127.0.0.1:$upstream_port"
start "the echo upstream" "$demo_dir/upstream.log" \
    "$python" tests/echo_upstream.py --port "$upstream_port"
wait_for 30 "the echo upstream" "$demo_dir/upstream.log" listening "$upstream_port"

say "demo: tollgate envoy-config > $demo_dir/envoy.yaml; starting Envoy on $gateway (admin $admin)"
# The demo asks for a TCP admin interface (the walkthrough curls it); envoy-config's default is
# a unix socket only Envoy's user can open. The bootstrap holds no secret: Envoy hands the
# gateway token to the module from its own environment.
"$tollgate" envoy-config --wasm target/tollgate.wasm --listen "127.0.0.1:$port" \
    --upstream "127.0.0.1:$upstream_port" --control-plane "$control_plane" \
    --admin "127.0.0.1:$admin_port" --concurrency 2 >"$demo_dir/envoy.yaml"
TOLLGATE_GATEWAY_TOKEN="$(cat "$data_dir/gateway-token")" start "Envoy" "$demo_dir/envoy.log" \
    "$envoy_bin" --config-path "$demo_dir/envoy.yaml" --concurrency 2 --disable-hot-restart \
    --log-level info
wait_for 60 "Envoy to be ready" "$demo_dir/envoy.log" curl -fs -o /dev/null "$admin/ready"

# Ready for the walkthrough once both workers have adopted the current snapshot.
revision="$(curl -fsS -o /dev/null -D - -H "authorization: Bearer $(cat "$data_dir/gateway-token")" \
    "$control_plane/v1/snapshot" | tr -d '\r' | sed -n 's/^etag: "\([0-9]*\)"$/\1/Ip')"
envoy_stat() { # admin-url stat
    curl -fsS "$1/stats?filter=^wasmcustom\.$2\$" | sed -n 's/^[^:]*: //p'
}
adopted() { # admin-url
    [ "$(envoy_stat "$1" tollgate_snapshot_revision)" = "$revision" ] &&
        [ "$(envoy_stat "$1" tollgate_snapshot_adoptions_total || echo 0)" -ge 2 ]
}
wait_for 30 "Envoy to load snapshot revision $revision" "$demo_dir/envoy.log" adopted "$admin"

if $fleet; then
    # The second gateway's configuration differs only in its ports: a gateway learns from the
    # snapshot that its counts are fleet-wide.
    say "demo: a second Envoy on $gateway_2 (admin $admin_2), sharing every limit with the first"
    "$tollgate" envoy-config --wasm target/tollgate.wasm --listen "127.0.0.1:$port_2" \
        --upstream "127.0.0.1:$upstream_port" --control-plane "$control_plane" \
        --admin "127.0.0.1:$admin_port_2" --concurrency 2 >"$demo_dir/envoy-2.yaml"
    TOLLGATE_GATEWAY_TOKEN="$(cat "$data_dir/gateway-token")" start "the second Envoy" \
        "$demo_dir/envoy-2.log" "$envoy_bin" --config-path "$demo_dir/envoy-2.yaml" \
        --concurrency 2 --disable-hot-restart --log-level info
    wait_for 60 "the second Envoy to be ready" "$demo_dir/envoy-2.log" curl -fs -o /dev/null "$admin_2/ready"
    wait_for 30 "the second Envoy to load snapshot revision $revision" "$demo_dir/envoy-2.log" \
        adopted "$admin_2"
fi

# ---------------------------------------------------------------------------------------------
# The walkthrough: printed in run mode, asserted in check mode.

fleet_line=""
fleet_hint=""
if $fleet; then
    fleet_hint="The two Envoys share limits: spend Bronze's 10 a minute on $gateway, then
  curl -i -H \"x-api-key: \$BRONZE_KEY\" $gateway_2/orders/v1/42     # 429 there too

"

    fleet_line="   (--redis redis://127.0.0.1:$redis_port)
  second Envoy   $gateway_2   (admin $admin_2), sharing every limit with the first
  redis-server   127.0.0.1:$redis_port   (fleet-wide counts, nothing persisted)"
fi

if [ "$mode" = run ]; then
    cat <<TEXT

tollgate demo is up (logs in ${demo_dir#"$repo"/}/):
  Envoy          $gateway   (admin $admin)
  control plane  $control_plane${fleet_line}
  echo upstream  http://127.0.0.1:$upstream_port

Keys of the seed's clients (kept in ${demo_dir#"$repo"/}/keys; the control plane stores only their SHA-256):
  acme/mobile-app/1      plan acme/gold/1     10000/day, 100/minute   $GOLD_KEY
  acme/partner-portal/1  plan acme/silver/1    1000/day,  30/minute   $SILVER_KEY
  acme/hobby-script/1    plan acme/bronze/1     100/day,  10/minute   $BRONZE_KEY

In another terminal (the README's "Five minutes with the demo" shows what each answers):

  source ${demo_dir#"$repo"/}/env    # the tollgate CLI on PATH, pointed at this demo; \$GOLD_KEY, \$SILVER_KEY, \$BRONZE_KEY

  curl -i $gateway/status/v1/health                              # public API: 200, no key
  curl -i $gateway/orders/v1/42                                  # private API, no key: 401
  curl -i -H "x-api-key: \$GOLD_KEY" $gateway/orders/v1/42        # 200 + X-RateLimit-*
  curl -i -H 'x-api-key: not-a-real-key' $gateway/orders/v1/42   # 401
  for i in \$(seq 11); do curl -s -o /dev/null -w '%{http_code}\n' \\
      -H "x-api-key: \$BRONZE_KEY" $gateway/orders/v1/42; done | sort | uniq -c   # 10 x 200, 1 x 429
  tollgate contract list acme/hobby-script/1                     # the Bronze contract's id
  tollgate contract delete acme/hobby-script/1 <id>              # revoke it: Bronze now gets 403
  tollgate apply -f demo/catalogue.yaml                          # restores it: a new contract
  tollgate client version rotate-key acme/partner-portal/1 --grace-seconds 300
  curl -s $admin/stats/prometheus | grep 'tollgate_requests_total{'

${fleet_hint}Re-running the demo restores the seed. Press Ctrl-C to stop.
TEXT
    # Stay in the foreground until interrupted or until a child exits. Once the demo is up,
    # Ctrl-C is how it is meant to end: a success.
    trap 'exit 0' INT
    status=0
    wait -n "${pids[@]}" || status=$?
    # Only a child's exit gets here (the traps exit on signals): stop the rest and say which.
    for i in "${!pids[@]}"; do
        kill -0 "${pids[i]}" 2>/dev/null || say "demo: ${names[i]} exited ($status); logs in $demo_dir" >&2
    done
    exit 1
fi

# Check mode. Each step runs a walkthrough command and asserts what the README says it answers.
say "demo: checking the walkthrough"
out="$demo_dir/check"
mkdir -p "$out"
failures=0
step=""
ok() { say "  ok    $step"; }
bad() { say "  FAIL  $step: $*"; failures=$((failures + 1)); }

# request EXPECTED_STATUS curl-args...: the answer's headers in $out/headers, body in $out/body.
request() {
    local want="$1" got
    shift
    got="$(curl -sS -o "$out/body" -D "$out/headers" -w '%{http_code}' "$@")" || got="curl failed"
    tr -d '\r' <"$out/headers" >"$out/headers.txt"
    if [ "$got" != "$want" ]; then
        bad "expected $want, got $got: $(head -c 300 "$out/body")"
        return 1
    fi
}
has_header() { grep -qi "^$1: $2\$" "$out/headers.txt" || { bad "no header '$1: $2'"; return 1; }; }
no_header() { ! grep -qi "^$1:" "$out/headers.txt" || { bad "unexpected header $1"; return 1; }; }
body_has() { grep -qF -- "$1" "$out/body" || { bad "body lacks $1: $(head -c 300 "$out/body")"; return 1; }; }
body_lacks() { ! grep -qF -- "$1" "$out/body" || { bad "body contains $1"; return 1; }; }
# Waits (deadline 5 s) until a request answers `want`: a catalogue change reaches the gateway.
eventually() { # want curl-args...
    local want="$1" deadline=$((SECONDS + 5)) got
    shift
    while :; do
        got="$(curl -sS -o "$out/body" -D "$out/headers" -w '%{http_code}' "$@")" || got="curl failed"
        tr -d '\r' <"$out/headers" >"$out/headers.txt"
        [ "$got" = "$want" ] && return 0
        if ((SECONDS > deadline)); then
            bad "expected $want within 5 s, still $got: $(head -c 300 "$out/body")"
            return 1
        fi
        sleep 0.05
    done
}
orders="$gateway/orders/v1/42"

step="public API, no key: 200 from the upstream"
request 200 "$gateway/status/v1/health" && body_has '"path": "/status/v1/health"' && ok

step="private API, no key: 401 with WWW-Authenticate and a problem+json body"
request 401 "$orders" &&
    has_header www-authenticate 'APIKey realm="tollgate", header="x-api-key"' &&
    has_header content-type application/problem+json &&
    body_has 'urn:tollgate:problem:missing-api-key' && ok

step="Gold key: 200, the upstream learns the client and plan and never sees the key"
request 200 -H "x-api-key: $GOLD_KEY" "$orders" &&
    body_has '"x-tollgate-client": "acme/mobile-app/1"' &&
    body_has '"x-tollgate-plan": "acme/gold/1"' && body_lacks "$GOLD_KEY" &&
    has_header x-ratelimit-limit 100 && has_header x-ratelimit-remaining 99 && ok

step="Silver key as the apikey query parameter: 200, the key removed before the upstream"
request 200 "$orders?apikey=$SILVER_KEY&expand=items" &&
    body_has '"path": "/orders/v1/42?expand=items"' &&
    body_has '"x-tollgate-plan": "acme/silver/1"' && body_lacks "$SILVER_KEY" && ok

step="unknown key: 401, the key not echoed"
request 401 -H 'x-api-key: not-a-real-key' "$orders" &&
    body_has 'urn:tollgate:problem:invalid-api-key' && body_lacks not-a-real-key && ok

# The burst is per calendar minute: start it early in a minute so it cannot straddle two.
while (($(date -u +%-S) > 45)); do sleep 0.5; done
step="Bronze: 10 requests in a minute pass, the 11th is 429 with Retry-After"
codes=""
for i in $(seq 11); do
    codes+="$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $BRONZE_KEY" "$orders") "
done
if [ "$codes" = "$(printf '200 %.0s' $(seq 10))429 " ]; then ok; else bad "got $codes"; fi
step="Bronze over its burst limit: 429 problem+json, X-RateLimit-Limit 10, Retry-After <= 60"
if request 429 -H "x-api-key: $BRONZE_KEY" "$orders" && has_header x-ratelimit-limit 10 &&
    has_header x-ratelimit-remaining 0 && body_has 'urn:tollgate:problem:rate-limited'; then
    retry="$(sed -n 's/^retry-after: //Ip' "$out/headers.txt")"
    if [ -n "$retry" ] && ((retry >= 1 && retry <= 60)); then ok; else bad "Retry-After '$retry'"; fi
fi

if $fleet; then
    step="fleet: Bronze through the second Envoy is 429 too (the two gateways share its minute)"
    codes="$(for i in $(seq 4); do curl -s -o /dev/null -w '%{http_code} ' -H "x-api-key: $BRONZE_KEY" "$gateway_2/orders/v1/42"; done)"
    if [ "$codes" = "429 429 429 429 " ]; then ok; else bad "got $codes"; fi
fi

step="revoking the Bronze contract with the CLI: Bronze gets 403, and keeps getting it"
contract_id="$("$tollgate" --json contract list acme/hobby-script/1 |
    "$python" -c 'import json,sys; print(next(c["id"] for c in json.load(sys.stdin) if c["api"] == "orders"))')"
"$tollgate" contract delete acme/hobby-script/1 "$contract_id" >/dev/null
if eventually 403 -H "x-api-key: $BRONZE_KEY" "$orders"; then
    # Both workers must agree: several more requests, all 403.
    codes="$(for i in $(seq 6); do curl -s -o /dev/null -w '%{http_code} ' -H "x-api-key: $BRONZE_KEY" "$orders"; done)"
    if [ "$codes" = "403 403 403 403 403 403 " ]; then ok; else bad "then $codes"; fi
fi

step="applying the seed again restores the revoked contract (a new one, with new counters)"
reapplied="$("$tollgate" apply -f demo/catalogue.yaml)" || reapplied=""
if grep -q 'created contract .* acme/hobby-script/1' <<<"$reapplied"; then
    eventually 200 -H "x-api-key: $BRONZE_KEY" "$orders" && has_header x-ratelimit-remaining 9 && ok
else
    bad "apply did not create a contract for acme/hobby-script/1"
fi

step="rotating the Silver key with a grace period: the new key and the old one both work"
new_silver="$("$tollgate" --json client version rotate-key acme/partner-portal/1 --grace-seconds 300 |
    "$python" -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"
eventually 200 -H "x-api-key: $new_silver" "$orders" &&
    request 200 -H "x-api-key: $SILVER_KEY" "$orders" && ok
# The demo keeps the current key; the next run finds the old one rotated out and replaces it.
grep -v '^acme/partner-portal/1 ' "$keys_file" >"$keys_file.new" || true
printf 'acme/partner-portal/1 %s\n' "$new_silver" >>"$keys_file.new"
mv "$keys_file.new" "$keys_file"

step="decisions are Envoy metrics"
if request 200 "$admin/stats/prometheus"; then
    metrics="$(grep '^tollgate_requests_total{' "$out/body" || true)"
    if grep -q 'decision="rate_limited"} [1-9]' <<<"$metrics" &&
        grep -q 'decision="no_contract"} [1-9]' <<<"$metrics" &&
        grep -q 'decision="missing_key"} [1-9]' <<<"$metrics"; then ok; else bad "$metrics"; fi
fi

if ((failures)); then
    say "demo check: $failures step(s) failed (logs in $demo_dir)"
    exit 1
fi
say "demo check: every answer as documented"
