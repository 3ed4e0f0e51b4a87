"""The operator killed (SIGKILL) at every transition: the cycle still completes, and no Job is created twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tests.operator.conftest import apply, cycle, lineage
from tests.operator.jobsim import JobSim

pytestmark = pytest.mark.cluster


@contextmanager
def operator_process(cluster: Any, namespace: str) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as its own process, the way a Deployment runs it; leaving the block SIGKILLs it."""
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "REVERIE_RESYNC_SECONDS": "2",
        "REVERIE_LINEAGE_INTERVAL_S": "2",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("REVERIE_METRICS_PORT", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "--namespace",
            namespace,
            "-m",
            "reverie.controller.main",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_operator_killed_at_every_transition_still_completes_without_duplicate_jobs(
    cluster: Any, namespace: str, sim: JobSim
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle())
    # Attempt 1 of consolidation fails while the operator is down, so the restart also has to
    # find the failure, honour the backoff and start attempt 2 exactly once.
    script = [("consolidation", 1, "fail"), ("consolidation", 2, "ok"), ("dreaming", 1, "ok"), ("evaluation", 1, "ok")]
    for step, attempt, outcome in script:
        with operator_process(cluster, namespace):
            job = sim.wait_for_job(f"c1-{step}-{attempt}", timeout=60)
        # killed; the workload finishes while no operator runs
        if outcome == "ok":
            sim.succeed(job, sim.result_for(job))
        else:
            sim.fail(job, reason="DeadlineExceeded", message="Job was active longer than specified deadline")
    with operator_process(cluster, namespace):
        done = sim.wait_for_phase("c1", "Succeeded", timeout=60)
    created = sim.created()
    assert sorted(created) == ["c1-consolidation-1", "c1-consolidation-2", "c1-dreaming-1", "c1-evaluation-1"]
    assert all(len(uids) == 1 for uids in created.values()), created
    assert done["status"]["generation"] == "gen-1"
    lin = cluster.kubectl("get", "modellineage", "lin", "-n", namespace, "-o", "json").stdout
    import json

    gens = json.loads(lin)["status"]["generations"]
    assert [g["name"] for g in gens if g.get("cycle") == "c1"] == ["gen-1"]  # recorded once
