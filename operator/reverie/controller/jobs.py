"""Phase workloads as Kubernetes objects, and what their status says back.

:func:`render` turns the planner's :class:`CreateJob` into the objects of one
attempt: a ConfigMap holding the rendered :class:`AttemptConfig` (mounted at
``/etc/reverie/attempt.json``), and either

* a ``batch/v1`` Job (one pod; or, for ``numNodes > 1``, an Indexed Job with a
  headless Service; whenever nodes × ``procsPerNode`` > 1 the pods run
  ``torchrun`` with the ``PET_*`` environment Kubeflow Trainer's torch plugin
  sets, :mod:`reverie.core.launch`), or
* a Kubeflow ``TrainJob`` / a ``JobSet`` when the spec asks for that engine.

Every object is owned by the SleepCycle (controller owner reference), so
deleting the cycle deletes them; model artifacts live in the store and are
never touched.  The pods are hardened (non-root, read-only root filesystem,
no privilege escalation, no capabilities, RuntimeDefault seccomp, no API
token) and ``backoffLimit: 0``: retries belong to the operator, whose budget
survives restarts.

:func:`observe` reads Jobs (or TrainJobs/JobSets) and their pods back into
:class:`ObservedJob` values.  The attempt's result is the termination message
of the leader pod's ``phase`` container — what the kubelet copies from
``/dev/termination-log`` (``terminationMessagePolicy: FallbackToLogsOnError``
puts the log tail there if the workload crashed before writing it).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reverie import GROUP, LINEAGE_LABEL, VERSION
from reverie.api.base import Engine, Scheduling, parse_quantity
from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import Step
from reverie.core import launch
from reverie.core.contract import CONFIG_MOUNT_PATH, MEMORY_CONFIGMAP_ROOT, TERMINATION_LOG
from reverie.core.observed import JobState, ObservedJob
from reverie.core.planner import CreateJob

Obj = dict[str, Any]

LABEL_CYCLE = f"{GROUP}/cycle"
LABEL_STEP = f"{GROUP}/step"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_JOB = f"{GROUP}/job"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
COMPLETION_INDEX_ANNOTATION = launch.COMPLETION_INDEX_ANNOTATION
CONTAINER = "phase"
STORE_MOUNT = "/store"
STAGING_CACHE_MOUNT = "/var/cache/reverie-staging"
# Without spec.store.stagingCache each pod stages into its own /tmp emptyDir.
STAGING_CACHE_IN_POD = "/tmp/reverie-staging"
MASTER_PORT = launch.MASTER_PORT
TRAINJOB_RUNTIME = "torch-distributed"
# Every workload pod (phase Jobs, the serving export Job) is hardened the same way.
CACHE_ENV: list[Obj] = [
    {"name": "PYTHONUNBUFFERED", "value": "1"},
    # Read-only root filesystem: every cache goes to the /tmp emptyDir.
    {"name": "HOME", "value": "/tmp"},
    {"name": "HF_HOME", "value": "/tmp/hf"},
    {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
]
CONTAINER_SECURITY: Obj = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_BASE: Obj = {
    "restartPolicy": "Never",
    "automountServiceAccountToken": False,
    "enableServiceLinks": False,
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


@dataclass(frozen=True)
class Owner:
    """The SleepCycle the objects belong to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> Obj:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SleepCycle",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class AttemptObjects:
    """Everything one attempt needs, in creation order (the ConfigMap before its reader)."""

    config_map: Obj
    workload: Obj
    service: Obj | None
    engine: Engine

    def all(self) -> list[Obj]:
        return [o for o in (self.config_map, self.service, self.workload) if o is not None]


def labels(create: CreateJob, *, owner: Owner) -> dict[str, str]:
    return {
        LABEL_CYCLE: owner.name,
        LINEAGE_LABEL: create.config.lineage,
        LABEL_STEP: create.step.value,
        LABEL_ATTEMPT: str(create.attempt),
        LABEL_JOB: create.job_name,
        "app.kubernetes.io/name": "reverie-phase",
        "app.kubernetes.io/managed-by": "reverie",
    }


def _meta(name: str, *, owner: Owner, labels: dict[str, str]) -> Obj:
    return {"name": name, "namespace": owner.namespace, "labels": dict(labels), "ownerReferences": [owner.reference()]}


def _launcher_env(create: CreateJob, *, master: str) -> list[Obj]:
    """The ``PET_*`` environment torchrun reads, as Kubeflow Trainer's torch plugin sets it (reverie.core.launch)."""
    return launch.pet_env(create.runtime, master=master)


