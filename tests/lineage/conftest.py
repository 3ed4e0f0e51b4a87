"""Fixtures of the lineage tests on the real API server: an async API client, a
minimal KServe InferenceService CRD, lineage manifests, the lineage handlers run
alone by Kopf, and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import kopf
import pytest
from kopf.testing import KopfRunner

from reverie.controller import lineage_handlers
from reverie.controller.kube import MODELLINEAGES, Kube, Obj

T = TypeVar("T")

ISVC_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "inferenceservices.serving.kserve.io"},
    "spec": {
        "group": "serving.kserve.io",
        "scope": "Namespaced",
        "names": {
            "plural": "inferenceservices",
            "singular": "inferenceservice",
            "kind": "InferenceService",
            "shortNames": ["isvc"],
        },
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                "subresources": {"status": {}},
            }
        ],
    },
}


@pytest.fixture(scope="session")
def inference_service_crd(cluster: Any) -> str:
    """A minimal KServe InferenceService CRD (schema: preserve unknown fields), Established."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(ISVC_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/inferenceservices.serving.kserve.io", "--timeout=30s")
    return "inferenceservices.serving.kserve.io"


@pytest.fixture
async def api(cluster: Any) -> AsyncIterator[Kube]:
    client = Kube.from_kubeconfig(str(cluster.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


def lineage_manifest(name: str, namespace: str, **spec: Any) -> Obj:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"baseModel": {"uri": "builtin:tiny"}, "store": {"uri": "file:///store"}, **spec},
    }


def cycle_template(lineage: str) -> Obj:
    return {
        "lineageRef": lineage,
        "memory": {"sources": [{"inline": ["The capital of Zorbia is Quellton."]}]},
        "dreaming": {"enabled": True},  # the three-step cycle (dreaming is off by default)
        "evaluation": {"gate": {"rules": ["knowledge_incorporation >= 0.5"]}},
    }


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy (no fixed sleeps in assertions)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last probe: {last!r}")


async def lineage_status(api: Kube, namespace: str, name: str) -> dict[str, Any]:
    return (await api.get(MODELLINEAGES, namespace, name)).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


@contextlib.contextmanager
def lineage_operator(
    cluster: Any, namespace: str, monkeypatch: pytest.MonkeyPatch, *, interval: float = 0.5
) -> Iterator[KopfRunner]:
    """The ModelLineage handlers alone (fresh registry), standalone, watching one namespace."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    registry = kopf.OperatorRegistry()
    lineage_handlers.register(registry, interval=interval)
    # A fresh registry has no login handler; authenticate from KUBECONFIG like the default one.
    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
    settings = kopf.OperatorSettings()
    settings.posting.level = 40  # ERROR: keep Kopf's own per-handler Events out of the way
    settings.watching.server_timeout = 10
    args = ["run", "--standalone", "--namespace", namespace]
    with KopfRunner(args, registry=registry, settings=settings, timeout=30) as runner:
        yield runner
    assert runner.exception is None, runner.output


async def finish_export(api: Kube, namespace: str, name: str, *, ok: bool = True, message: str = "") -> Obj:
    """Play the Job controller for an export Job: wait for it, then mark it Complete (or Failed)."""
    from reverie.controller.kube import JOBS

    job = await eventually(lambda: api.get_or_none(JOBS, namespace, name), what=f"export Job {name}")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if ok:
        conditions = [
            {
                "type": t,
                "status": "True",
                "reason": "CompletionsReached",
                "message": message,
                "lastTransitionTime": now,
                "lastProbeTime": now,
            }
            for t in ("SuccessCriteriaMet", "Complete")
        ]
        body = {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "conditions": conditions}
    else:
        conditions = [
            {
                "type": t,
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": message,
                "lastTransitionTime": now,
                "lastProbeTime": now,
            }
            for t in ("FailureTarget", "Failed")
        ]
        body = {"startTime": now, "failed": 1, "active": 0, "conditions": conditions}
    await api.merge_patch(JOBS, namespace, name, {"status": body}, subresource="status")
    return job
