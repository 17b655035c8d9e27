#!/usr/bin/env bash
# Go side of the test suite: installs Debian's Go toolchain and gRPC sources (idempotent), generates
# the client's stubs from proto/ (go generate) and links its dependencies from /usr/share/gocode
# into clients/go/vendor/ (offline: the Go module proxy is not reachable, docs/go.md), then checks
# gofmt and runs go vet and go test on clients/go against a real nexuskv-server process. Assumes
# build/bin/nexuskv-server exists (scripts/build.sh); NEXUSKV_SERVER overrides the path. Extra
# arguments go to go test.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc
  golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
)
source scripts/lib/packages.sh
ensure_packages go-test "${packages[@]}"

server=${NEXUSKV_SERVER:-build/bin/nexuskv-server}
if [[ ! -x $server ]]; then
  echo "go-test: $server is missing: build it first (scripts/build.sh)" >&2
  exit 1
fi
NEXUSKV_SERVER=$(realpath "$server")
export NEXUSKV_SERVER
# Offline: no proxy, no toolchain downloads. Go's own build cache (~/.cache/go-build; build/ when
# there is no home), keyed without the checkout's path (-trimpath), spares a later run, even from
# a fresh clone elsewhere, most of the first one's compiling.
export GOPROXY=off GOFLAGS="-mod=vendor -trimpath" GOTOOLCHAIN=local
if [[ -z ${GOCACHE:-} && -z ${HOME:-} && -z ${XDG_CACHE_HOME:-} ]]; then
  export GOCACHE=$PWD/build/go-cache
fi

cd clients/go
bash scripts/debian-offline.sh  # nexuskvpb/ (go generate) and vendor/
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
  echo "go-test: not gofmt-formatted (run gofmt -w): $unformatted" >&2
  exit 1
fi
go vet ./...
go test -count=1 -v ./... "$@"