def _store_env(lineage: ModelLineage, *, mounts: list[Obj], volumes: list[Obj]) -> list[Obj]:
    """The object-store endpoint and the staging cache (reverie.workloads.store.staging) of a workload pod.

    Credentials come from ``spec.store.secretName`` through ``envFrom``; botocore
    reads the standard AWS_* names, and AWS_ENDPOINT_URL_S3 for an S3-compatible server.
    """
    store = lineage.spec.store
    env: list[Obj] = []
    if store.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": store.endpoint})
    if lineage.spec.base_model.uri.startswith("hf://"):
        # The phase images run offline (HF_HUB_OFFLINE=1); an hf:// base model is downloaded once.
        env.append({"name": "HF_HUB_OFFLINE", "value": "0"})
    cache = store.staging_cache
    if cache is None:
        return [*env, {"name": "REVERIE_STAGING_CACHE", "value": STAGING_CACHE_IN_POD}]
    if cache.host_path:
        volumes.append({"name": "staging-cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}})
    elif cache.pvc_name:
        volumes.append({"name": "staging-cache", "persistentVolumeClaim": {"claimName": cache.pvc_name}})
    else:
        volumes.append({"name": "staging-cache", "emptyDir": {"sizeLimit": cache.max_size}})
    mounts.append({"name": "staging-cache", "mountPath": STAGING_CACHE_MOUNT})
    return [
        *env,
        {"name": "REVERIE_STAGING_CACHE", "value": STAGING_CACHE_MOUNT},
        {"name": "REVERIE_STAGING_CACHE_MAX_BYTES", "value": str(int(parse_quantity(cache.max_size)))},
    ]


def workload_pod(
    container: Obj,
    *,
    lineage: ModelLineage,
    scheduling: Scheduling,
    env: list[Obj] | None = None,
    mounts: list[Obj] | None = None,
    volumes: list[Obj] | None = None,
) -> Obj:
    """The one pod builder of every workload (phase Jobs and the serving export Job).

    ``container`` brings its name, image, command and anything of its own; this
    adds what every workload pod has: the hardening (non-root, read-only root
    filesystem, no capabilities, no API token), /tmp as an emptyDir with the
    caches in it, the model store (the PVC at /store, the Secret's keys, the
    S3 endpoint, the staging cache) and the schedule's placement.
    """
    mounts = [*(mounts or []), {"name": "tmp", "mountPath": "/tmp"}]
    volumes = [*(volumes or []), {"name": "tmp", "emptyDir": {}}]
    store = lineage.spec.store
    if store.pvc_name:
        mounts.append({"name": "store", "mountPath": STORE_MOUNT})
        volumes.append({"name": "store", "persistentVolumeClaim": {"claimName": store.pvc_name}})
    all_env = [*(env or []), *copy.deepcopy(CACHE_ENV), *_store_env(lineage, mounts=mounts, volumes=volumes)]
    container = {
        **container,
        "env": all_env,
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if store.secret_name:
        container["envFrom"] = [{"secretRef": {"name": store.secret_name}}]
    spec: Obj = {**copy.deepcopy(POD_BASE), "containers": [container], "volumes": volumes}
    if scheduling.service_account_name:
        spec["serviceAccountName"] = scheduling.service_account_name
    if scheduling.priority_class_name:
        spec["priorityClassName"] = scheduling.priority_class_name
    if scheduling.node_selector:
        spec["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        spec["tolerations"] = [t.wire() for t in scheduling.tolerations]
    return spec


def _command(create: CreateJob) -> list[str]:
    """One process: ``reverie run-step``; more (nodes × procsPerNode) or a TrainJob: ``torchrun``."""
    if launch.needs_torchrun(create.runtime) or create.runtime.engine == Engine.TRAINJOB:
        return launch.torchrun_command(create.step.value, CONFIG_MOUNT_PATH)
    return ["reverie", "run-step", create.step.value, "--config", CONFIG_MOUNT_PATH]


def _pod_spec(create: CreateJob, *, lineage: ModelLineage, scheduling: Scheduling, extra_env: list[Obj]) -> Obj:
    env: list[Obj] = [
        {"name": "REVERIE_STEP", "value": create.step.value},
        {"name": "REVERIE_ATTEMPT", "value": str(create.attempt)},
        *extra_env,
    ]
    mounts: list[Obj] = [
        {"name": "phase-config", "mountPath": CONFIG_MOUNT_PATH.rsplit("/", 1)[0], "readOnly": True},
    ]
    volumes: list[Obj] = [
        {"name": "phase-config", "configMap": {"name": create.job_name}},
    ]
    # Memories held in ConfigMaps: mounted where the workload reads them
    # (reverie.workloads.data.memory: /etc/reverie-memory/<name>/<key>).
    for i, name in enumerate(
        dict.fromkeys(src.config_map.name for src in create.config.memory.sources if src.config_map is not None)
    ):
        mounts.append({"name": f"memory-{i}", "mountPath": f"{MEMORY_CONFIGMAP_ROOT}/{name}", "readOnly": True})
        volumes.append({"name": f"memory-{i}", "configMap": {"name": name}})
    if any(k.get("nvidia.com/gpu") for k in (create.runtime.resources.limits, create.runtime.resources.requests)):
        # NCCL needs more shared memory than the container runtime's 64Mi default.
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    container: Obj = {
        "name": CONTAINER,
        "image": create.image,
        "command": _command(create),
        "terminationMessagePath": TERMINATION_LOG,
    }
    resources = create.runtime.resources.wire()
    if resources:
        container["resources"] = resources
    if create.runtime.num_nodes > 1 or create.runtime.engine != Engine.JOB:
        container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
    return workload_pod(container, lineage=lineage, scheduling=scheduling, env=env, mounts=mounts, volumes=volumes)


def render(create: CreateJob, *, owner: Owner, lineage: ModelLineage, scheduling: Scheduling) -> AttemptObjects:
    """The objects of one attempt (not yet created)."""
    name = create.job_name
    lbl = labels(create, owner=owner)
    job_labels = dict(lbl)
    if scheduling.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = scheduling.queue_name
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, owner=owner, labels=lbl),
        "data": {CONFIG_MOUNT_PATH.rsplit("/", 1)[1]: json.dumps(create.config.wire(), indent=1, sort_keys=True)},
    }
    runtime = create.runtime
    engine = Engine(runtime.engine)
    if engine == Engine.TRAINJOB:
        return AttemptObjects(
            config_map,
            _trainjob(create, owner=owner, lineage=lineage, scheduling=scheduling, labels=job_labels),
            None,
            engine,
        )
    multi = runtime.num_nodes > 1
    service: Obj | None = None
    extra_env: list[Obj] = []
    if engine == Engine.JOBSET:
        # JobSet pods are <jobset>-<replicatedJob>-<jobIndex>-<podIndex> in the subdomain <jobset>.
        extra_env = _launcher_env(create, master=f"{name}-node-0-0.{name}")
    elif launch.needs_torchrun(runtime) and not multi:
        # One pod, several processes: the rendezvous stays inside the pod.
        extra_env = _launcher_env(create, master="127.0.0.1")
    elif multi:
        extra_env = _launcher_env(create, master=f"{name}-0.{name}")
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, owner=owner, labels=lbl),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {LABEL_JOB: name},
                "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
            },
        }
    pod_spec = _pod_spec(create, lineage=lineage, scheduling=scheduling, extra_env=extra_env)
    job_spec: Obj = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": runtime.active_deadline_seconds,
        "template": {"metadata": {"labels": dict(lbl)}, "spec": pod_spec},
    }
    if multi or engine == Engine.JOBSET:
        job_spec.update(
            {"completionMode": "Indexed", "completions": runtime.num_nodes, "parallelism": runtime.num_nodes}
        )
    if multi and engine == Engine.JOB:
        pod_spec["subdomain"] = name
    if engine == Engine.JOBSET:
        jobset = {
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": _meta(name, owner=owner, labels=job_labels),
            "spec": {
                "failurePolicy": {"maxRestarts": 0},
                "network": {"enableDNSHostnames": True, "subdomain": name},
                "replicatedJobs": [{"name": "node", "replicas": 1, "template": {"spec": job_spec}}],
            },
        }
        return AttemptObjects(config_map, jobset, None, engine)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, owner=owner, labels=job_labels),
        "spec": job_spec,
    }
    return AttemptObjects(config_map, job, service, engine)


