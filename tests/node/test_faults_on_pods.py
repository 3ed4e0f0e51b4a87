"""Faults on real pods: a phase pod deleted mid-step, the operator's pod killed while a Job
runs, a phase that outgrows its /tmp.  Nothing is lost, no Job is started twice, and
a failure says why on the cycle."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.node.cluster import NodeCluster
from tests.node.conftest import Chart, wait_for
from tests.node.sleeps import (
    LINEAGE,
    apply,
    assert_sleep_ran_on_pods,
    cycle_manifest,
    diagnose,
    get,
    lineage_manifest,
    pvc_store,
    reverie,
    serving_config_map,
    wait_for_phase,
)

from reverie.local.bootstrap import ensure_tiny_world

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.slow]


@pytest.fixture
def pvc_lineage(node: NodeCluster, node_namespace: str, local_storage: str) -> Iterator[tuple[str, Path, Any]]:
    """The smoke lineage with its store on a PVC; yields (namespace, the volume's folder here, the tiny world)."""
    folder = Path("/var/tmp") / f"reverie-pv-{node_namespace}"
    store = pvc_store(node, node_namespace, local_storage, folder)
    world = ensure_tiny_world(folder, LINEAGE)
    for path in [folder, *folder.rglob("*")]:
        shutil.chown(path, 1000, 1000)
    apply(
        node,
        node_namespace,
        serving_config_map(),
        lineage_manifest(
            store,
            "/store/" + str(Path(world.base_uri).relative_to(folder)),
            "/store/" + str(Path(world.old_memories).relative_to(folder)),
        ),
    )
    try:
        yield node_namespace, folder, world
    finally:
        node.kubectl("delete", "namespace", node_namespace, "--wait=true", "--timeout=120s", check=False)
        node.kubectl("delete", "pv", f"store-{node_namespace}", "--ignore-not-found", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def pods_of(node: NodeCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(json.loads(node.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)["items"])


def job_uids(node: NodeCluster, namespace: str) -> dict[str, str]:
    jobs = json.loads(node.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    return {j["metadata"]["name"]: j["metadata"]["uid"] for j in jobs}


def test_a_sleep_on_a_pvc_survives_a_killed_operator_and_a_deleted_phase_pod(
    node: NodeCluster, chart: Chart, pvc_lineage: tuple[str, Path, Any]
) -> None:
    """The whole cycle on real pods with the store on a PVC, through two faults: the operator's pod
    killed while the consolidation Job runs (the new pod adopts the Job), then the phase pod deleted
    mid-step (the attempt fails, the retry resumes from the checkpoint)."""
    namespace, folder, world = pvc_lineage
    memories = "/store/" + str(Path(world.sessions[0]).relative_to(folder))
    # Far longer than the smoke cycle (the faults need a running step to interrupt: a tiny step takes
    # about 10 ms), at a learning rate that keeps the tiny model's old facts over so many steps, so the
    # smoke gate (retention) passes.
    cycle = cycle_manifest("night-1", memories, steps=2000, checkpointEvery=50, learningRate=0.001)
    apply(node, namespace, cycle)
    consolidation = "reverie.dev/job=night-1-consolidation-1"

    def checkpointed() -> list[Path]:
        running = [p for p in pods_of(node, namespace, consolidation) if p["status"].get("phase") == "Running"]
        return [p for p in folder.rglob("checkpoints/latest")] if running else []

    wait_for(checkpointed, what="the consolidation pod running with a checkpoint written", timeout=600, every=1)
    uids = job_uids(node, namespace)

    # The operator's pod dies while the Job runs: the Deployment's new pod adopts the Job, starts no other.
    old = chart.operator_pod(node)["metadata"]["name"]
    node.kubectl("delete", "pod", old, "-n", chart.namespace, "--grace-period=0", "--force")

    def new_operator() -> str | None:
        try:
            name = str(chart.operator_pod(node)["metadata"]["name"])
        except AssertionError:
            return None
        return name if name != old else None

    wait_for(new_operator, what="the operator's new pod", timeout=180)
    assert job_uids(node, namespace) == uids, "the new operator pod created or replaced a Job"
    (phase_pod,) = [p for p in pods_of(node, namespace, consolidation) if p["status"].get("phase") == "Running"]

    # The phase pod is deleted mid-step: that attempt fails, the retry resumes from its checkpoint.
    node.kubectl("delete", "pod", phase_pod["metadata"]["name"], "-n", namespace, "--wait=false")
    lineage = assert_sleep_ran_on_pods(node, namespace, "night-1", retried=True)
    done = get(node, namespace, "sleepcycle", "night-1")
    records = [(r["step"], r["attempt"], r["result"]) for r in done["status"]["records"]]
    assert records[:2] == [("consolidation", 1, "Failed"), ("consolidation", 2, "Succeeded")], records
    config = json.loads(next(iter(get(node, namespace, "configmap", "night-1-consolidation-2")["data"].values())))
    assert config.get("resumeFrom"), config
    logs = node.kubectl("logs", "-n", namespace, "job/night-1-consolidation-2").stdout
    assert "resumed" in logs, logs[-3000:]
    # No Job was ever created twice: every name kept the uid it was first seen with.
    for name, uid in uids.items():
        assert job_uids(node, namespace).get(name, uid) == uid
    # The servable form is a plain folder on the volume, written by the export pod.
    served = lineage["status"]["servable"]["uri"]
    assert (folder / Path(served).relative_to("/store") / "config.json").is_file()
    status = reverie(node, "status", "-n", namespace).stdout
    assert "night-1" in status and "Succeeded" in status, status
    logs = reverie(node, "logs", "night-1", "--phase", "consolidation", "-n", namespace).stdout
    assert "night-1-consolidation-2" in logs, logs


def test_a_phase_that_outgrows_its_tmp_fails_with_the_reason_and_nothing_is_promoted(
    node: NodeCluster, chart: Chart, pvc_lineage: tuple[str, Path, Any]
) -> None:
    namespace, folder, world = pvc_lineage
    memories = "/store/" + str(Path(world.sessions[0]).relative_to(folder))
    # Steps enough to outlast the kubelet's next look at the pod's disk use (volumeStatsAggPeriod).
    cycle = cycle_manifest(
        "night-1",
        memories,
        steps=5000,
        checkpointEvery=1000,
        runtime={"resources": {"limits": {"ephemeral-storage": "64Mi"}}},
    )
    cycle["spec"]["retries"] = {"maxAttempts": 1}
    apply(node, namespace, cycle)

    def running() -> list[dict[str, Any]]:
        pods = pods_of(node, namespace, "reverie.dev/job=night-1-consolidation-1")
        return [p for p in pods if p["status"].get("phase") == "Running"]

    (pod,) = wait_for(running, what="the consolidation pod running", timeout=300)
    # Something in the phase writes past the limit into /tmp (the emptyDir every phase pod has).
    node.kubectl(
        "exec",
        "-n",
        namespace,
        pod["metadata"]["name"],
        "--",
        "python3",
        "-c",
        "open('/tmp/filler', 'wb').write(b'0' * (96 << 20))",
        check=False,
        timeout=120,
    )
    done = wait_for_phase(node, namespace, "night-1", "Succeeded", "Failed", "Rejected", timeout=300)
    assert done["status"]["phase"] == "Failed", diagnose(node, namespace)
    assert "ephemeral-storage" in done["status"]["message"] or any(
        "ephemeral-storage" in r.get("message", "") for r in done["status"]["records"]
    ), done["status"]
    lineage = get(node, namespace, "modellineage", LINEAGE)
    assert lineage["status"]["champion"] == "gen-0", lineage["status"]
    # The serving target keeps following gen-0, the base.
    assert get(node, namespace, "configmap", "serving")["data"].get("model") in ("", lineage["status"]["championUri"])
