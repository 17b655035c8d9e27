#!/usr/bin/env bash
# Makes clients/go build and test offline from Debian's packages, where the Go module proxy is not
# reachable: generates the stubs (nexuskvpb/, go generate) and a vendor/ folder of Debian's packaged
# Go sources (/usr/share/gocode/src). Both are generated, never committed (.gitignore). vendor/ holds
# one symlink per dependency module, pointing into /usr/share/gocode, and a vendor/modules.txt
# naming the packages the module and its tests use; with it, go (>= 1.14) builds in -mod=vendor
# mode by itself. Without vendor/, go uses the normal module path (docs/go.md, "With internet").
# Debian packages: golang-go, protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc,
# golang-google-grpc-dev, golang-google-protobuf-dev, golang-github-golang-protobuf-1-5-dev
# (scripts/go-test.sh installs them).
#
# Usage: clients/go/scripts/debian-offline.sh   (from anywhere; rebuilds both every run)
set -euo pipefail
cd "$(dirname "$0")/.."
gocode=${GOCODE:-/usr/share/gocode/src}

# Modules the client's import graph reaches, as Debian lays them out.
modules=(
  google.golang.org/grpc
  google.golang.org/protobuf
  google.golang.org/genproto
  github.com/golang/protobuf
  golang.org/x/net
  golang.org/x/sys
  golang.org/x/text
)

# The version of a Debian-packaged module, as a Go module version: its package's upstream version
# (1:0.7.0+dfsg-1 -> v0.7.0; 0.0~git20200413.b5235f6-3 -> v0.0.0-20200413000000-b5235f6).
debian_version() {
  local pkg version
  pkg=$(dpkg -S "$gocode/$1" 2>/dev/null | head -n1 | cut -d: -f1 | cut -d, -f1) || true
  version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || { echo "v0.0.0-debian"; return; }
  version=${version#*:}
  version=${version%-*}
  version=${version%%+*}
  if [[ $version =~ ~git([0-9]{8})\.([0-9a-f]+) ]]; then
    echo "v0.0.0-${BASH_REMATCH[1]}000000-${BASH_REMATCH[2]}"
  else
    echo "v$version"
  fi
}

# go.mod's own requirements must appear in modules.txt with that exact version and "## explicit".
declare -A required
while read -r path version; do
  required[$path]=$version
done < <(awk '/^require \($/ { block = 1; next } block && /^\)/ { block = 0 }
              block && NF >= 2 { print $1, $2 } /^require [^(]/ { print $2, $3 }' go.mod)

write_modules_txt() {  # $1: file of "import/path" lines (the packages used), or /dev/null
  local module version
  for module in "${modules[@]}"; do
    version=${required[$module]:-$(debian_version "$module")}
    echo "# $module $version"
    # "explicit" for go.mod's requirements; the module's go version sets its language version.
    local annotations="" go_version pkg owner m
    if [[ -n ${required[$module]:-} ]]; then annotations="explicit"; fi
    go_version=$(sed -n 's/^go //p' "$gocode/$module/go.mod" 2>/dev/null || true)
    if [[ -n $go_version ]]; then annotations="${annotations:+$annotations; }go $go_version"; fi
    if [[ -n $annotations ]]; then echo "## $annotations"; fi
    while read -r pkg; do
      # A package belongs to the longest module root above that prefixes it.
      owner=""
      for m in "${modules[@]}"; do
        if [[ ($pkg == "$m" || $pkg == "$m/"*) && ${#m} -gt ${#owner} ]]; then owner=$m; fi
      done
      if [[ $owner == "$module" ]]; then echo "$pkg"; fi
    done < "$1"
  done
}

rm -rf vendor
for module in "${modules[@]}"; do
  if [[ ! -d $gocode/$module ]]; then
    echo "debian-offline: $gocode/$module missing (apt-get install golang-google-grpc-dev golang-google-protobuf-dev)" >&2
    exit 1
  fi
  mkdir -p "vendor/$(dirname "$module")"
  ln -s "$gocode/$module" "vendor/$module"
  have=${required[$module]:-}
  if [[ -n $have && $have != "$(debian_version "$module")" ]]; then
    echo "debian-offline: note: go.mod requires $module $have, Debian ships $(debian_version "$module")" >&2
  fi
done
# First pass: modules only. That is enough for go to load the module (and run go generate), and
# then for go list to name the packages the module and its tests import.
write_modules_txt /dev/null > vendor/modules.txt
rm -rf nexuskvpb
GOFLAGS=-mod=vendor go generate .
used=$(mktemp)
trap 'rm -f "$used"' EXIT
GOFLAGS=-mod=vendor go list -deps -test -f '{{if not .Standard}}{{.ImportPath}}{{end}}' ./... |
  grep -v "^github.com/nexuskv/" | sed 's/ \[.*\]$//' | sort -u > "$used"
write_modules_txt "$used" > vendor/modules.txt
echo "debian-offline: nexuskvpb/ generated; vendor/ links $(wc -l < "$used") packages of ${#modules[@]} modules from $gocode"