def _trainjob(
    create: CreateJob, *, owner: Owner, lineage: ModelLineage, scheduling: Scheduling, labels: dict[str, str]
) -> Obj:
    """A Kubeflow Trainer v2 TrainJob on the ``torch-distributed`` runtime: torchrun, with Trainer's ``PET_*``.

    DeepSpeed phases use it too: the workload initialises DeepSpeed over the
    torchrun world, so the MPI-based ``deepspeed-distributed`` runtime is not needed.
    """
    pod = _pod_spec(create, lineage=lineage, scheduling=scheduling, extra_env=[])
    container = pod["containers"][0]
    runtime_name = TRAINJOB_RUNTIME
    override_spec: Obj = {
        "volumes": pod["volumes"],
        "containers": [{"name": "node", "volumeMounts": container["volumeMounts"]}],
    }
    for key in ("serviceAccountName", "nodeSelector", "tolerations", "priorityClassName", "securityContext"):
        if key in pod:
            override_spec[key] = pod[key]
    trainer: Obj = {
        "image": create.image,
        "command": container["command"],
        "numNodes": create.runtime.num_nodes,
        "numProcPerNode": create.runtime.procs_per_node,
        "env": container["env"],
    }
    if "resources" in container:
        trainer["resourcesPerNode"] = container["resources"]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _meta(create.job_name, owner=owner, labels=labels),
        "spec": {
            "runtimeRef": {"name": runtime_name},
            "trainer": trainer,
            "activeDeadlineSeconds": create.runtime.active_deadline_seconds,
            "podTemplateOverrides": [{"targetJobs": [{"name": "node"}], "spec": override_spec}],
        },
    }


