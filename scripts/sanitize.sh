#!/usr/bin/env bash
# Builds the unit tests with AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/ and runs
# `ctest -L unit` there. Any sanitizer report fails the test that triggered it (halt_on_error,
# UBSan without recovery).
#
#   scripts/sanitize.sh                  # gcc (the default compiler)
#   CXX=clang++-14 CC=clang-14 scripts/sanitize.sh
#   NEXUSKV_JOBS=4 scripts/sanitize.sh   # build parallelism (default 2)
#   NEXUSKV_SANITIZE_DIR=build-fuzz scripts/sanitize.sh
#       # reuse scripts/fuzz.sh's clang tree, whose every object already has ASan + UBSan (plus
#       # coverage counters, harmless here): saves building the libraries a second time in CI
#
# Only the unit test executables are built: the targets declared with nexuskv_test(... LABELS
# unit) in the CMakeLists.txt files, so a new unit test is picked up without editing this script.
set -euo pipefail
cd "$(dirname "$0")/.."

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
dir=${NEXUSKV_SANITIZE_DIR:-build-asan}
start=$(date +%s)
if [[ ! -f $dir/CMakeCache.txt ]]; then
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNEXUSKV_CUDA=OFF \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
fi

# nexuskv_test(NAME ... LABELS ... unit ...) calls, which may span lines.
mapfile -t targets < <(
  git ls-files -- '*CMakeLists.txt' | xargs awk '
    /nexuskv_test\(/ { call = ""; open = 1 }
    open { call = call " " $0; if ($0 ~ /\)/) { open = 0
      if (call ~ /LABELS[^)]*[[:space:]]unit([[:space:]]|\))/) {
        sub(/.*nexuskv_test\([[:space:]]*/, "", call); split(call, w, /[[:space:]]+/); print w[1] } } }')
if ((${#targets[@]} == 0)); then
  echo "sanitize: found no unit test targets" >&2
  exit 2
fi
echo "sanitize: building ${#targets[@]} unit test targets in $dir: ${targets[*]}"
cmake --build "$dir" -j"${NEXUSKV_JOBS:-2}" --target "${targets[@]}"
echo "sanitize: build took $(($(date +%s) - start)) s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
if [[ -f tests/sanitizers/lsan.supp ]]; then
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/sanitizers/lsan.supp}
fi
test_start=$(date +%s)
ctest --test-dir "$dir" -L unit --output-on-failure -j"$(nproc)" --timeout 600
echo "sanitize: unit tests passed under ASan+UBSan in $(($(date +%s) - test_start)) s" \
  "($(($(date +%s) - start)) s with the build)"
