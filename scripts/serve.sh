#!/usr/bin/env bash
# Installs, builds and starts nexuskv-server on its embedded RocksDB (./data), listening on
# localhost:50051. Extra arguments go to the server, e.g. scripts/serve.sh --listen=0.0.0.0:50051
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec build/bin/nexuskv-server --listen=localhost:50051 --data_dir=./data "$@"
