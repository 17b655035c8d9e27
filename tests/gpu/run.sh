#!/usr/bin/env bash
# The GPU check of issue 14, for a machine WITH a GPU (made for one H100 or H200 and 16 cores):
# builds the CUDA targets in a build tree of their own, runs the parity tests on the device, runs
# the GPU benchmark beside the CPU path, and prints a short report. docs/gpu.md explains each line.
#
#   tests/gpu/run.sh                 # the whole check (needs nvidia-smi and a visible GPU)
#   tests/gpu/run.sh --build-only    # configure and build only: no GPU needed (checks the build)
#   tests/gpu/run.sh -j 2            # fewer build jobs (default: nproc)
#
# Environment: BUILD_DIR (default build-gpu), NEXUSKV_CUDA_ARCHITECTURES (default: the device's
# compute capability from nvidia-smi, else 90), BENCH_MIN_TIME (seconds, default 0.1),
# NEXUSKV_SKIP_PACKAGE_CHECK=1 (the build packages are there but not as Debian packages), OUT (when
# set, the report and the logs are also written there: gpu-report.txt, gpu-build.log,
# gpu-test.log, gpu-bench.txt, gpu-bench.json).
#
# Time: must finish in 8 minutes on one H100 with 16 cores. Expected there (not yet measured on
# one): configure ~30 s, build ~3 min with -j16 (three nvcc compiles of cuda/*.cu at ~1-2 min each
# in parallel, the rest g++), parity tests < 1 min (the host twin takes ~20 s on 2 cores), the
# benchmark ~2 min (mostly the CPU rows). Each step has a timeout so that the report still comes.
#
# Packages: nothing is fetched here beyond what scripts/install-deps.sh installs. The build needs
# the Debian packages listed in build_packages below (a subset of install-deps.sh's); the script
# checks them with dpkg-query and, when some are missing, installs them through
# scripts/lib/packages.sh (the function install-deps.sh uses) if apt works, else stops and names
# them. nvcc comes from the CUDA toolkit (/usr/local/cuda or PATH), not from apt.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

build_only=0
jobs=$(nproc)
while (($#)); do
  case $1 in
    --build-only) build_only=1; shift ;;
    -j) jobs=$2; shift 2 ;;
    -j*) jobs=${1#-j}; shift ;;
    *) echo "usage: tests/gpu/run.sh [--build-only] [-j N]" >&2; exit 2 ;;
  esac
done

build_dir=${BUILD_DIR:-build-gpu}
min_time=${BENCH_MIN_TIME:-0.1}
if [[ -n ${OUT:-} ]]; then
  logs=$OUT
else
  logs=$build_dir/gpu-run
fi
mkdir -p "$logs"
report=$logs/gpu-report.txt
: >"$report"
start=$SECONDS

say() { echo "$*" | tee -a "$report"; }
fail() {
  say "gpu/run.sh: FAILED: $*"
  say "total: $((SECONDS - start)) s"
  exit 1
}

say "nexuskv GPU check (tests/gpu/run.sh) $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"

# 1. The device.
arch=${NEXUSKV_CUDA_ARCHITECTURES:-}
if ((build_only)); then
  say "device: none asked for (--build-only)"
else
  command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this is no GPU machine (use --build-only to check the build)"
  device=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 | head -1)
  [[ -n $device && $device != *"No devices"* && $device != *"failed"* ]] || fail "nvidia-smi sees no GPU: $device"
  say "device: $device (nvidia-smi: name, memory, driver, compute capability)"
  if [[ -z $arch ]]; then
    cap=$(echo "$device" | awk -F', ' '{print $4}' | tr -d '.')
    [[ $cap =~ ^[0-9]+$ ]] && arch=$cap
  fi
fi
arch=${arch:-90}

