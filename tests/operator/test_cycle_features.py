"""Serialization per lineage, suspend/resume, deletion, TTL, approval, rendered Jobs, metrics — on the real API server."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

import pytest
from tests.operator.conftest import RunOperator, apply, cycle, lineage, wait
from tests.operator.jobsim import JobSim

from reverie import APPROVAL_ANNOTATION

pytestmark = pytest.mark.cluster


def kubectl_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def finish(sim: JobSim, name: str, steps: tuple[str, ...] = ("consolidation", "dreaming", "evaluation")) -> None:
    for step in steps:
        job = sim.wait_for_job(f"{name}-{step}-1")
        sim.succeed(job, sim.result_for(job))


def test_two_cycles_on_one_lineage_run_one_after_the_other(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle("a"))
    apply(cluster, namespace, cycle("b"))
    with run_operator():
        first = wait(
            lambda: next((j["metadata"]["labels"]["reverie.dev/cycle"] for j in sim.jobs()), None), what="a first Job"
        )
        second = "b" if first == "a" else "a"
        waiting = sim.wait_for_cycle(
            second,
            lambda o: any(
                c["type"] == "Ready" and c["reason"] == "WaitingForLineage"
                for c in (o.get("status") or {}).get("conditions", [])
            ),
            what="WaitingForLineage",
        )
        assert waiting["status"]["phase"] == "Pending" and first in waiting["status"]["message"]
        finish(sim, first)
        sim.wait_for_phase(first, "Succeeded")
        finish(sim, second)
        done = sim.wait_for_phase(second, "Succeeded")
    # the second cycle trained from the first one's generation, never beside it
    assert done["status"]["baseGeneration"] == "gen-1" and done["status"]["generation"] == "gen-2"
    starts = {c: sim.cycle(c)["status"]["startTime"] for c in ("a", "b")}
    assert starts[second] >= sim.cycle(first)["status"]["completionTime"]


def test_suspend_deletes_the_running_job_and_resume_continues_from_its_checkpoint(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle(retries={"maxAttempts": 1}))
    with run_operator():
        sim.wait_for_job("c1-consolidation-1")
        cluster.kubectl("patch", "sleepcycle", "c1", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        suspended = sim.wait_for_phase("c1", "Suspended")
        wait(lambda: not any(j["metadata"]["name"] == "c1-consolidation-1" for j in sim.jobs()), what="Job deleted")
        assert any(c["type"] == "Suspended" and c["status"] == "True" for c in suspended["status"]["conditions"])
        cluster.kubectl(
            "patch", "sleepcycle", "c1", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
        )
        resumed = sim.wait_for_job("c1-consolidation-2")
        assert sim.config_of(resumed)["resumeFrom"] == "file:///store/lin/c1/consolidation/checkpoints"
        sim.succeed(resumed, sim.result_for(resumed))
        finish(sim, "c1", ("dreaming", "evaluation"))
        done = sim.wait_for_phase("c1", "Succeeded")  # maxAttempts 1: the suspension did not spend it
    assert done["status"]["records"][0]["reason"] == "Suspended"


def test_deleting_a_cycle_removes_its_children_and_frees_the_lineage(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle("c1"))
    with run_operator():
        job = sim.wait_for_job("c1-consolidation-1")
        sim.start(job)
        sim._pod(job, 0)
        cluster.kubectl("delete", "sleepcycle", "c1", "-n", namespace, "--wait=true", "--timeout=30s")
        # the garbage collector follows the owner references: Job, ConfigMap, then the Job's pod
        for kind in ("jobs", "configmaps", "pods"):
            wait(
                lambda kind=kind: (
                    not kubectl_json(cluster, "get", kind, "-n", namespace, "-l", "reverie.dev/cycle=c1")["items"]
                ),
                what=f"{kind} of c1 deleted",
            )
        # the lineage (and every artifact it names) stays; a new cycle may take it
        apply(cluster, namespace, cycle("c2"))
        sim.wait_for_job("c2-consolidation-1")
    assert kubectl_json(cluster, "get", "modellineage", "lin", "-n", namespace)["status"]["activeCycle"] == "c2"


def test_ttl_deletes_a_finished_cycle(cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator) -> None:
    apply(cluster, namespace, lineage())
    apply(
        cluster,
        namespace,
        cycle(
            ttlSecondsAfterFinished=1,
            dreaming={"enabled": False},
            evaluation={"gate": {"rules": ["knowledge_incorporation >= 0.99"]}},
        ),
    )
    with run_operator():
        finish(sim, "c1", ("consolidation", "evaluation"))
        sim.wait_for_cycle("c1", lambda o: not o, what="deletion after ttlSecondsAfterFinished")
    gens = kubectl_json(cluster, "get", "modellineage", "lin", "-n", namespace)["status"]["generations"]
    assert [(g["name"], g["state"]) for g in gens if g.get("cycle") == "c1"] == [("gen-1", "Rejected")]


def test_manual_promotion_waits_for_the_approval_annotation(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle(promotion={"policy": "manual"}, dreaming={"enabled": False}))
    with run_operator():
        finish(sim, "c1", ("consolidation", "evaluation"))
        waiting = sim.wait_for_phase("c1", "AwaitingApproval")
        assert APPROVAL_ANNOTATION in waiting["status"]["message"]
        cluster.kubectl("annotate", "sleepcycle", "c1", "-n", namespace, f"{APPROVAL_ANNOTATION}=approved")
        done = sim.wait_for_phase("c1", "Succeeded")
    assert done["status"]["generation"] == "gen-1"
    assert kubectl_json(cluster, "get", "modellineage", "lin", "-n", namespace)["status"]["champion"] == "gen-1"


def test_phase_jobs_are_rendered_hardened_owned_and_labelled(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": "training"},
                "value": 1000,
            }
        ),
    )
    apply(
        cluster,
        namespace,
        lineage(
            store={
                "uri": "/store/models",
                "pvcName": "models",
                "secretName": "s3-creds",
                "endpoint": "http://minio.minio:9000",
                "stagingCache": {"hostPath": "/var/cache/reverie", "maxSize": "20Gi"},
            }
        ),
    )
    apply(
        cluster,
        namespace,
        cycle(
            memory={
                "sources": [
                    {"inline": ["The sky on Zorblax is green."]},
                    {"configMap": {"name": "support-chats", "key": "week-47.jsonl"}},
                ]
            },
            scheduling={
                "queueName": "gpu-queue",
                "priorityClassName": "training",
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            consolidation={
                "runtime": {
                    "numNodes": 2,
                    "procsPerNode": 4,
                    "activeDeadlineSeconds": 3600,
                    "resources": {"limits": {"nvidia.com/gpu": "4"}},
                }
            },
            dreaming={"enabled": True, "runtime": {"engine": "TrainJob"}},
        ),
    )
    with run_operator():
        job = sim.wait_for_job("c1-consolidation-1")
        uid = sim.cycle("c1")["metadata"]["uid"]
        spec, pod = job["spec"], job["spec"]["template"]["spec"]
        assert job["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "reverie.dev/v1alpha1",
                "kind": "SleepCycle",
                "name": "c1",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = job["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert {labels[f"reverie.dev/{k}"] for k in ("cycle", "lineage", "step", "attempt")} == {
            "c1",
            "lin",
            "consolidation",
            "1",
        }
        assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 3600
        assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
        assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
        assert pod["priorityClassName"] == "training" and pod["nodeSelector"] == {"gpu": "a100"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["subdomain"] == "c1-consolidation-1"
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["command"] == [
            "torchrun",
            "--max-restarts",
            "0",
            "-m",
            "reverie.workloads.steps.run_step",
            "consolidation",
            "/etc/reverie/attempt.json",
        ]
        assert container["image"].startswith("ghcr.io/reverie-dev/reverie-trainer")
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["runAsNonRoot"]
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert {"/etc/reverie", "/tmp", "/store", "/dev/shm", "/etc/reverie-memory/support-chats"} <= set(mounts)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/etc/reverie-memory/support-chats"]]["configMap"]["name"] == "support-chats"
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio.minio:9000"
        assert env["REVERIE_STAGING_CACHE"]["value"] == "/var/cache/reverie-staging"
        assert env["REVERIE_STAGING_CACHE_MAX_BYTES"]["value"] == str(20 * 2**30)
        assert volumes[mounts["/var/cache/reverie-staging"]]["hostPath"] == {
            "path": "/var/cache/reverie",
            "type": "DirectoryOrCreate",
        }
        assert env["PET_MASTER_ADDR"]["value"] == "c1-consolidation-1-0.c1-consolidation-1"
        assert (env["PET_NNODES"]["value"], env["PET_NPROC_PER_NODE"]["value"], env["PET_MASTER_PORT"]["value"]) == (
            "2",
            "4",
            "29500",
        )
        assert (
            env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
        assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR"} & set(env), "torchrun sets those per worker"
        svc = kubectl_json(cluster, "get", "service", "c1-consolidation-1", "-n", namespace)
        assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["ownerReferences"][0]["uid"] == uid
        cm = kubectl_json(cluster, "get", "configmap", "c1-consolidation-1", "-n", namespace)
        assert json.loads(cm["data"]["attempt.json"])["outputUri"] == "/store/models/lin/c1/consolidation"
        # the dreaming phase asks for Kubeflow Trainer, which this cluster lacks: a clear permanent failure
        sim.succeed(job, sim.result_for(job))
        failed = sim.wait_for_phase("c1", "Failed")
    ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "EngineNotInstalled" and "trainjobs.trainer.kubeflow.org" in ready["message"]
    assert sorted(sim.created()) == ["c1-consolidation-1"]


def test_metrics_and_liveness_endpoints(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reverie.controller import health

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(health, "PORT", port)
    monkeypatch.setattr(health, "HOST", "127.0.0.1")
    apply(cluster, namespace, lineage())
    apply(cluster, namespace, cycle(dreaming={"enabled": False}))
    with run_operator():
        finish(sim, "c1", ("consolidation", "evaluation"))
        sim.wait_for_phase("c1", "Succeeded")
        health_body = wait(lambda: _get(f"http://127.0.0.1:{port}/healthz"), what="healthz")
        # the counters move right after the status write the test saw: poll, do not race
        done_line = f'reverie_cycles_total{{lineage="lin",namespace="{namespace}",outcome="Succeeded"}} 1.0'
        text = wait(lambda: (t := _get(f"http://127.0.0.1:{port}/metrics")) and done_line in t and t, what=done_line)
    assert json.loads(health_body) == {"status": "ok"}
    assert 'reverie_phase_attempts_total{step="consolidation"}' in text
    assert 'reverie_reconcile_total{controller="sleepcycle",result="success"}' in text
    assert 'reverie_phase_duration_seconds_count{result="Succeeded",step="evaluation"}' in text
    # What the sleep cost, from the consolidation's result.
    assert f'reverie_sleep_stage_seconds{{lineage="lin",namespace="{namespace}",stage="training"}} 420.0' in text
    assert f'reverie_sleep_replay_items{{lineage="lin",namespace="{namespace}"}} 96.0' in text


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


JOBSET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "jobsets.jobset.x-k8s.io"},
    "spec": {
        "group": "jobset.x-k8s.io",
        "scope": "Namespaced",
        "names": {"plural": "jobsets", "singular": "jobset", "kind": "JobSet", "listKind": "JobSetList"},
        # A stand-in for the real JobSet CRD: same group/version/kind, schema left open.
        "versions": [
            {
                "name": "v1alpha2",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def test_jobset_engine_creates_a_jobset_and_reads_its_result(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(JOBSET_CRD))
    cluster.kubectl("wait", "--for", "condition=Established", "--timeout", "30s", "crd/jobsets.jobset.x-k8s.io")
    apply(cluster, namespace, lineage())
    apply(
        cluster,
        namespace,
        cycle(
            dreaming={"enabled": False},
            retries={"maxAttempts": 1},
            consolidation={"runtime": {"engine": "JobSet", "numNodes": 2}},
        ),
    )
    with run_operator():
        js = wait(lambda: kubectl_json(cluster, "get", "jobsets", "-n", namespace)["items"], what="a JobSet")[0]
        assert js["metadata"]["name"] == "c1-consolidation-1" and js["metadata"]["ownerReferences"][0]["name"] == "c1"
        (rjob,) = js["spec"]["replicatedJobs"]
        job_spec = rjob["template"]["spec"]
        assert (job_spec["completionMode"], job_spec["completions"], job_spec["backoffLimit"]) == ("Indexed", 2, 0)
        env = {e["name"]: e.get("value") for e in job_spec["template"]["spec"]["containers"][0]["env"]}
        assert env["PET_MASTER_ADDR"] == "c1-consolidation-1-node-0-0.c1-consolidation-1" and env["PET_NNODES"] == "2"
        # play JobSet + kubelet: the leader pod's termination message, then the JobSet's Completed condition
        fake_job = {"metadata": {"name": "c1-consolidation-1", "uid": js["metadata"]["uid"]}, "spec": job_spec}
        config = sim.config_of({"spec": job_spec})
        pod = sim._pod(
            fake_job,
            0,
            owner={
                "apiVersion": "jobset.x-k8s.io/v1alpha2",
                "kind": "JobSet",
                "name": "c1-consolidation-1",
                "uid": js["metadata"]["uid"],
                "controller": True,
            },
        )
        sim._terminate(
            pod,
            exit_code=0,
            reason="Completed",
            message=json.dumps(
                {"step": "consolidation", "status": "Succeeded", "outputUri": f"{config['outputUri']}/model"}
            ),
        )
        cluster.kubectl(
            "patch",
            "jobset",
            "c1-consolidation-1",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "status": {
                        "conditions": [
                            {
                                "type": "Completed",
                                "status": "True",
                                "reason": "AllJobsCompleted",
                                "message": "jobset completed",
                                "lastTransitionTime": "2026-11-25T00:00:00Z",
                            }
                        ]
                    }
                }
            ),
        )
        job = sim.wait_for_job("c1-evaluation-1")  # evaluation runs as a plain Job
        # The status write and the Job create go out together: wait for the record, not just the Job.
        records = sim.wait_for_cycle(
            "c1",
            lambda o: ((o.get("status") or {}).get("records") or [{}])[0].get("result") == "Succeeded",
            what="the consolidation record Succeeded",
        )["status"]["records"]
    assert records[0]["result"] == "Succeeded" and records[0]["outputUri"].endswith("/consolidation/model")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][2] == "evaluation"
