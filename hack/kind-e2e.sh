#!/usr/bin/env bash
# End to end on a local kind cluster, for users with Docker: build the images,
# install the Helm chart, run the smoke sleep cycle (examples/smoke: the tiny model, on
# CPU) through real Jobs, and show the promoted generation.
#
# Not run in CI here: this project's machines have no Docker engine.  CI covers
# the same pieces separately (chart on a real API server, operator under the
# chart's RBAC, Prometheus scraping it): see tests/delivery/.
#
# Needs: docker, kind, kubectl (helm is installed by hack/install-helm.sh if absent).
#   hack/kind-e2e.sh            # create cluster (or reuse), build, install, run the cycle
#   hack/kind-e2e.sh --down     # delete the kind cluster
# Environment:
#   REVERIE_KIND_CLUSTER   cluster name (default reverie-e2e)
#   REVERIE_E2E_TIMEOUT    how long the cycle may take (default 45m; the trainer
#                          image build alone takes a while the first time)
#   REVERIE_E2E_DREAMER=1  also build the vLLM dreamer image and use it for
#                          dreaming (only useful with GPUs; the smoke cycle dreams
#                          with the hf backend in the trainer image)
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${REVERIE_KIND_CLUSTER:-reverie-e2e}"
TIMEOUT="${REVERIE_E2E_TIMEOUT:-45m}"
TAG="e2e"
OPERATOR_IMAGE="reverie-operator:$TAG"
TRAINER_IMAGE="reverie-trainer:$TAG"
DREAMER_IMAGE="$TRAINER_IMAGE"
SYSTEM_NS="reverie-system"
DEMO_NS="reverie-demo"

say() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "error: $1 is required ($2)" >&2; exit 1; }; }

if [[ "${1:-}" == "--down" ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

need docker "https://docs.docker.com/get-docker/"
need kind "go install sigs.k8s.io/kind@latest"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
HELM="$(command -v helm || true)"
if [[ -z "$HELM" ]]; then
  bash hack/install-helm.sh
  HELM="${REVERIE_CACHE:-$HOME/.cache/reverie}/bin/helm"
fi

say "kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

say "building images (DOCKER_BUILDKIT for the bind mounts)"
export DOCKER_BUILDKIT=1
docker build -f images/operator/Dockerfile -t "$OPERATOR_IMAGE" .
docker build -f images/trainer/Dockerfile -t "$TRAINER_IMAGE" .
images=("$OPERATOR_IMAGE" "$TRAINER_IMAGE")
if [[ "${REVERIE_E2E_DREAMER:-}" == "1" ]]; then
  DREAMER_IMAGE="reverie-dreamer:$TAG"
  docker build -f images/dreamer/Dockerfile -t "$DREAMER_IMAGE" .
  images+=("$DREAMER_IMAGE")
fi
kind load docker-image --name "$CLUSTER" "${images[@]}"

say "installing the chart (release reverie in $SYSTEM_NS)"
"$HELM" upgrade --install reverie charts/reverie \
  --namespace "$SYSTEM_NS" --create-namespace \
  --set operator.image.repository="${OPERATOR_IMAGE%:*}" \
  --set operator.image.tag="$TAG" \
  --set operator.image.pullPolicy=Never \
  --wait --timeout 5m
kubectl -n "$SYSTEM_NS" rollout status deployment/reverie-operator --timeout=2m

say "smoke lineage and cycle in $DEMO_NS (store on a PVC)"
kubectl create namespace "$DEMO_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$DEMO_NS" -f - <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: reverie-store
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 2Gi
YAML
# The smoke manifests as they are, with the store on the PVC and the images just built.
kubectl patch --local -f examples/smoke/lineage.yaml --type=merge -o yaml \
  -p '{"spec":{"store":{"uri":"/store","pvcName":"reverie-store"}}}' | kubectl apply -n "$DEMO_NS" -f -
kubectl patch --local -f examples/smoke/sleepcycle.yaml --type=merge -o yaml \
  -p "{\"spec\":{\"images\":{\"trainer\":\"$TRAINER_IMAGE\",\"dreamer\":\"$DREAMER_IMAGE\"}}}" \
  | kubectl apply -n "$DEMO_NS" -f -

say "waiting for the cycle (up to $TIMEOUT): kubectl -n $DEMO_NS get sleepcycles -w"
if ! kubectl -n "$DEMO_NS" wait sleepcycle/smoke --for=jsonpath='{.status.phase}'=Succeeded --timeout="$TIMEOUT"; then
  echo "the cycle did not succeed; what happened:" >&2
  kubectl -n "$DEMO_NS" get sleepcycle smoke -o yaml >&2 || true
  kubectl -n "$DEMO_NS" get jobs,pods >&2 || true
  kubectl -n "$DEMO_NS" logs -l reverie.dev/cycle=smoke --tail=50 --all-containers >&2 || true
  kubectl -n "$SYSTEM_NS" logs deployment/reverie-operator --tail=100 >&2 || true
  exit 1
fi

say "done"
kubectl -n "$DEMO_NS" get sleepcycles,modellineages
kubectl -n "$DEMO_NS" get modellineage smoke -o jsonpath='{"champion: "}{.status.champion}{"\n"}'
echo "metrics: kubectl -n $SYSTEM_NS port-forward svc/reverie-metrics 8080 & curl -s localhost:8080/metrics | grep ^reverie_"
echo "delete everything: hack/kind-e2e.sh --down"
