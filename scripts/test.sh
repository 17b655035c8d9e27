#!/usr/bin/env bash
# Installs, builds and runs every test: the C++ unit and integration tests (ctest: against the real
# server binary and a real RocksDB, plus the crash tests), then the Python client, transformers
# integration and quick real-model evaluation (pytest, in .venv). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/build.sh
echo "test: build done after $((SECONDS - start)) s"
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 600
echo "test: ctest done after $((SECONDS - start)) s"
bash scripts/python-test.sh
echo "test: python done after $((SECONDS - start)) s"
