"""A SleepCycle on the real API server, from apply to a promoted generation, with the test as Job controller."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.conftest import RunOperator, apply, cycle, lineage
from tests.operator.jobsim import JobSim

pytestmark = pytest.mark.cluster


def test_happy_path_promotes_a_new_generation(cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle())
    with run_operator():
        for step in ("consolidation", "dreaming", "evaluation"):
            job = sim.wait_for_job(f"c1-{step}-1")
            sim.succeed(job, sim.result_for(job))
        done = sim.wait_for_phase("c1", "Succeeded")
    status = done["status"]
    assert status["generation"] == "gen-1"
    assert [r["jobName"] for r in status["records"]] == ["c1-consolidation-1", "c1-dreaming-1", "c1-evaluation-1"]
    assert status["gate"]["outcome"] == "Passed"
    assert sorted(sim.created()) == ["c1-consolidation-1", "c1-dreaming-1", "c1-evaluation-1"]
