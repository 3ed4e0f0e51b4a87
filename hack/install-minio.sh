#!/usr/bin/env bash
# The real S3 server the store tests run against (tests/conftest.py `s3`):
# MinIO, built from its published Go module and cached outside the checkout,
# keyed by version; a second run is a no-op.  MinIO tags its releases
# RELEASE.<date>, which Go does not read as versions, so we pin the module's
# pseudo-version (the commit of a release on master).
#   REVERIE_MINIO_VERSION   Go module version (default below)
#   REVERIE_CACHE           cache root (default ~/.cache/reverie)
set -euo pipefail

MINIO_VERSION="${REVERIE_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
CACHE="${REVERIE_CACHE:-$HOME/.cache/reverie}"
OUT="$CACHE/minio-$MINIO_VERSION/bin"

if [[ -x "$OUT/minio" ]] && "$OUT/minio" --version >/dev/null 2>&1; then
  echo "minio $MINIO_VERSION already built in $OUT"
  exit 0
fi
command -v go >/dev/null || { echo "error: Go is required to build MinIO (https://go.dev/dl)" >&2; exit 1; }

mkdir -p "$OUT"
tmp="$(mktemp -d "$OUT/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "building github.com/minio/minio@$MINIO_VERSION (a few minutes the first time)"
# A module's own go.mod decides its dependencies (-mod=mod); no CGO, so the
# binary runs anywhere this machine's kernel does.
GOBIN="$tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
  "github.com/minio/minio@$MINIO_VERSION"
mv "$tmp/minio" "$OUT/minio"
echo "built $OUT/minio"
