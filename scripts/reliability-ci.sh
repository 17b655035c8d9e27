#!/usr/bin/env bash
# The reliability checks of issue 5 in CI's short mode, each one timed (docs/reliability.md):
#   crash     the fault tests (ctest -L crash): SIGKILL rounds (NEXUSKV_CRASH_ROUNDS,
#             default 20), full disk (skips itself where it cannot mount), corruption -> DATA_LOSS
#   fuzz      scripts/fuzz.sh: the libFuzzer targets, NEXUSKV_FUZZ_SECONDS (default 60) each
#   sanitize  scripts/sanitize.sh: the unit tests under ASan + UBSan (in build-fuzz/ when fuzz ran
#             first, else build-asan/)
#   load      build/bin/nexuskv_load against build/bin/nexuskv-server, NEXUSKV_LOAD_CLIENTS (default
#             8) clients for NEXUSKV_LOAD_SECONDS (default 10); any error fails it
# Every piece runs even when an earlier one failed; the exit status is non-zero when any failed.
# scripts/test.sh (CI) runs fuzz, sanitize and load after ctest, which already ran the crash tests.
#
#   scripts/reliability-ci.sh              # all four
#   scripts/reliability-ci.sh crash load   # some of them
#   NEXUSKV_JOBS=2 (build parallelism, default 2)
#   NEXUSKV_BUILD_DIR=build-rel            # the normal tree crash and load build and run (default
#                                          # build/): leaves build/ alone while it is in use
set -uo pipefail
cd "$(dirname "$0")/.."

pieces=("$@")
if ((${#pieces[@]} == 0)); then pieces=(crash fuzz sanitize load); fi
jobs=${NEXUSKV_JOBS:-2}
declare -A took result
failed=0

build_dir=${NEXUSKV_BUILD_DIR:-build}

build_normal() {
  if [[ ! -f $build_dir/CMakeCache.txt ]]; then
    cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || return 1
  fi
  cmake --build "$build_dir" -j"$jobs" --target "$@"
}

run_crash() {
  build_normal nexuskv-server crash_test corruption_test full_disk_test shutdown_test || return 1
  ctest --test-dir "$build_dir" -L crash --output-on-failure --timeout 1800
}

run_fuzz() { bash scripts/fuzz.sh "${NEXUSKV_FUZZ_SECONDS:-60}"; }

# The unit tests under ASan + UBSan reuse the fuzz tree when there is one (every object there is
# already built with both sanitizers), which saves building every library a second time.
run_sanitize() {
  if [[ -z ${NEXUSKV_SANITIZE_DIR:-} ]] && grep -qs '^NEXUSKV_FUZZ:BOOL=ON' build-fuzz/CMakeCache.txt; then
    NEXUSKV_SANITIZE_DIR=build-fuzz bash scripts/sanitize.sh
  else
    bash scripts/sanitize.sh
  fi
}

run_load() {
  build_normal nexuskv-server nexuskv_load || return 1
  "$build_dir/bin/nexuskv_load" --server_bin="$build_dir/bin/nexuskv-server" \
    --clients="${NEXUSKV_LOAD_CLIENTS:-8}" --duration_s="${NEXUSKV_LOAD_SECONDS:-10}" \
    --json_out="$build_dir/load-ci.json"
}

for piece in "${pieces[@]}"; do
  echo "=== reliability-ci: $piece ==="
  start=$(date +%s)
  if "run_$piece"; then result[$piece]=ok; else result[$piece]=FAILED; failed=1; fi
  took[$piece]=$(($(date +%s) - start))
  echo "=== reliability-ci: $piece ${result[$piece]} in ${took[$piece]} s ==="
done

echo "=== reliability-ci summary ($(nproc) cpus) ==="
total=0
for piece in "${pieces[@]}"; do
  printf '  %-9s %-7s %5d s\n' "$piece" "${result[$piece]}" "${took[$piece]}"
  total=$((total + took[$piece]))
done
printf '  %-9s %-7s %5d s\n' total "" "$total"
exit $failed
