"""A stand-in for the Job controller and kubelet, driven by the test.

The test cluster runs no Job controller and no nodes, so a test plays them:
:meth:`JobSim.succeed` creates the Job's pod (from the Job's own pod template,
owned by the Job, with the completion-index annotation) and writes the pod
status a kubelet would write — the ``phase`` container terminated, with the
phase result as its termination message — then marks the Job Complete as the
Job controller would.  :meth:`JobSim.fail` does the same with a non-zero exit
and a Failed Job.  The operator under test reads exactly these fields
(``status.containerStatuses[].state.terminated.message`` and the Job's
conditions), so this is the real mechanism with a scripted workload.

It also audits Job creations: :meth:`JobSim.created` lists every Job (name,
uid) it has ever seen in the namespace, so a test can prove no Job was
created twice.

Usage::

    sim = JobSim(cluster.api_client(), namespace)
    job = sim.wait_for_job("c1-consolidation-1")
    sim.succeed(job, sim.result_for(job))
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class JobSim:
    """Plays the Job controller for the Jobs of one namespace."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._seen: dict[str, set[str]] = {}

    # --- reading -------------------------------------------------------------
    def jobs(self, selector: str = "reverie.dev/cycle") -> list[Obj]:
        items = self.api.sanitize_for_serialization(
            self.batch.list_namespaced_job(self.namespace, label_selector=selector).items
        )
        for job in items:
            self._seen.setdefault(job["metadata"]["name"], set()).add(job["metadata"]["uid"])
        return list(items)

    def created(self) -> dict[str, set[str]]:
        """Every Job name seen so far with the uids it had (more than one uid = created twice)."""
        self.jobs()
        return {k: set(v) for k, v in self._seen.items()}

    def wait_for_job(self, name: str, *, timeout: float = 30.0) -> Obj:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for job in self.jobs():
                if job["metadata"]["name"] == name:
                    return job
            time.sleep(0.1)
        raise AssertionError(f"Job {name} was not created within {timeout}s; jobs: {sorted(self._seen)}")

    def config_of(self, job: Obj) -> Obj:
        """The AttemptConfig the operator mounted into the Job (from its ConfigMap)."""
        volumes = job["spec"]["template"]["spec"]["volumes"]
        cm_name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
        cm = self.core.read_namespaced_config_map(cm_name, self.namespace)
        return dict(json.loads(cm.data["attempt.json"]))

    def cycle(self, name: str) -> Obj:
        return dict(
            self.custom.get_namespaced_custom_object("reverie.dev", "v1alpha1", self.namespace, "sleepcycles", name)
        )

    def wait_for_cycle(self, name: str, predicate: Any, *, timeout: float = 30.0, what: str = "condition") -> Obj:
        deadline = time.monotonic() + timeout
        last: Obj = {}
        while time.monotonic() < deadline:
            try:
                last = self.cycle(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                last = {}
            if predicate(last):
                return last
            time.sleep(0.1)
        raise AssertionError(
            f"SleepCycle {name}: {what} not reached in {timeout}s; last status: "
            f"{json.dumps(last.get('status'), indent=1)[:3000]}"
        )

    def wait_for_phase(self, name: str, phase: str, *, timeout: float = 30.0) -> Obj:
        return self.wait_for_cycle(
            name, lambda o: (o.get("status") or {}).get("phase") == phase, timeout=timeout, what=f"phase {phase}"
        )

    # --- results --------------------------------------------------------------
    def result_for(self, job: Obj, **overrides: Any) -> str:
        """A valid AttemptResult for the Job's step, written under its output URI."""
        config = self.config_of(job)
        step = config["step"]
        body: Obj = {
            "step": step,
            "status": "Succeeded",
            "message": f"simulated {step}",
            "outputUri": f"{config['outputUri']}/model" if step != "evaluation" else f"{config['outputUri']}/eval.json",
            "contentHash": "sha256:" + "0" * 64,
            "checkpointUri": f"{config['outputUri']}/checkpoints/step-10",
        }
        if step == "evaluation":
            body["metrics"] = {"knowledge_incorporation": 0.9, "retention": 0.8}
            body["baseline"] = {"knowledge_incorporation": 0.1, "retention": 0.8}
        elif step == "consolidation":
            # What the real phase reports of its cost (reverie_sleep_* metrics).
            body["metrics"] = {
                "selfstudy_seconds": 180.0,
                "replay_probe_seconds": 4.0,
                "seconds": 420.0,
                "replay_earlier_items": 96.0,
                "replay_bytes": 2.5e6,
            }
        body.update(overrides)
        return json.dumps(body)

    # --- playing the Job controller -------------------------------------------------
    def _pod(self, job: Obj, index: int, *, owner: Obj | None = None) -> Obj:
        """The Job's pod number ``index`` (created from its template); ``owner`` overrides the owner reference."""
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{index}"
        labels = {**(template["metadata"].get("labels") or {}), "batch.kubernetes.io/job-name": job["metadata"]["name"]}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                "ownerReferences": [
                    owner
                    or {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job["metadata"]["name"],
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
        }
        try:
            created = self.core.create_namespaced_pod(self.namespace, pod)
        except ApiException as exc:
            if exc.status != 409:
                raise
            created = self.core.read_namespaced_pod(name, self.namespace)
        return dict(self.api.sanitize_for_serialization(created))

    def _terminate(self, pod: Obj, *, exit_code: int, message: str | None, reason: str) -> None:
        container = pod["spec"]["containers"][0]
        now = _now()
        terminated: Obj = {"exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}
        if message is not None:
            terminated["message"] = message
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": now,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            ],
        }
        self.core.patch_namespaced_pod_status(pod["metadata"]["name"], self.namespace, {"status": status})

    def start(self, job: Obj) -> None:
        """The Job's pods are running (status.active, startTime)."""
        self.batch.patch_namespaced_job_status(
            job["metadata"]["name"],
            self.namespace,
            {"status": {"startTime": _now(), "active": job["spec"].get("parallelism", 1) or 1}},
        )

    def succeed(self, job: Obj, result: str | None) -> None:
        """Every pod exits 0; the leader's termination message is ``result``; the Job is Complete."""
        nodes = job["spec"].get("completions") or 1
        for index in range(nodes):
            pod = self._pod(job, index)
            self._terminate(pod, exit_code=0, message=result if index == 0 else None, reason="Completed")
        now = _now()
        self.batch.patch_namespaced_job_status(
            job["metadata"]["name"],
            self.namespace,
            {
                "status": {
                    "startTime": now,
                    "completionTime": now,
                    "succeeded": nodes,
                    "active": 0,
                    "conditions": [
                        {
                            "type": "SuccessCriteriaMet",
                            "status": "True",
                            "reason": "CompletionsReached",
                            "message": "Reached expected number of succeeded pods",
                            "lastTransitionTime": now,
                            "lastProbeTime": now,
                        },
                        {
                            "type": "Complete",
                            "status": "True",
                            "reason": "CompletionsReached",
                            "message": "Reached expected number of succeeded pods",
                            "lastTransitionTime": now,
                            "lastProbeTime": now,
                        },
                    ],
                }
            },
        )

    def fail(
        self,
        job: Obj,
        *,
        result: str | None = None,
        exit_code: int = 1,
        container_reason: str = "Error",
        reason: str = "BackoffLimitExceeded",
        message: str = "Job has reached the specified backoff limit",
    ) -> None:
        """The leader pod exits non-zero (optionally with a result naming a checkpoint); the Job is Failed."""
        pod = self._pod(job, 0)
        self._terminate(pod, exit_code=exit_code, message=result, reason=container_reason)
        now = _now()
        self.batch.patch_namespaced_job_status(
            job["metadata"]["name"],
            self.namespace,
            {
                "status": {
                    "startTime": now,
                    "failed": 1,
                    "active": 0,
                    "conditions": [
                        {
                            "type": "FailureTarget",
                            "status": "True",
                            "reason": reason,
                            "message": message,
                            "lastTransitionTime": now,
                            "lastProbeTime": now,
                        },
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": reason,
                            "message": message,
                            "lastTransitionTime": now,
                            "lastProbeTime": now,
                        },
                    ],
                }
            },
        )
