#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in build-fuzz/ and runs each
# for SECONDS (default 60) from its committed seed corpus (tests/fuzz/corpus/<target>/, read only;
# new inputs go to build-fuzz/fuzz-corpus/<target>/). Prints the executions run per target; exits
# non-zero when a target crashed or broke its oracle (the input is saved in
# build-fuzz/fuzz-artifacts/; replay it with build-fuzz/fuzz/<target> <file>).
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 10 fuzz_key_decode
#   NEXUSKV_JOBS=4 scripts/fuzz.sh  # build parallelism (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(fuzz_segment_assembler fuzz_segment_decode fuzz_key_decode)
fi
cc=${CC_FUZZ:-clang-14}
cxx=${CXX_FUZZ:-clang++-14}
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }

start=$(date +%s)
if [[ -f build-fuzz/CMakeCache.txt ]] && ! grep -qs '^NEXUSKV_FUZZ:BOOL=ON' build-fuzz/CMakeCache.txt; then
  echo "fuzz: build-fuzz/ was not configured by this script (no NEXUSKV_FUZZ=ON); remove it" >&2
  exit 2
fi
if [[ ! -f build-fuzz/CMakeCache.txt ]]; then
  CC=$cc CXX=$cxx cmake -S . -B build-fuzz -DNEXUSKV_FUZZ=ON -DNEXUSKV_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build build-fuzz -j"${NEXUSKV_JOBS:-2}" --target "${targets[@]}"
echo "fuzz: build took $(($(date +%s) - start)) s"

mkdir -p build-fuzz/fuzz-artifacts
status=0
total=0
for t in "${targets[@]}"; do
  work=build-fuzz/fuzz-corpus/$t
  mkdir -p "$work"
  log=build-fuzz/fuzz-$t.log
  set +e
  "build-fuzz/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 -artifact_prefix="build-fuzz/fuzz-artifacts/$t-" \
    "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(find "$work" "tests/fuzz/corpus/$t" -type f 2>/dev/null | wc -l || true)
  if ((rc != 0)); then
    status=1
    echo "fuzz: $t FAILED (exit $rc) after ${execs:-?} executions; see $log:"
    grep -E "ERROR|FUZZ_CHECK|runtime error|Test unit written" "$log" | head -20
  else
    echo "fuzz: $t: ${execs:-0} executions in ${seconds} s, no crash (corpus ${corpus} inputs)"
  fi
  total=$((total + ${execs:-0}))
done
echo "fuzz: ${#targets[@]} targets, ${total} executions in total, $(($(date +%s) - start)) s with the build"
exit $status
