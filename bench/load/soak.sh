#!/usr/bin/env bash
# Soak: nexuskv_load at CLIENTS clients for DURATION seconds against a server it starts, sampling
# the server every INTERVAL seconds: resident memory (VmRSS of /proc/PID/status), open files
# (entries of /proc/PID/fd) and the bytes of its data dir on disk (du -sb: RocksDB's files). The
# samples go to soak.csv and are plotted to soak.png (bench/load/plot_soak.py, with the matplotlib
# of scripts/python-env.sh's .venv), which also prints how much each moved after WARMUP seconds.
#
#   bench/load/soak.sh                                  # 32 clients, 1800 s, a sample a minute
#   DURATION=60 INTERVAL=10 bench/load/soak.sh          # a smoke run
#   OUT=/tmp/soak PNG=docs/soak.png TOKEN_SCORES=true bench/load/soak.sh
#
# Environment: CLIENTS (32), DURATION (1800), INTERVAL (60), WARMUP (300, or a fifth of DURATION
# when that is less), TOKEN_SCORES (false: the unscored mix; true: the scored one), SERVER_FLAGS
# (--sync_writes=true,--log_level=warning), OUT (a temp dir: soak.csv, load.txt, load.json,
# server.txt), PNG ($OUT/soak.png), NEXUSKV_BUILD_DIR (build), LOAD_BIN and SERVER_BIN (that
# build's binaries; point them at copies when others may rebuild the tree during the run),
# PYTHON (.venv/bin/python). The exit status is nexuskv_load's (3: some calls failed), or 1 when
# the server never came up or the plot failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${NEXUSKV_BUILD_DIR:-build}
CLIENTS=${CLIENTS:-32}
DURATION=${DURATION:-1800}
INTERVAL=${INTERVAL:-60}
WARMUP=${WARMUP:-$((DURATION / 5 < 300 ? DURATION / 5 : 300))}
TOKEN_SCORES=${TOKEN_SCORES:-false}
SERVER_FLAGS=${SERVER_FLAGS:---sync_writes=true,--log_level=warning}
OUT=${OUT:-$(mktemp -d)}
PNG=${PNG:-$OUT/soak.png}
LOAD_BIN=${LOAD_BIN:-$BUILD/bin/nexuskv_load}
SERVER_BIN=${SERVER_BIN:-$BUILD/bin/nexuskv-server}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
info=$OUT/server.txt
csv=$OUT/soak.csv
rm -f "$info"

echo "soak: $CLIENTS clients for $DURATION s, a sample every $INTERVAL s, token scores $TOKEN_SCORES;" \
  "load average before: $(cat /proc/loadavg)"
"$LOAD_BIN" --clients="$CLIENTS" --duration_s="$DURATION" --server_bin="$SERVER_BIN" \
  --server_flags="$SERVER_FLAGS" --token_scores="$TOKEN_SCORES" --server_info_out="$info" \
  --json_out="$OUT/load.json" >"$OUT/load.txt" 2>&1 &
load_pid=$!
# Ctrl-C or a failure here ends the load; its server dies with it (PR_SET_PDEATHSIG).
trap 'kill "$load_pid" 2>/dev/null || true' EXIT

# nexuskv_load writes "PID DATA_DIR ADDRESS" once its server is SERVING.
while [[ ! -s $info ]]; do
  if ! kill -0 "$load_pid" 2>/dev/null; then
    echo "soak: nexuskv_load ended before its server came up:" >&2
    cat "$OUT/load.txt" >&2
    exit 1
  fi
  sleep 0.2
done
read -r server_pid data_dir address <"$info"
echo "soak: server pid $server_pid at $address, data dir $data_dir"

echo "t_s,rss_kib,open_fds,data_bytes" >"$csv"
start=$(date +%s)
sample() {
  local rss fds bytes
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null) || return 0
  fds=$(ls "/proc/$server_pid/fd" 2>/dev/null | wc -l) || return 0
  # Files RocksDB deletes while du walks are skipped (and du then exits non-zero).
  bytes=$(du -sb "$data_dir" 2>/dev/null | cut -f1) || true
  [[ -n $rss && -n $bytes ]] || return 0
  echo "$(($(date +%s) - start)),$rss,$fds,$bytes" | tee -a "$csv"
}
# Samples at 0, INTERVAL, ... up to DURATION; none while the server drains after the load.
n=0
while kill -0 "$load_pid" 2>/dev/null; do
  if ((n * INTERVAL <= DURATION && $(date +%s) >= start + n * INTERVAL)); then
    sample
    n=$((n + 1))
  fi
  sleep 1
done
trap - EXIT
status=0
wait "$load_pid" || status=$?
cat "$OUT/load.txt"

if ! "$PYTHON" -c "import matplotlib" 2>/dev/null; then
  echo "soak: no matplotlib in $PYTHON (scripts/python-env.sh installs it); samples in $csv" >&2
  exit 1
fi
"$PYTHON" bench/load/plot_soak.py "$csv" "$PNG" --warmup_s="$WARMUP" \
  --title="nexuskv soak: $CLIENTS clients, ${DURATION} s, token scores $TOKEN_SCORES, $(nproc) cpus" ||
  status=1
echo "soak: results in $OUT, plot $PNG"
exit "$status"
