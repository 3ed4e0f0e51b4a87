# The two commands of the README.  Both install what they need first.
.PHONY: demo test setup lint format crds

export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false

# One complete sleep cycle on this CPU: SmolLM2-135M learns four fictional people, no cluster.
# The phases run one at a time, so each gets every core (nproc itself obeys OMP_NUM_THREADS, hence env -u).
demo:
	bash hack/setup.sh --minimal
	OMP_NUM_THREADS=$$(env -u OMP_NUM_THREADS nproc) .venv/bin/reverie sleep examples/quickstart

# Every test: pure core, workloads on tiny models, the real API server, Helm, Prometheus.
# REVERIE_REQUIRE_CLUSTER=1: a missing kube-apiserver fails the cluster tests instead of skipping them.
test:
	bash hack/setup.sh
	.venv/bin/ruff check operator tests
	REVERIE_REQUIRE_CLUSTER=1 .venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check operator tests bench
	.venv/bin/ruff format --check operator tests bench
	.venv/bin/mypy

# Format the code the one way `make lint` checks.
format:
	.venv/bin/ruff format operator tests bench

crds:
	.venv/bin/reverie crds --write crds/
