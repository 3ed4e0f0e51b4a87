"""What a phase Job's status and its pods say back to the planner (no cluster needed; the real
kubelet's eviction is exercised in tests/node/test_faults_on_pods.py)."""

from __future__ import annotations

from typing import Any

from reverie.controller.jobs import EPHEMERAL_STORAGE_HINT, observe


def job(name: str = "c1-consolidation-1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"reverie.dev/step": "consolidation", "reverie.dev/attempt": "1"},
            "creationTimestamp": "2026-12-06T06:00:00Z",
        },
        "status": {
            "startTime": "2026-12-06T06:00:01Z",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        },
    }


def pod(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "c1-consolidation-1-x", "labels": {"reverie.dev/job": "c1-consolidation-1"}},
        "status": status,
    }


def test_an_evicted_pod_names_the_eviction_and_the_fix() -> None:
    evicted = pod(
        {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "Pod ephemeral local storage usage exceeds the total limit of containers 64Mi. ",
            "containerStatuses": [
                {"name": "phase", "state": {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}}
            ],
        }
    )
    (observed,) = observe([job()], [evicted])
    assert observed.reason == "Evicted"
    assert "exceeds the total limit of containers 64Mi" in observed.message
    assert EPHEMERAL_STORAGE_HINT in observed.message and "ephemeral-storage" in EPHEMERAL_STORAGE_HINT


def test_a_crashed_pod_keeps_its_exit_code_and_no_eviction() -> None:
    crashed = pod(
        {
            "phase": "Failed",
            "containerStatuses": [{"name": "phase", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}],
        }
    )
    (observed,) = observe([job()], [crashed])
    assert observed.reason == "BackoffLimitExceeded" and "exit code 3" in observed.message
    assert "evicted" not in observed.message
