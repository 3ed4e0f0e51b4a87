"""The Job that writes a champion's servable form, and what its status says back.

The operator has no ML stack, so the merged folder (or the rank-Σr adapter) is
written by a one-pod ``batch/v1`` Job in the trainer image running
``reverie export <champion uri> <servable uri> --form <form>`` (see
:mod:`reverie.workloads.steps.export`).  One Job per (generation, form), with a
deterministic name, owned by the ModelLineage: a repeated create meets 409,
deleting the lineage deletes it, and the store's artifacts are never touched.
The pod is built by the phase Jobs' own pod builder
(:func:`reverie.controller.jobs.workload_pod`): hardened the same way, with the
same store access (``spec.store.pvcName`` at ``/store``, ``secretName`` as env,
``endpoint`` as ``AWS_ENDPOINT_URL_S3``, the staging cache).

``ttlSecondsAfterFinished`` removes a finished Job after an hour.  By then a
successful export is recorded in ``status.servable``; a failed one is simply
tried again by the next sync (or at once, after ``kubectl delete job``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from reverie import GROUP, LINEAGE_LABEL
from reverie.api.base import Scheduling
from reverie.api.lineage import ModelLineage, ServableForm
from reverie.controller.jobs import workload_pod
from reverie.controller.kube import JOBS, ApiError, Kube, Obj
from reverie.core.serving import HandOff

MAX_NAME = 52  # as for phase Jobs: room for the pod name's suffix
FINISHED_TTL_SECONDS = 3600
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_FORM = f"{GROUP}/servable-form"
CONTAINER = "export"


class ExportState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class ExportProgress:
    """Where the export of one champion stands; ``message`` says it for a condition."""

    job: str
    state: ExportState
    message: str


def job_name(lineage: str, generation: str, form: ServableForm | str) -> str:
    """``<lineage>-serve-<generation>-<form>``, shortened with a hash past :data:`MAX_NAME`."""
    suffix = f"-serve-{generation}-{ServableForm(form).value}"
    name = f"{lineage}{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    tail = f"-{digest}{suffix}"[: MAX_NAME - 1]
    return lineage[: MAX_NAME - len(tail)].rstrip("-") + tail


def render(obj: Obj, lineage: ModelLineage, decision: HandOff) -> Obj:
    """The export Job for ``decision`` (which must ask for an export), owned by the lineage object ``obj``."""
    assert decision.export is not None and decision.source_uri is not None and decision.generation is not None
    target = lineage.spec.serving_target
    assert target is not None
    form = ServableForm(decision.form)
    template = lineage.spec.schedule.template if lineage.spec.schedule is not None else None
    scheduling = template.scheduling if template is not None else Scheduling()
    name = job_name(lineage.metadata.name, decision.generation, form)
    labels = {
        LINEAGE_LABEL: lineage.metadata.name,
        LABEL_GENERATION: decision.generation,
        LABEL_FORM: form.value,
        "app.kubernetes.io/name": "reverie-export",
        "app.kubernetes.io/managed-by": "reverie",
    }
    command = ["reverie", "export", decision.source_uri, decision.export.uri, "--form", form.value]
    if form == ServableForm.ADAPTER:
        command += ["--base-ref", lineage.spec.base_model.uri]  # what the server loads next to the adapter
    container: Obj = {
        "name": CONTAINER,
        "image": target.export.image_for(template.images if template is not None else None),
        "command": command,
    }
    resources = target.export.resources.wire()
    if resources:
        container["resources"] = resources
    pod = workload_pod(container, lineage=lineage, scheduling=scheduling)
    meta = obj.get("metadata", {})
    owner = {
        "apiVersion": obj.get("apiVersion"),
        "kind": "ModelLineage",
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": meta.get("namespace"), "labels": labels, "ownerReferences": [owner]},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": target.export.active_deadline_seconds,
            "ttlSecondsAfterFinished": FINISHED_TTL_SECONDS,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }


def progress_of(job: Obj) -> ExportState:
    """Succeeded (condition Complete), Failed (condition Failed) or Running."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return ExportState.SUCCEEDED
        if cond.get("type") == "Failed":
            return ExportState.FAILED
    return ExportState.RUNNING


async def ensure_export(kube: Kube, *, obj: Obj, lineage: ModelLineage, decision: HandOff) -> ExportProgress:
    """Create the export Job if it does not exist yet; report where it stands."""
    assert decision.export is not None
    body = render(obj, lineage, decision)
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    what = f"the {decision.form.value} form of {decision.generation} to {decision.export.uri}"
    job = await kube.get_or_none(JOBS, namespace, name)
    if job is None:
        try:
            job, _ = await kube.create_or_get(JOBS, namespace, body)
        except ApiError as exc:
            return ExportProgress(name, ExportState.FAILED, f"cannot create export Job {name}: {exc.message}")
    state = progress_of(job)
    if state == ExportState.FAILED:
        conds: list[Obj] = (job.get("status") or {}).get("conditions") or []
        cond = next((c for c in conds if c.get("type") == "Failed"), {})
        detail = cond.get("message") or cond.get("reason") or "the pod failed"
        return ExportProgress(
            name,
            state,
            f"export Job {name} writing {what} failed ({detail}); see `kubectl logs job/{name}`; "
            "deleting the Job retries it",
        )
    if state == ExportState.SUCCEEDED:
        return ExportProgress(name, state, f"export Job {name} wrote {what}")
    return ExportProgress(name, state, f"export Job {name} is writing {what}")
