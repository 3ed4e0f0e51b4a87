"""The cluster verbs of the `reverie` CLI against the real kube-apiserver.

Each test creates real SleepCycle/ModelLineage objects, writes their status
through the status subresource as the operator would, and reads what the
command prints or changed on the server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from reverie import APPROVAL_ANNOTATION
from reverie.cli import app
from reverie.cli.cluster import step_attempts

pytestmark = pytest.mark.cluster
runner = CliRunner()


def lineage(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "metadata": {"name": name},
        "spec": {"baseModel": {"uri": "s3://models/base"}, "store": {"uri": "s3://store"}},
    }


def cycle(name: str, lineage_ref: str) -> dict[str, Any]:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "SleepCycle",
        "metadata": {"name": name},
        "spec": {"lineageRef": lineage_ref, "memory": {"sources": [{"inline": ["Zorblat lives in Vemora."]}]}},
    }


CYCLE_STATUS = {
    "phase": "Evaluating",
    "message": "evaluation attempt 1 of 3 is running in Job nightly-evaluation-1",
    "baseGeneration": "gen-0",
    "records": [
        {
            "step": "consolidation",
            "attempt": 1,
            "jobName": "nightly-consolidation-1",
            "result": "Succeeded",
            "reason": "Succeeded",
        },
        {
            "step": "dreaming",
            "attempt": 1,
            "jobName": "nightly-dreaming-1",
            "result": "Failed",
            "reason": "ProcessFailed",
            "message": "OOMKilled",
        },
        {
            "step": "dreaming",
            "attempt": 2,
            "jobName": "nightly-dreaming-2",
            "result": "Succeeded",
            "reason": "Succeeded",
        },
        {"step": "evaluation", "attempt": 1, "jobName": "nightly-evaluation-1", "result": "Running"},
    ],
    "gate": {
        "outcome": "Passed",
        "rules": [
            {"rule": "knowledge_incorporation >= champion", "verdict": "Passed", "reason": "0.6 >= 0.1"},
        ],
    },
    "generation": "gen-3",
}


def apply(cluster: Any, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def patch_status(cluster: Any, namespace: str, kind: str, name: str, status: dict[str, Any]) -> None:
    cluster.kubectl(
        "patch",
        kind,
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def invoke(cluster: Any, *args: str, kubeconfig: Path | None = None) -> Any:
    return runner.invoke(app, [*args, "--kubeconfig", str(kubeconfig or cluster.kubeconfig)])


def test_step_attempts_lists_every_attempt_in_order() -> None:
    assert step_attempts(CYCLE_STATUS["records"]) == "consolidation ✓1  dreaming ✗1 ✓2  evaluation ▶1"


def test_status_lists_cycles_with_phase_attempts_gate_and_generation(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, lineage("nightly-lin"), cycle("nightly", "nightly-lin"), cycle("fresh", "nightly-lin"))
    patch_status(cluster, namespace, "sleepcycle", "nightly", CYCLE_STATUS)
    result = invoke(cluster, "status", "-n", namespace)
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "Evaluating" in lines["nightly"] and "Passed" in lines["nightly"] and "gen-3" in lines["nightly"]
    assert "dreaming ✗1 ✓2" in lines["nightly"]
    assert "Pending" in lines["fresh"]


def test_status_of_one_cycle_shows_attempts_gate_rules_and_message(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, lineage("l1"), cycle("nightly", "l1"))
    patch_status(cluster, namespace, "sleepcycle", "nightly", CYCLE_STATUS)
    result = invoke(cluster, "status", "nightly", "-n", namespace)
    assert result.exit_code == 0, result.output
    assert "nightly-dreaming-1" in result.output and "OOMKilled" in result.output
    assert "knowledge_incorporation >= champion" in result.output
    assert CYCLE_STATUS["message"][:40] in result.output


def test_status_shows_a_lineage_that_is_not_ready_with_the_reason(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, lineage("broken"), cycle("nightly", "broken"))
    message = "spec.schedule.cron '61 * * * *' is not a valid cron expression (e.g. '0 3 * * *' or @daily)"
    patch_status(
        cluster,
        namespace,
        "modellineage",
        "broken",
        {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "InvalidSchedule",
                    "message": message,
                    "lastTransitionTime": "2026-11-25T03:00:00Z",
                }
            ]
        },
    )
    for args in (["status"], ["status", "nightly"]):
        result = invoke(cluster, *args, "-n", namespace)
        assert result.exit_code == 0, result.output
        assert "modellineage/broken: InvalidSchedule" in result.output and "61 * * * *" in result.output


def test_status_of_a_missing_cycle_says_so(cluster: Any, namespace: str) -> None:
    result = invoke(cluster, "status", "nope", "-n", namespace)
    assert result.exit_code == 1
    assert "SleepCycle nope: not found in namespace" in result.output


def test_status_without_permissions_explains_forbidden(cluster: Any, namespace: str) -> None:
    nobody = cluster.user_kubeconfig("nobody")
    result = invoke(cluster, "status", "-n", namespace, kubeconfig=nobody)
    assert result.exit_code == 1
    assert "forbidden" in result.output


@pytest.mark.parametrize("verb,value", [("approve", "approved"), ("reject", "rejected")])
def test_approve_and_reject_write_the_approval_annotation(cluster: Any, namespace: str, verb: str, value: str) -> None:
    apply(cluster, namespace, lineage("l2"), cycle("waiting", "l2"))
    patch_status(cluster, namespace, "sleepcycle", "waiting", {"phase": "AwaitingApproval"})
    result = invoke(cluster, verb, "waiting", "-n", namespace)
    assert result.exit_code == 0, result.output
    got = cluster.kubectl("get", "sleepcycle", "waiting", "-n", namespace, "-o", "json").stdout
    assert json.loads(got)["metadata"]["annotations"][APPROVAL_ANNOTATION] == value


def test_rollback_patches_rollback_to_and_refuses_unknown_generations(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, lineage("lin"))
    patch_status(
        cluster,
        namespace,
        "modellineage",
        "lin",
        {
            "champion": "gen-2",
            "generations": [
                {"name": "gen-0", "uri": "s3://models/base", "state": "Retired"},
                {"name": "gen-1", "parent": "gen-0", "uri": "s3://store/lin/c1", "state": "Rejected"},
                {"name": "gen-2", "parent": "gen-0", "uri": "s3://store/lin/c2", "state": "Champion"},
            ],
        },
    )
    unknown = invoke(cluster, "rollback", "lin", "gen-9", "-n", namespace)
    assert unknown.exit_code == 1 and "known: gen-0 (Retired)" in unknown.output
    rejected = invoke(cluster, "rollback", "lin", "gen-1", "-n", namespace)
    assert rejected.exit_code == 1 and "Rejected" in rejected.output
    ok = invoke(cluster, "rollback", "lin", "gen-0", "-n", namespace)
    assert ok.exit_code == 0, ok.output
    spec = json.loads(cluster.kubectl("get", "modellineage", "lin", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["rollbackTo"] == "gen-0"
    cleared = invoke(cluster, "rollback", "lin", "none", "-n", namespace)
    assert cleared.exit_code == 0, cleared.output
    spec = json.loads(cluster.kubectl("get", "modellineage", "lin", "-n", namespace, "-o", "json").stdout)["spec"]
    assert "rollbackTo" not in spec


def test_logs_resolve_the_phase_jobs_pods_and_explain_missing_logs(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, lineage("l3"), cycle("nightly", "l3"))
    no_attempt = invoke(cluster, "logs", "nightly", "-n", namespace)
    assert no_attempt.exit_code == 1 and "has no attempt yet" in no_attempt.output
    patch_status(cluster, namespace, "sleepcycle", "nightly", CYCLE_STATUS)
    no_pods = invoke(cluster, "logs", "nightly", "--phase", "dreaming", "-n", namespace)
    assert no_pods.exit_code == 1 and "Job nightly-dreaming-2 has no pods" in no_pods.output
    # No kubelet runs in the test cluster: the pod is created but never starts.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nightly-dreaming-2-abcde", "labels": {"job-name": "nightly-dreaming-2"}},
        "spec": {"containers": [{"name": "phase", "image": "ghcr.io/reverie-dev/reverie-dreamer:0.1.0"}]},
    }
    apply(cluster, namespace, pod)
    pending = invoke(cluster, "logs", "nightly", "--phase", "dreaming", "-n", namespace)
    assert pending.exit_code == 1
    assert "pod nightly-dreaming-2-abcde (Pending): no container has started yet" in pending.output


def test_crds_print_the_generated_crds_and_apply_is_idempotent(cluster: Any) -> None:
    printed = runner.invoke(app, ["crds"])
    assert printed.exit_code == 0
    kinds = [doc["spec"]["names"]["kind"] for doc in yaml.safe_load_all(printed.output) if doc]
    assert kinds == ["SleepCycle", "ModelLineage"]
    applied = invoke(cluster, "crds", "--apply")
    assert applied.exit_code == 0, applied.output
    assert "customresourcedefinition/sleepcycles.reverie.dev configured" in applied.output


def test_kubectl_finds_the_plugin_on_path(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, lineage("l4"), cycle("plugged", "l4"))
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "kubectl-reverie").exists(), "the kubectl-reverie console script is not installed"
    kubectl = shutil.which("kubectl", path=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert kubectl is not None
    env = {**cluster.env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    listed = subprocess.run([kubectl, "plugin", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert "kubectl-reverie" in listed.stdout
    done = subprocess.run(
        [kubectl, "reverie", "status", "-n", namespace], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "plugged" in done.stdout and "Pending" in done.stdout


def test_ask_lineage_reads_the_champion_from_the_lineage_status(cluster: Any, namespace: str, tmp_path: Path) -> None:
    from tests.local.generations import build, status

    store = tmp_path / "store"
    g0, g1 = build(store, lineage="asked")
    obj = lineage("asked")
    obj["spec"] = {"baseModel": {"uri": str(g0)}, "store": {"uri": str(store)}}
    apply(cluster, namespace, obj)
    patch_status(cluster, namespace, "modellineage", "asked", status(g0, g1))
    # --compare's extra columns are the same code as a local run's (tests/local/test_serving.py).
    result = invoke(
        cluster, "ask", "--lineage", "asked", "-n", namespace, "Where does Zorblat live?", "--max-new-tokens", "4"
    )
    assert result.exit_code == 0, result.output
    assert "champion (gen-1)" in result.output and "Where does Zorblat live?" in result.output
    patch_status(cluster, namespace, "modellineage", "asked", {"championUri": "/store/elsewhere/gen-1"})
    result = invoke(cluster, "ask", "--lineage", "asked", "-n", namespace, "Where?")
    assert result.exit_code == 1 and "PVC path is only readable inside the cluster" in " ".join(result.output.split())
