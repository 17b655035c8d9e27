#!/usr/bin/env bash
# The scale-out checks (docs/scaling.md, docs/deploy.md), offline and on loopback:
#   1. deploy/k8s validated without a cluster (tests/cluster/check_manifests.py: kubernetes-validate
#      schemas, strict; file listing, patches and cross-references; kubectl kustomize renders too
#      when kubectl is on PATH);
#   2. three nexuskv-server shards behind nginx, both configured from deploy/, with two client
#      processes, a SIGKILLed shard and a fourth shard added (tests/cluster/test_cluster.py, < 90 s).
# Installs nginx (Debian) when missing. Needs build/bin/nexuskv-server and build/bin/nexuskv
# (scripts/build.sh; $NEXUSKV_SERVER and $NEXUSKV_CLI override them) and .venv
# (scripts/python-env.sh, run here when it lacks a package).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

packages=(nginx)
source scripts/lib/packages.sh
ensure_packages cluster-test "${packages[@]}"

if ! .venv/bin/python -c 'import nexuskv, kubernetes_validate' 2>/dev/null; then
  bash scripts/python-env.sh
fi
for bin in "${NEXUSKV_SERVER:-build/bin/nexuskv-server}" "${NEXUSKV_CLI:-build/bin/nexuskv}"; do
  if [[ ! -x $bin ]]; then
    echo "cluster-test: $bin is missing: build it first (scripts/build.sh)" >&2
    exit 1
  fi
done

.venv/bin/python tests/cluster/check_manifests.py
echo "cluster-test: manifests checked after $((SECONDS - start)) s"
.venv/bin/python -m pytest -q -s -p no:cacheprovider tests/cluster "$@"
echo "cluster-test: passed in $((SECONDS - start)) s"
