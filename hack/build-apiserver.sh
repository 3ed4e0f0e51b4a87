#!/usr/bin/env bash
# Build the real Kubernetes binaries the tests run against (kube-apiserver and
# kube-controller-manager for every cluster test; kubelet, kube-scheduler and
# kube-proxy for the one-node tests in tests/node), from the published
# k8s.io/kubernetes Go module, the way controller-runtime's envtest gets real
# binaries; all five from one version (a kubelet may never be newer than its
# API server).  k8s.io/kubernetes cannot be `go install`ed (its go.mod
# replaces the staging modules with local paths), so we write a tiny go.mod
# that requires it and points every staging module at its published v0.Y.Z
# twin.  Binaries are cached outside the checkout, keyed by version; a second
# run is a no-op, and a binary already built is not built again.
set -euo pipefail

K8S_VERSION="${REVERIE_K8S_VERSION:-v1.37.2}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
CACHE="${REVERIE_CACHE:-$HOME/.cache/reverie}"
OUT="$CACHE/k8s-$K8S_VERSION/bin"
BINARIES=(kube-apiserver kube-controller-manager kubelet kube-scheduler kube-proxy)

# A binary counts as built only if it reports the wanted version (older builds
# of this script left the placeholder v0.0.0-master, which kubectl and helm reject).
todo=()
for b in "${BINARIES[@]}"; do
  [[ -x "$OUT/$b" ]] && [[ "$("$OUT/$b" --version 2>/dev/null)" == "Kubernetes $K8S_VERSION" ]] || todo+=("$b")
done
if ((${#todo[@]} == 0)); then
  echo "kubernetes $K8S_VERSION binaries already built in $OUT"
  exit 0
fi

command -v go >/dev/null || { echo "error: Go is required to build kube-apiserver (https://go.dev/dl)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

k8s_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
{
  echo "module reverie.dev/testcluster"
  echo
  grep -E '^go [0-9]' "$k8s_mod"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  grep -E '=> \./staging/src/' "$k8s_mod" | awk -v v="$STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
echo "resolving k8s.io/kubernetes $K8S_VERSION (staging modules at $STAGING_VERSION)"
go mod tidy -e >/dev/null 2>&1 || true
go get "k8s.io/kubernetes@$K8S_VERSION"
# Stamp the version the way Kubernetes' hack/lib/version.sh does; without it
# /version says v0.0.0-master+$Format:%H$ and clients that parse it fail.
major="${K8S_VERSION#v}"; minor="${major#*.}"; major="${major%%.*}"; minor="${minor%%.*}"
commit="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("Origin", {}).get("Hash", ""))')"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit=${commit:-unknown} -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
mkdir -p "$OUT"
for b in "${todo[@]}"; do
  echo "building $b"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$OUT/$b.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$OUT/$b.tmp" "$OUT/$b"
done
echo "built into $OUT"
