#!/usr/bin/env bash
# The load tables of docs/reliability.md and docs/performance.md: nexuskv_load at 8, 32 and 128
# clients, each with the unscored mix and the scored one (--token_scores), one fresh server per
# run, then one summary table with issue 16's goals checked (bench/load/summarize_load.py).
#
#   bench/load/load_tables.sh                            # 3 x 2 runs of 40 s
#   CLIENT_COUNTS="8 32" MIXES=scored DURATION_S=20 bench/load/load_tables.sh
#   OUT=/tmp/tables SERVER_FLAGS=--sync_writes=true,--log_level=warning,--fit_wait_ms=2000 \
#     bench/load/load_tables.sh
#
# Environment: CLIENT_COUNTS ("8 32 128"), MIXES ("unscored scored"), DURATION_S (40),
# SERVER_FLAGS (--sync_writes=true,--log_level=warning), OUT (a temp dir: each run's text and
# JSON), NEXUSKV_BUILD_DIR (build), LOAD_BIN and SERVER_BIN (that build's binaries; point them at
# copies when others may rebuild the tree during the runs), PYTHON (.venv/bin/python). Only
# meaningful on an otherwise idle machine: each run prints the load average before it. The exit
# status is 1 when a run failed or had errors.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${NEXUSKV_BUILD_DIR:-build}
CLIENT_COUNTS=${CLIENT_COUNTS:-8 32 128}
MIXES=${MIXES:-unscored scored}
DURATION_S=${DURATION_S:-40}
SERVER_FLAGS=${SERVER_FLAGS:---sync_writes=true,--log_level=warning}
OUT=${OUT:-$(mktemp -d)}
LOAD_BIN=${LOAD_BIN:-$BUILD/bin/nexuskv_load}
SERVER_BIN=${SERVER_BIN:-$BUILD/bin/nexuskv-server}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
status=0
for mix in $MIXES; do
  if [[ $mix == scored ]]; then
    scores=true
  elif [[ $mix == unscored ]]; then
    scores=false
  else
    echo "load_tables: MIXES holds scored and/or unscored, not $mix" >&2
    exit 2
  fi
  for clients in $CLIENT_COUNTS; do
    name="c${clients}_${mix}"
    echo "== $name: load average before: $(cat /proc/loadavg)"
    "$LOAD_BIN" --clients="$clients" --duration_s="$DURATION_S" --server_bin="$SERVER_BIN" \
      --server_flags="$SERVER_FLAGS" --token_scores="$scores" --json_out="$OUT/$name.json" \
      >"$OUT/$name.txt" 2>&1 || status=1
    cat "$OUT/$name.txt"
  done
done
"$PYTHON" bench/load/summarize_load.py "$OUT"/c*.json
echo "results in $OUT"
exit "$status"
