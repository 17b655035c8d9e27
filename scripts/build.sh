#!/usr/bin/env bash
# Installs the dependencies and builds nexuskv into build/ (binaries in build/bin/).
# Usage: scripts/build.sh [--target NAME ...] [extra cmake -D options]
#   Without --target it builds everything (tests, benchmarks, the load generator); with it, only
#   the named targets and what they need (scripts/serve.sh builds nexuskv-server and nexuskv).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=()
cmake_args=()
while (($#)); do
  case $1 in
    --target) targets+=(--target "$2"); shift 2 ;;
    *) cmake_args+=("$1"); shift ;;
  esac
done
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo "${cmake_args[@]}"
cmake --build build -j"$(nproc)" "${targets[@]}"
