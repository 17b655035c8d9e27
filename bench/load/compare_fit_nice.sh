#!/usr/bin/env bash
# Runs nexuskv_load with --fit_nice off and on, alternating (off, on, off, on by default), on the
# same machine in one session, and prints the load average before and after each run.
#
#   bench/load/compare_fit_nice.sh                    # 8 clients, 40 s, 2 rounds, nice 10
#   CLIENTS=32 ROUNDS=1 bench/load/compare_fit_nice.sh
#   OUT=/tmp/perf bench/load/compare_fit_nice.sh      # keeps each run's text and JSON there
#
# Environment: CLIENTS (8), DURATION_S (40), ROUNDS (2), NICE (10), OUT (a temp dir),
# NEXUSKV_BUILD_DIR (build), LOAD_BIN and SERVER_BIN (that build's binaries; point them at copies
# when others may rebuild the tree during the runs). Only meaningful on an otherwise idle box:
# check /proc/loadavg first.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${NEXUSKV_BUILD_DIR:-build}
CLIENTS=${CLIENTS:-8}
DURATION_S=${DURATION_S:-40}
ROUNDS=${ROUNDS:-2}
NICE=${NICE:-10}
OUT=${OUT:-$(mktemp -d)}
LOAD_BIN=${LOAD_BIN:-$BUILD/bin/nexuskv_load}
SERVER_BIN=${SERVER_BIN:-$BUILD/bin/nexuskv-server}
mkdir -p "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for nice in 0 "$NICE"; do
    name="c${CLIENTS}_nice${nice}_r${round}"
    echo "== $name: load average before: $(cat /proc/loadavg)"
    "$LOAD_BIN" --clients="$CLIENTS" --duration_s="$DURATION_S" --server_bin="$SERVER_BIN" \
      --server_flags="--sync_writes=true,--log_level=warning,--fit_nice=$nice" \
      --json_out="$OUT/$name.json" >"$OUT/$name.txt" 2>&1
    cat "$OUT/$name.txt"
    echo "== $name: load average after: $(cat /proc/loadavg)"
  done
done
echo "results in $OUT"
