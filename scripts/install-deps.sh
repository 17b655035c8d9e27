#!/usr/bin/env bash
# Installs everything nexuskv needs to build and test on Debian 12. Idempotent: a second run only
# checks. Needs root (or sudo) for apt-get. tests/scripts/test_script_packages.py checks that every
# command the scripts run is part of a minimal bookworm or comes from a package listed here (or in
# the `packages` list of the script that uses it).
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  librocksdb-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libxxhash-dev libeigen3-dev libssl-dev openssl
  nlohmann-json3-dev
  # metrics/ (--metrics_listen) serves /metrics with civetweb; scripts/metrics-test.sh scrapes it
  # with a real Prometheus server and checks it with promtool
  libcivetweb-dev prometheus
  # service/config_file.cc: the server's --config YAML file
  libyaml-cpp-dev
  # scripts/python-env.sh: Debian's python3.11 and its venv module (ensurepip), which a bare
  # bookworm lacks; PyPI gives everything else
  python3.11 python3.11-venv
  # scripts/fuzz.sh and scripts/sanitize.sh (run by scripts/test.sh): clang-14, its sanitizer and
  # libFuzzer runtimes (libclang_rt.{asan,ubsan_standalone,fuzzer}), llvm-symbolizer for reports,
  # and clang's OpenMP runtime for cuda/'s host twin (Thrust's OpenMP system) under the sanitizers
  clang clang-14 libclang-rt-14-dev llvm libomp-14-dev
  # scripts/cluster-test.sh: the gateway in front of the local shards (docs/scaling.md)
  nginx
  # clients/go (scripts/go-test.sh): Go, its protoc plugins and the gRPC / protobuf Go sources it
  # builds against offline (clients/go/vendor/ links /usr/share/gocode, docs/go.md)
  golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev
)

source "$(dirname "$0")/lib/packages.sh"
ensure_packages install-deps "${packages[@]}"
