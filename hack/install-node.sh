#!/usr/bin/env bash
# What the node tests (tests/node: real pods on a one-node Kubernetes) need
# beside the control plane: containerd, runc, the CNI plugins, iptables, buildah
# and debootstrap from Debian's packages (root: apt-get), kubelet,
# kube-scheduler and kube-proxy built with the API server from the
# k8s.io/kubernetes Go module (hack/build-apiserver.sh, cached by version), and
# the project's images (hack/build-images.sh, cached in buildah's storage).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(containerd runc containernetworking-plugins iptables buildah debootstrap uidmap gcc libc6-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "error: the node tests need root to install: ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
echo "containerd: $(containerd --version | awk '{print $3}'), runc: $(runc --version | head -1 | awk '{print $3}')"
bash hack/build-apiserver.sh
bash hack/build-images.sh
