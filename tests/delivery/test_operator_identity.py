"""The operator under the chart's other identities: cluster-wide with the
ClusterRole, and signed in with a real ServiceAccount token as in a pod.

(The namespaces-scope identity runs the full observed scenario in
test_operator_observed.py.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from operator_under_chart import (
    DENIED,
    apply,
    chart_identity,
    cycle_manifest,
    lineage_manifest,
    operator_process,
    service_account_kubeconfig,
    token_kubeconfig,
)
from tests.operator.jobsim import JobSim

pytestmark = pytest.mark.cluster


def test_operator_signs_in_with_a_service_account_token(cluster: Any, tmp_path: Path) -> None:
    # What the Deployment does in a real cluster: the ServiceAccount's token, not a client certificate.
    log = tmp_path / "operator.log"
    with chart_identity(cluster) as (namespace, account, args):
        kubeconfig = token_kubeconfig(cluster, namespace, account, tmp_path / "token.kubeconfig")
        with operator_process(args, kubeconfig=kubeconfig, log=log):
            apply(cluster, namespace, lineage_manifest())
            apply(cluster, namespace, cycle_manifest("night-1"))
            sim = JobSim(cluster.api_client(), namespace)
            deadline = time.monotonic() + 30
            while not any(j["metadata"]["name"] == "night-1-consolidation-1" for j in sim.jobs()):
                denied = DENIED.search(log.read_text(errors="replace"))
                assert denied is None, f"the operator was refused: {denied.group(0) if denied else ''}"
                assert time.monotonic() < deadline, f"no Job created; operator log:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)


def test_operator_runs_a_cycle_cluster_wide_under_the_cluster_role(cluster: Any, tmp_path: Path) -> None:
    log = tmp_path / "operator.log"
    with chart_identity(cluster, scope="cluster", release="reverie-cw") as (namespace, account, args):
        assert "--all-namespaces" in args
        kubeconfig = service_account_kubeconfig(cluster, namespace, account)
        with operator_process(args, kubeconfig=kubeconfig, log=log):
            apply(cluster, namespace, lineage_manifest())
            apply(cluster, namespace, cycle_manifest("night-1"))
            sim = JobSim(cluster.api_client(), namespace)
            for step in ("consolidation", "dreaming", "evaluation"):
                job = sim.wait_for_job(f"night-1-{step}-1")
                sim.succeed(job, sim.result_for(job))
            done = sim.wait_for_phase("night-1", "Succeeded")
    assert done["status"]["generation"] == "gen-1"
    operator_log = log.read_text(errors="replace")
    assert not DENIED.search(operator_log), f"the operator hit an authorization error:\n{operator_log[-4000:]}"