# 2. The toolchain and the packages the configure needs.
nvcc=$(command -v nvcc || true)
[[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
[[ -n $nvcc ]] || fail "nvcc not found (CUDA toolkit in /usr/local/cuda or on PATH)"
say "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*' | head -1)), architectures $arch, $jobs build jobs"
build_packages=(
  build-essential cmake pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev
  libxxhash-dev libeigen3-dev libssl-dev nlohmann-json3-dev libcivetweb-dev libyaml-cpp-dev
)
if [[ ${NEXUSKV_SKIP_PACKAGE_CHECK:-0} == 1 ]]; then
  say "packages: not checked (NEXUSKV_SKIP_PACKAGE_CHECK=1)"
elif command -v dpkg-query >/dev/null; then
  missing=()
  for p in "${build_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "packages: missing ${missing[*]}; installing them with apt (scripts/lib/packages.sh)"
    # shellcheck source=scripts/lib/packages.sh disable=SC1091
    source scripts/lib/packages.sh
    (ensure_packages gpu/run.sh "${missing[@]}") >>"$logs/gpu-build.log" 2>&1 ||
      fail "could not install ${missing[*]} (apt-get failed: no network or no root?); install them" \
        "(bash scripts/install-deps.sh) on a machine image with apt access, or run where they are"
  else
    say "packages: all ${#build_packages[@]} build packages present"
  fi
else
  say "packages: no dpkg-query here; not checked (the configure below says what it lacks)"
fi

# 3. Configure and build only the two targets (and what they need).
t0=$SECONDS
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNEXUSKV_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DNEXUSKV_CUDA_ARCHITECTURES="$arch" >>"$logs/gpu-build.log" 2>&1 ||
  fail "configure failed (last lines of $logs/gpu-build.log below)$(echo; tail -15 "$logs/gpu-build.log")"
t1=$SECONDS
timeout 420 cmake --build "$build_dir" -j"$jobs" --target cuda_thrust_gpu_test gpu_compute_bench \
  >>"$logs/gpu-build.log" 2>&1 ||
  fail "build failed or passed 420 s (last lines of $logs/gpu-build.log below)$(echo; tail -25 "$logs/gpu-build.log")"
say "build: configure $((t1 - t0)) s, build $((SECONDS - t1)) s ($build_dir: cuda_thrust_gpu_test, gpu_compute_bench)"
if ((build_only)); then
  say "total: $((SECONDS - start)) s (--build-only: nothing run)"
  exit 0
fi

# 4. The parity tests on the device.
t0=$SECONDS
timeout 240 "$build_dir/tests/cuda_thrust_gpu_test" --gtest_color=no >"$logs/gpu-test.log" 2>&1
test_rc=$?
passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}\..*/\1/p' "$logs/gpu-test.log" | tail -1)
failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$logs/gpu-test.log" | tail -1)
skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$logs/gpu-test.log" | tail -1)
say "parity tests (cuda_thrust_gpu_test, $((SECONDS - t0)) s, exit $test_rc):" \
  "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped$( ((test_rc == 124)) && echo ', TIMED OUT at 240 s')"
if ((test_rc != 0)); then
  grep -E '^\[  FAILED  \] [A-Za-z]' "$logs/gpu-test.log" | awk '{print "  failed: " $4}' | sort -u |
    head -30 | tee -a "$report"
fi
grep -E '^\[  SKIPPED \] [A-Za-z]' "$logs/gpu-test.log" | awk '{print "  skipped: " $4}' | sort -u |
  head -5 | tee -a "$report"

# 5. The benchmark: the GPU beside the CPU, with the copy anchors (docs/gpu.md).
t0=$SECONDS
timeout 300 "$build_dir/bin/gpu_compute_bench" --benchmark_min_time="$min_time" \
  --benchmark_counters_tabular=true --benchmark_out="$logs/gpu-bench.json" \
  --benchmark_out_format=json >"$logs/gpu-bench.txt" 2>&1
bench_rc=$?
bench_errors=$(grep -c 'ERROR OCCURRED' "$logs/gpu-bench.txt")
((bench_rc == 0 && bench_errors > 0)) && bench_rc=1
say "benchmark (gpu_compute_bench --benchmark_min_time=$min_time, $((SECONDS - t0)) s," \
  "$bench_errors rows in error, exit $bench_rc$( ((bench_rc == 124)) && echo ', TIMED OUT at 300 s: the rows below are those that finished')):"
say "  GB/s: raw KV (LadderFit) or history covered (ScoredGetCache) per second, from host memory;"
say "  d2d/h2d/h2d_pinned/memcpy_GB/s: copies of the same bytes in this run; x_d2d, x_h2d: time over that copy's"
grep -v -E '^\*\*\*WARNING|^Run on|^CPU Caches|^  L[123] |^Load Average' "$logs/gpu-bench.txt" | tee -a "$report"

say "total: $((SECONDS - start)) s; logs in $logs"
((test_rc == 0 && bench_rc == 0)) || exit 1
