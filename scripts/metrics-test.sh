#!/usr/bin/env bash
# Checks the server's /metrics (--metrics_listen, docs/metrics.md) with real Prometheus tooling:
# starts build/bin/nexuskv-server on loopback ports, makes a few calls with the nexuskv CLI (an
# append, a budgeted get, a NOT_FOUND), checks a scrape with `promtool check metrics`, then runs a
# real Prometheus server scraping it every second and asks its HTTP API that the target is up and
# that nexuskv series were ingested (RPC counts with their labels, the device gauge).
# Loopback only, a temp dir, bounded (about 10 s; every wait gives up well within 60 s), and it
# stops what it started. Needs the build (scripts/build.sh; NEXUSKV_SERVER_BIN and NEXUSKV_CLI_BIN
# override the binaries' paths); installs its Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# prometheus ships both prometheus and promtool; curl talks to both HTTP endpoints.
packages=(prometheus curl)
source scripts/lib/packages.sh
ensure_packages metrics-test "${packages[@]}"

server_bin=${NEXUSKV_SERVER_BIN:-build/bin/nexuskv-server}
cli_bin=${NEXUSKV_CLI_BIN:-build/bin/nexuskv}
for bin in "$server_bin" "$cli_bin"; do
  [[ -x $bin ]] || { echo "metrics-test: $bin is missing; run scripts/build.sh first" >&2; exit 1; }
done

start=$SECONDS
work=$(mktemp -d -t nexuskv-metrics-test.XXXXXX)
server_pid=""
prometheus_pid=""
cleanup() {
  for pid in $prometheus_pid $server_pid; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $prometheus_pid $server_pid; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "metrics-test: FAILED: $*" >&2
  for log in "$work"/*.log; do
    echo "--- $(basename "$log") (last 30 lines)" >&2
    tail -n 30 "$log" >&2
  done
  exit 1
}

# Waits up to $1 seconds (in 0.2 s steps) for the command after it to succeed.
wait_for() {
  local tries=$(($1 * 5))
  shift
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}

# The server picks both its ports (port 0) and logs them.
"$server_bin" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --data_dir="$work/data" \
  --sync_writes=false >"$work/server.log" 2>&1 &
server_pid=$!
wait_for 20 grep -q "event=server_started" "$work/server.log" || fail "the server did not start"
grpc_port=$(sed -n 's/.*event=server_started.* port=\([0-9]*\).*/\1/p' "$work/server.log")
metrics_port=$(sed -n 's/.*event=metrics_serving.* port=\([0-9]*\).*/\1/p' "$work/server.log")
[[ -n $grpc_port && -n $metrics_port ]] || fail "no ports in the server log"
echo "metrics-test: server on 127.0.0.1:$grpc_port, metrics on 127.0.0.1:$metrics_port"

cli=("$cli_bin" --server "127.0.0.1:$grpc_port" --timeout 20)
"${cli[@]}" demo-turn --out "$work/turn0.safetensors" --tokens 32 >/dev/null
"${cli[@]}" put metrics-demo --turn 0 --file "$work/turn0.safetensors" >/dev/null ||
  fail "put was refused"
"${cli[@]}" get metrics-demo --keep-ratio 0.5 >/dev/null || fail "get was refused"
if "${cli[@]}" show no-such-session >/dev/null 2>&1; then fail "show of a missing session worked"; fi

metrics_url="http://127.0.0.1:$metrics_port/metrics"
curl -sf "$metrics_url" >"$work/scrape.txt" || fail "no scrape from $metrics_url"
promtool check metrics <"$work/scrape.txt" >"$work/promtool.log" 2>&1 ||
  fail "promtool check metrics: $(cat "$work/promtool.log")"
grep -q '^nexuskv_rpcs_total{service="nexuskv.v1.KvMemory",method="AppendSegment",code="OK"} 1$' \
  "$work/scrape.txt" || fail "the scrape has no AppendSegment OK count of 1"
echo "metrics-test: promtool check metrics: OK ($(grep -vc '^#' "$work/scrape.txt") series)"

# A loopback port for Prometheus' own HTTP API: the first of a few random ones that is free.
prometheus_port=""
for _ in 1 2 3 4 5 6 7 8; do
  candidate=$((20000 + RANDOM % 40000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
    prometheus_port=$candidate
    break
  fi
done
[[ -n $prometheus_port ]] || fail "no free port for Prometheus"

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: nexuskv
    static_configs:
      - targets: ["127.0.0.1:$metrics_port"]
EOF
promtool check config "$work/prometheus.yml" >"$work/promtool-config.log" 2>&1 ||
  fail "promtool check config: $(cat "$work/promtool-config.log")"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
prometheus_pid=$!
api="http://127.0.0.1:$prometheus_port"
wait_for 20 curl -sf "$api/-/ready" || fail "Prometheus was not ready within 20 s"

# Instant query $1 (URL-encoded by curl); true when its first result's value is $2.
query_is() {
  curl -sf --get --data-urlencode "query=$1" "$api/api/v1/query" >"$work/query.json" &&
    grep -q "\"value\":\[[0-9.]*,\"$2\"\]" "$work/query.json"
}
wait_for 20 query_is 'up{job="nexuskv"}' 1 ||
  fail "Prometheus does not see the target up: $(cat "$work/query.json" 2>/dev/null)"
wait_for 10 query_is 'nexuskv_rpcs_total{method="GetSession",code="NOT_FOUND"}' 1 ||
  fail "no ingested NOT_FOUND GetSession count: $(cat "$work/query.json" 2>/dev/null)"
query_is 'nexuskv_rpcs_total{method="GetCache",code="OK"}' 1 ||
  fail "no ingested GetCache OK count: $(cat "$work/query.json")"
query_is 'nexuskv_device_info{device="cpu"}' 1 || fail "no ingested device gauge"
query_is 'nexuskv_tenant_sessions{tenant="default"}' 1 || fail "no ingested tenant gauge"
echo "metrics-test: Prometheus scraped the target (up=1) and ingested nexuskv series"
echo "metrics-test: passed in $((SECONDS - start)) s"
