#!/usr/bin/env bash
# Installs, builds and runs every test (unit and integration, against the real server binary and
# a real RocksDB). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 600
