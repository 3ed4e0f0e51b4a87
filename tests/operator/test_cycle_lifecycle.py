"""A SleepCycle on the real API server, from apply to a promoted generation, with the test as Job controller."""

from __future__ import annotations

from typing import Any

import pytest
from tests.operator.conftest import RunOperator, apply, cycle, lineage, wait
from tests.operator.jobsim import JobSim

pytestmark = pytest.mark.cluster


def test_happy_path_promotes_a_new_generation(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
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
    # Kopf's own bookkeeping stays under our prefix, never kopf.zalando.org
    annotations = done["metadata"].get("annotations") or {}
    assert any(k.startswith("kopf.reverie.dev/") for k in annotations), annotations
    assert not any(k.startswith("kopf.zalando.org") for k in annotations)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == done["metadata"]["generation"]
    # Every step says it succeeded, with its attempt, Job and output.
    steps = {c["type"]: c for c in status["conditions"] if c["type"] in ("Consolidated", "Dreamed", "Evaluated")}
    for type_, step in (("Consolidated", "consolidation"), ("Dreamed", "dreaming"), ("Evaluated", "evaluation")):
        c = steps[type_]
        assert (c["status"], c["reason"]) == ("True", "Succeeded"), c
        assert f"attempt 1 of 2 succeeded in Job c1-{step}-1" in c["message"] and f"/lin/c1/{step}/" in c["message"]
        assert c["observedGeneration"] == done["metadata"]["generation"]


def test_failed_attempt_is_retried_and_resumes_from_its_checkpoint(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle(dreaming={"enabled": False}))
    with run_operator():
        first = sim.wait_for_job("c1-consolidation-1")
        assert sim.config_of(first).get("resumeFrom") is None
        preempted = '{"step":"consolidation","status":"Failed","message":"preempted","checkpointUri":"file:///store/lin/c1/consolidation/checkpoints/step-40"}'
        sim.fail(first, result=preempted, exit_code=137, container_reason="Error")
        second = sim.wait_for_job("c1-consolidation-2")
        assert sim.config_of(second)["resumeFrom"] == "file:///store/lin/c1/consolidation/checkpoints/step-40"
        assert sim.config_of(second)["attempt"] == 2
        sim.succeed(second, sim.result_for(second))
        job = sim.wait_for_job("c1-evaluation-1")
        sim.succeed(job, sim.result_for(job))
        done = sim.wait_for_phase("c1", "Succeeded")
        # Events are posted after the status write: wait for them, the operator still running
        wanted = {"AttemptFailed", "JobCreated", "Consolidating", "Evaluating", "Succeeded"}
        wait(
            lambda: (
                wanted
                <= set(
                    cluster.kubectl(
                        "get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}"
                    ).stdout.split()
                )
            ),
            what=f"events {wanted}",
        )
    first_record = done["status"]["records"][0]
    assert first_record["result"] == "Failed" and first_record["reason"] == "BackoffLimitExceeded"
    assert "preempted" in first_record["message"]


def test_spent_retry_budget_fails_the_cycle_with_the_reason(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle())
    with run_operator():
        for attempt in (1, 2):
            job = sim.wait_for_job(f"c1-consolidation-{attempt}")
            sim.fail(job, exit_code=137, container_reason="OOMKilled", reason="BackoffLimitExceeded")
        failed = sim.wait_for_phase("c1", "Failed")
        lin = cluster.kubectl(
            "get", "modellineage", "lin", "-n", namespace, "-o", "jsonpath={.status.activeCycle}"
        ).stdout
    ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
    assert (
        ready["reason"] == "RetryBudgetExhausted" and "2 of 2" in ready["message"] and "OOMKilled" in ready["message"]
    )
    assert ready["observedGeneration"] == failed["metadata"]["generation"]
    assert lin == ""  # the lineage was released
    assert sorted(sim.created()) == ["c1-consolidation-1", "c1-consolidation-2"]


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (None, "MissingResult"),
        ("{truncated", "MalformedResult"),
        ('{"step":"dreaming","status":"Succeeded","outputUri":"x"}', "MalformedResult"),
    ],
)
def test_malformed_or_missing_results_fail_the_attempt_never_advance(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator, result: str | None, reason: str
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle(retries={"maxAttempts": 1}))
    with run_operator():
        job = sim.wait_for_job("c1-consolidation-1")
        sim.succeed(job, result)
        failed = sim.wait_for_phase("c1", "Failed")
    record = failed["status"]["records"][0]
    assert record["result"] == "Failed" and record["reason"] == reason and record["message"]
    assert sorted(sim.created()) == ["c1-consolidation-1"]  # never advanced to dreaming