# --- observation ---------------------------------------------------------------------------
def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _condition(obj: Obj, *types: str) -> Obj | None:
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return dict(cond)
    return None


def _terminated(pod: Obj) -> Obj | None:
    for cs in pod.get("status", {}).get("containerStatuses", []) or []:
        if cs.get("name") in (CONTAINER, "node"):
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term:
                return dict(term)
    return None


EPHEMERAL_STORAGE_HINT = (
    "the pod's files (its /tmp emptyDir with the staging cache, logs, the container's layer) outgrew its "
    "ephemeral-storage limit: raise the phase's runtime.resources.limits.ephemeral-storage, or give "
    "spec.store.stagingCache a volume of its own"
)


def _evicted(pod: Obj) -> str:
    """Why the kubelet evicted ``pod`` (its status says so, its container may not), with the fix; else ''."""
    status = pod.get("status") or {}
    if status.get("reason") != "Evicted":
        return ""
    detail = f"pod {pod.get('metadata', {}).get('name')} was evicted: {status.get('message') or 'no message'}"
    if "ephemeral" in (status.get("message") or "").lower():
        detail += f" ({EPHEMERAL_STORAGE_HINT})"
    return detail


def _leader_first(pods: list[Obj]) -> list[Obj]:
    """Rank 0 writes the result; order it first, then the rest by name."""

    def key(pod: Obj) -> tuple[int, str]:
        meta = pod.get("metadata", {})
        index = (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
        return (0 if index in (None, "0") else 1, meta.get("name", ""))

    return sorted(pods, key=key)


def observe(workloads: list[Obj], pods: list[Obj]) -> list[ObservedJob]:
    """Jobs/TrainJobs/JobSets of one cycle (and their pods) as the planner sees them."""
    by_job: dict[str, list[Obj]] = {}
    for pod in pods:
        lbl = pod.get("metadata", {}).get("labels") or {}
        owner = (
            lbl.get(LABEL_JOB) or lbl.get("jobset.sigs.k8s.io/jobset-name") or lbl.get("batch.kubernetes.io/job-name")
        )
        if owner:
            by_job.setdefault(owner, []).append(pod)
    out: list[ObservedJob] = []
    for wl in workloads:
        meta = wl.get("metadata", {})
        lbl = meta.get("labels") or {}
        try:
            step, attempt = Step(lbl[LABEL_STEP]), int(lbl[LABEL_ATTEMPT])
        except (KeyError, ValueError):
            continue  # not ours (or edited by hand): the planner must not guess
        name = meta["name"]
        done = _condition(wl, "Complete", "Completed")
        failed = _condition(wl, "Failed")
        state = JobState.SUCCEEDED if done else JobState.FAILED if failed else JobState.ACTIVE
        result_text: str | None = None
        reason, message = "", ""
        term_detail = ""
        for pod in _leader_first(by_job.get(name, [])):
            evicted = _evicted(pod)
            if evicted and not term_detail:
                term_detail, reason = evicted, "Evicted"
            term = _terminated(pod)
            if term is None:
                continue
            if result_text is None and term.get("message"):
                result_text = term["message"]
            if term.get("exitCode", 0) != 0 and not term_detail:
                term_detail = f"container {CONTAINER} of pod {pod['metadata']['name']}: {term.get('reason', 'Error')} (exit code {term.get('exitCode')})"
                reason = (
                    str(term.get("reason"))
                    if term.get("reason") in ("OOMKilled", "Evicted", "DeadlineExceeded")
                    else ""
                )
        if failed:
            reason = reason or failed.get("reason") or "JobFailed"
            message = "; ".join(x for x in (failed.get("message", ""), term_detail) if x)
        status = wl.get("status", {})
        finished = _ts(status.get("completionTime")) or _ts((done or failed or {}).get("lastTransitionTime"))
        out.append(
            ObservedJob(
                name=name,
                step=step,
                attempt=attempt,
                state=state,
                created=_ts(meta.get("creationTimestamp")),
                started=_ts(status.get("startTime")),
                finished=finished,
                reason=reason,
                message=message,
                result_text=result_text,
                deleting=bool(meta.get("deletionTimestamp")),
            )
        )
    return out
