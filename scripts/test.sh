#!/usr/bin/env bash
# Installs, builds and runs every test: the C++ unit and integration tests (ctest: against the real
# server binary and a real RocksDB, plus the crash tests: SIGKILL rounds, full disk, corruption),
# the Python client, transformers integration and quick real-model evaluation (pytest, in .venv),
# the deploy/ manifests and three shards behind nginx (scripts/cluster-test.sh),
# then the short reliability mode (scripts/reliability-ci.sh, docs/reliability.md): each libFuzzer
# target for NEXUSKV_FUZZ_SECONDS (30 here; scripts/fuzz.sh alone defaults to 60, and longer runs
# are for a person, docs/reliability.md) in a clang tree build-fuzz/, the unit tests under
# ASan + UBSan reusing that tree, and a 10 s load run on build/ with 8 clients where any error
# fails. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# A full run writes about 12 GiB here (build/, build-fuzz/, .venv, Go's cache) and pip unpacks wheels
# in $TMPDIR; a run that starts short of space fails a quarter of an hour in, so say so now.
need_kib=$((16 * 1024 * 1024))
for dir in . "${TMPDIR:-/tmp}"; do
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if ((free_kib < need_kib)); then
    echo "test: only $((free_kib / 1024 / 1024)) GiB free in $(realpath "$dir"); a full run needs 16 GiB. Free some space and rerun." >&2
    exit 1
  fi
done
start=$SECONDS
lap=$SECONDS
declare -a timings
step_done() {
  timings+=("$(printf '  %-12s %5d s' "$1" $((SECONDS - lap)))")
  echo "test: $1 done after $((SECONDS - start)) s"
  lap=$SECONDS
}
bash scripts/build.sh
step_done build
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 600
step_done ctest
# /metrics checked by promtool and scraped by a real Prometheus server (docs/metrics.md)
bash scripts/metrics-test.sh
step_done metrics
bash scripts/python-test.sh
step_done python
# deploy/ manifests checked offline, then three shards behind nginx on loopback (docs/scaling.md).
bash scripts/cluster-test.sh
step_done cluster
bash scripts/go-test.sh
step_done go
# ctest above already ran the crash pieces (label crash); reliability-ci.sh times each piece.
NEXUSKV_FUZZ_SECONDS=${NEXUSKV_FUZZ_SECONDS:-30} bash scripts/reliability-ci.sh fuzz sanitize load
step_done reliability
echo "test: all passed in $((SECONDS - start)) s ($(nproc) cpus)"
printf '%s\n' "${timings[@]}"
