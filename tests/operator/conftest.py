"""Fixtures of the operator tests: the operator in-process (KopfRunner), the Job simulator, objects."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Fast loops in tests: the resync backstop and the lineage timer (read at import).
os.environ.setdefault("REVERIE_LINEAGE_INTERVAL_S", "2")

from tests.operator.jobsim import JobSim

RunOperator = Callable[[], contextlib.AbstractContextManager[Any]]


@pytest.fixture
def sim(cluster: Any, namespace: str) -> JobSim:
    return JobSim(cluster.api_client(), namespace)


@pytest.fixture
def run_operator(cluster: Any, namespace: str, monkeypatch: pytest.MonkeyPatch) -> RunOperator:
    """A context manager running the whole operator (SleepCycle + ModelLineage handlers) for ``namespace``.

    Entering it again after leaving it is an operator restart: a new Kopf run,
    a fresh reconciler, nothing remembered but what is in the API server.
    """
    from kopf.testing import KopfRunner

    from reverie.controller import cycle_handlers

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setattr(cycle_handlers.OPTIONS, "kubeconfig", str(cluster.kubeconfig))
    monkeypatch.setattr(cycle_handlers.OPTIONS, "resync_seconds", 2.0)

    @contextlib.contextmanager
    def running() -> Iterator[Any]:
        args = ["run", "--standalone", "--namespace", namespace, "-m", "reverie.controller.main"]
        with KopfRunner(args, timeout=30) as runner:
            yield runner
        assert runner.exception is None, runner.output[-4000:]

    return running


def apply(cluster: Any, namespace: str, body: dict[str, Any]) -> None:
    import json

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def lineage(name: str = "lin", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"baseModel": {"uri": "builtin:tiny"}, "store": {"uri": "file:///store"}}
    body.update(spec)
    return {"apiVersion": "reverie.dev/v1alpha1", "kind": "ModelLineage", "metadata": {"name": name}, "spec": body}


def cycle(name: str = "c1", *, lineage_ref: str = "lin", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "lineageRef": lineage_ref,
        "memory": {"sources": [{"inline": ["The sky on Zorblax is green."]}]},
        "dreaming": {"enabled": True},  # the three-step cycle (dreaming is off by default)
        "retries": {"maxAttempts": 2, "backoffSeconds": 1, "backoffMultiplier": 1.0, "maxBackoffSeconds": 1},
        "evaluation": {"gate": {"rules": ["knowledge_incorporation >= 0.5", "retention >= champion - 0.05"]}},
    }
    body.update(spec)
    return {"apiVersion": "reverie.dev/v1alpha1", "kind": "SleepCycle", "metadata": {"name": name}, "spec": body}


def wait(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s")
