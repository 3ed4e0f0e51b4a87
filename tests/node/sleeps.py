"""What the node tests apply and read: examples/smoke's lineage and cycle on a cluster (the
store on a PVC or MinIO, the images built here), and the waits and diagnostics around them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tests.node.cluster import IMAGES, NodeCluster
from tests.node.conftest import wait_for

TRAINER = IMAGES["trainer"]
LINEAGE = "smoke"
SMOKE = Path(__file__).resolve().parents[2] / "examples" / "smoke"
REVERIE = Path(sys.executable).parent / "reverie"
CYCLE_TIMEOUT_S = 900.0


def apply(node: NodeCluster, namespace: str, *objects: dict[str, Any]) -> None:
    node.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def get(node: NodeCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(node.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))


def lineage_manifest(store: dict[str, Any], base_uri: str, known_memories: str) -> dict[str, Any]:
    """examples/smoke's lineage on the cluster: the tiny world's base model and what it was pretrained on
    (replayed and scored by retention, as `reverie sleep` does) in the store, a ConfigMap as the serving target."""
    lineage = yaml.safe_load((SMOKE / "lineage.yaml").read_text())
    assert lineage["metadata"]["name"] == LINEAGE
    lineage["spec"].update(
        baseModel={"uri": base_uri, "knownMemories": [known_memories]},
        store=store,
        servingTarget={"kind": "ConfigMap", "name": "serving", "key": "model", "export": {"image": TRAINER}},
    )
    return dict(lineage)


def cycle_manifest(
    name: str, memories: str, *, gate: tuple[str, ...] | None = None, **consolidation: Any
) -> dict[str, Any]:
    """examples/smoke's cycle (its sizes, dreaming on) on the cluster: its memories in the store, the images built here."""
    cycle = yaml.safe_load((SMOKE / "sleepcycle.yaml").read_text())
    spec = cycle["spec"]
    cycle["metadata"] = {"name": name}
    spec["lineageRef"] = LINEAGE
    spec["images"] = {"trainer": TRAINER, "dreamer": TRAINER}
    spec["memory"] = {"sources": [{"uri": memories}]}
    spec["consolidation"].update(consolidation)
    if gate is not None:
        spec["evaluation"]["gate"]["rules"] = list(gate)
    return dict(cycle)


def serving_config_map() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "serving"}, "data": {"model": ""}}


def wait_for_phase(
    node: NodeCluster, namespace: str, cycle: str, *phases: str, timeout: float = CYCLE_TIMEOUT_S
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        obj = get(node, namespace, "sleepcycle", cycle)
        return obj if obj.get("status", {}).get("phase") in phases else None

    try:
        return wait_for(reached, what=f"SleepCycle {cycle} to reach {'/'.join(phases)}", timeout=timeout, every=3)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{diagnose(node, namespace)}") from None


def diagnose(node: NodeCluster, namespace: str) -> str:
    """What a failing node test prints: the cycle, pods, events, the operator's and the phases' logs."""
    parts = []
    for args in (
        ("get", "sleepcycle,mlin,jobs,pods", "-n", namespace, "-o", "wide"),
        ("get", "sleepcycle", "-n", namespace, "-o", "yaml"),
        ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
        ("logs", "-n", "reverie-system", "deploy/reverie-operator", "--tail=60"),
    ):
        done = node.kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{done.stdout[-6000:]}{done.stderr[-2000:]}")
    pods = json.loads(node.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False).stdout or '{"items": []}')
    for pod in pods["items"]:
        name = pod["metadata"]["name"]
        done = node.kubectl("logs", "-n", namespace, name, "--tail=30", check=False)
        parts.append(f"$ kubectl logs {name}\n{done.stdout[-3000:]}{done.stderr[-1000:]}")
    return "\n".join(parts)


def reverie(node: NodeCluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(REVERIE), *args],
        capture_output=True,
        text=True,
        env={**node.env(), "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})},
        timeout=300,
    )
    assert done.returncode == 0, f"reverie {' '.join(args)}: {done.stderr}{done.stdout}"
    return done


def assert_sleep_ran_on_pods(node: NodeCluster, namespace: str, cycle: str, *, retried: bool = False) -> dict[str, Any]:
    """The cycle Succeeded through real pods of the trainer image, and the serving target follows the champion."""
    done = wait_for_phase(node, namespace, cycle, "Succeeded", "Failed", "Rejected")
    assert done["status"]["phase"] == "Succeeded", diagnose(node, namespace)
    steps = [r["step"] for r in done["status"]["records"] if r["result"] == "Succeeded"]
    assert steps == ["consolidation", "dreaming", "evaluation"], done["status"]["records"]
    assert retried or len(done["status"]["records"]) == 3, done["status"]["records"]
    pods = json.loads(node.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    phase_pods = [p for p in pods if p["metadata"]["labels"].get("reverie.dev/cycle") == cycle]
    assert {p["metadata"]["labels"]["reverie.dev/step"] for p in phase_pods} >= {
        "consolidation",
        "dreaming",
        "evaluation",
    }
    for pod in phase_pods:
        # Started by the kubelet from the image built here, under the hardened spec, and ran to the end.
        assert pod["spec"]["nodeName"] == "reverie-node"
        (status,) = pod["status"]["containerStatuses"]
        assert status["image"].endswith(TRAINER.split("/", 1)[1]), status["image"]
        assert pod["spec"]["securityContext"]["runAsUser"] == 1000
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["automountServiceAccountToken"] is False
    lineage = get(node, namespace, "modellineage", LINEAGE)
    assert lineage["status"]["champion"] == done["status"]["generation"]

    def served() -> str | None:
        value = get(node, namespace, "configmap", "serving")["data"].get("model")
        return value if value and lineage["status"]["champion"] in value else None

    uri = wait_for(served, what="the serving ConfigMap to point at the champion's servable form", timeout=300, every=2)
    lineage = get(node, namespace, "modellineage", LINEAGE)
    assert lineage["status"]["servable"]["uri"] == uri, lineage["status"]
    export = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/name") == "reverie-export"]
    jobs = json.loads(node.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(j["metadata"]["labels"].get("app.kubernetes.io/name") == "reverie-export" for j in jobs) or export
    return lineage


def pvc_store(node: NodeCluster, namespace: str, storage_class: str, folder: Path) -> dict[str, Any]:
    """A PersistentVolume on this node's disk (uid 1000 owns it, as the phase pods run) and its claim."""
    folder.mkdir(parents=True, exist_ok=True)
    node.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"store-{namespace}"},
                "spec": {
                    "storageClassName": storage_class,
                    "capacity": {"storage": "5Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(folder), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": "store"},
                },
            }
        ),
    )
    apply(
        node,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "store"},
            "spec": {
                "storageClassName": storage_class,
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "5Gi"}},
            },
        },
    )
    return {"uri": "/store", "pvcName": "store"}
