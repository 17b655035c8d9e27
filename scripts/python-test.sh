#!/usr/bin/env bash
# Python side of the test suite: ruff, the client against a real nexuskv-server process, nexuskv.hf
# against transformers, the check that every command the scripts run gets installed by them
# (tests/scripts), and the quick evaluation (SmolLM2 on 3 ShareGPT dialogues + 1 needle; checks
# that FULL reproduces full-context log-probs to 1e-4). Sets up .venv first (scripts/python-env.sh).
# Assumes build/bin/nexuskv-server exists (scripts/build.sh); NEXUSKV_SERVER overrides the path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/python-env.sh
server=${NEXUSKV_SERVER:-build/bin/nexuskv-server}
if [[ ! -x $server ]]; then
  echo "python-test: $server is missing: build it first (scripts/build.sh)" >&2
  exit 1
fi
.venv/bin/python -m ruff check clients/python eval examples tests
.venv/bin/python -m pytest -q -p no:cacheprovider clients/python/tests eval/tests tests/scripts "$@"
