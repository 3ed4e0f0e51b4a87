"""Serving hand-off: point the serving object at the lineage's champion, in a form it can serve.

A generation folder is not servable as is (a server would load its base
weights and ignore the expert slots).  On every champion change (promotion,
rollback) the champion's servable form (``spec.servingTarget.form``, default
``merged``; see :mod:`reverie.core.serving`) is written once by an export Job
(:mod:`reverie.controller.export_job`) to
``<store>/<lineage>/servable/<generation>/<form>``, recorded in
``status.servable``, and only then is its URI written into what
``spec.servingTarget`` names, in the lineage's namespace (generation 0, the
base model folder itself, is handed over at once):

* ``InferenceService`` (KServe ``serving.kserve.io/v1beta1``):
  ``spec.predictor.model.storageUri`` — KServe then rolls out a new revision,
  the same hand-off a registry-driven KServe deployment uses;
* ``Deployment``: the env var ``env`` of container ``container`` (a rollout);
* ``ConfigMap``: the key ``key`` (for servers that watch their config).

Level-based and idempotent: :func:`sync_serving` reads the target and patches
only when it differs from the champion, then records ``status.servingUri`` and
the ``ServingSynced`` condition (False with a reason and a message saying what
to fix when the target is missing, forbidden or malformed).  The lineage
handlers call it after every change and on their timer, so drift (someone
edited the target) and a restart between promotion and hand-off both heal.
"""

from __future__ import annotations

import logging
from typing import Any

from reverie.api.base import ConditionStatus
from reverie.api.lineage import (
    LineageCondition,
    ModelLineageStatus,
    ServableStatus,
    ServingKind,
    ServingTarget,
)
from reverie.controller.events import emit_event
from reverie.controller.kube import (
    CONFIGMAPS,
    MODELLINEAGES,
    ApiError,
    Kube,
    Obj,
    Resource,
    mutate_status,
)
from reverie.controller.lineage_status import known_status, parse_lineage, status_body, utcnow
from reverie.core.conditions import get_condition, set_condition
from reverie.core.serving import hand_off

log = logging.getLogger(__name__)

INFERENCESERVICES = Resource("serving.kserve.io", "v1beta1", "inferenceservices")
DEPLOYMENTS = Resource("apps", "v1", "deployments")


class TargetError(Exception):
    """The serving target cannot be patched: ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def desired_patch(target: ServingTarget, current: Obj, uri: str) -> tuple[Resource, dict[str, Any], str] | None:
    """(resource, merge/strategic patch, content type) that makes ``current`` serve ``uri``; None if it already does.

    Pure: decides from the object as read.  Raises :class:`TargetError` when the
    object cannot hold the URI (e.g. the Deployment has no such container).
    """
    kind = ServingKind(target.kind)
    if kind == ServingKind.INFERENCE_SERVICE:
        model = (((current.get("spec") or {}).get("predictor") or {}).get("model")) or {}
        if model.get("storageUri") == uri:
            return None
        return (
            INFERENCESERVICES,
            {"spec": {"predictor": {"model": {"storageUri": uri}}}},
            "application/merge-patch+json",
        )
    if kind == ServingKind.CONFIG_MAP:
        assert target.key is not None  # the CRD's CEL rule requires key for ConfigMap
        if (current.get("data") or {}).get(target.key) == uri:
            return None
        return CONFIGMAPS, {"data": {target.key: uri}}, "application/merge-patch+json"
    assert target.container is not None and target.env is not None  # required by CEL for Deployment
    containers = (((current.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == target.container), None)
    if container is None:
        names = ", ".join(c.get("name", "?") for c in containers) or "none"
        raise TargetError(
            "ContainerNotFound",
            f"Deployment {target.name} has no container {target.container!r} (containers: {names}); fix spec.servingTarget.container",
        )
    env = next((e for e in container.get("env") or [] if e.get("name") == target.env), None)
    if env is not None and "valueFrom" in env:
        raise TargetError(
            "EnvValueFrom",
            f"Deployment {target.name} container {target.container} sets {target.env} from valueFrom; "
            "remove it so the operator can set the value",
        )
    if env is not None and env.get("value") == uri:
        return None
    # Strategic merge: containers and env are merged by name, so nothing else changes.
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": target.container, "env": [{"name": target.env, "value": uri}]}]}
            }
        }
    }
    return DEPLOYMENTS, patch, "application/strategic-merge-patch+json"


def _resource_of(kind: ServingKind) -> Resource:
    return {
        ServingKind.INFERENCE_SERVICE: INFERENCESERVICES,
        ServingKind.DEPLOYMENT: DEPLOYMENTS,
        ServingKind.CONFIG_MAP: CONFIGMAPS,
    }[kind]


async def patch_target(kube: Kube, *, namespace: str, target: ServingTarget, uri: str) -> bool:
    """Make the target serve ``uri``; True if it was patched, False if it already did. Raises :class:`TargetError`."""
    kind = ServingKind(target.kind)
    res = _resource_of(kind)
    try:
        current = await kube.get(res, namespace, target.name)
    except ApiError as exc:
        if exc.not_found:
            raise TargetError(
                "TargetNotFound", f"{kind} {namespace}/{target.name} not found: create it or fix spec.servingTarget"
            ) from exc
        if exc.status == 403:
            raise TargetError(
                "Forbidden", f"the operator may not read {kind} {namespace}/{target.name}: {exc.message}"
            ) from exc
        raise
    planned = desired_patch(target, current, uri)
    if planned is None:
        return False
    res, patch, content_type = planned
    try:
        await kube.request("PATCH", res.path(namespace, target.name), body=patch, content_type=content_type)
    except ApiError as exc:
        if exc.status in (403, 422, 404):
            reason = {403: "Forbidden", 422: "Invalid", 404: "TargetNotFound"}[exc.status]
            raise TargetError(reason, f"patching {kind} {namespace}/{target.name} failed: {exc.message}") from exc
        raise
    return True


def _describe(target: ServingTarget) -> str:
    kind = ServingKind(target.kind)
    if kind == ServingKind.INFERENCE_SERVICE:
        return f"InferenceService/{target.name} spec.predictor.model.storageUri"
    if kind == ServingKind.DEPLOYMENT:
        return f"Deployment/{target.name} container {target.container} env {target.env}"
    return f"ConfigMap/{target.name} key {target.key}"


async def sync_serving(kube: Kube, *, namespace: str, lineage: str) -> str | None:
    """Hand the champion's servable form to ``spec.servingTarget``; record servingUri, servable and ServingSynced.

    A new champion's form is written first by its export Job
    (:mod:`reverie.controller.export_job`); meanwhile the target keeps what it
    serves and ServingSynced is False with reason ``Exporting`` (or
    ``ExportFailed``).  Returns the condition reason written (``Synced``,
    ``Exporting``, ``TargetNotFound``, ...), or None when the lineage has no
    serving target, no champion, or is gone.
    """
    from reverie.controller.export_job import ExportState, ensure_export

    obj = await kube.get_or_none(MODELLINEAGES, namespace, lineage)
    if obj is None:
        return None
    lin = parse_lineage(obj)
    target = lin.spec.serving_target
    if target is None or lin.status.champion_uri is None:
        return None
    decision = hand_off(lin)
    if decision.uri is None and decision.export is None:
        return None  # the champion is not among the recorded generations: nothing to decide from
    written: ServableStatus | None = None
    patched = False
    served: str | None = lin.status.serving_uri
    uri = decision.uri
    if decision.export is not None:
        progress = await ensure_export(kube, obj=obj, lineage=lin, decision=decision)
        if progress.state == ExportState.SUCCEEDED:
            written, uri = decision.export, decision.export.uri
        else:
            status = ConditionStatus.FALSE
            reason = "Exporting" if progress.state == ExportState.RUNNING else "ExportFailed"
            message = progress.message + (f"; the target keeps serving {served}" if served else "")
    if uri is not None:
        try:
            patched = await patch_target(kube, namespace=namespace, target=target, uri=uri)
        except TargetError as err:
            status, reason, message = ConditionStatus.FALSE, err.reason, err.message
        else:
            status, reason = ConditionStatus.TRUE, "Synced"
            message = f"{_describe(target)} = {uri} ({decision.form.value} form of champion {lin.status.champion})"
            served = uri
    now = utcnow()
    champion = lin.status.champion

    def mutate(fresh: Obj) -> dict[str, Any] | None:
        cur = ModelLineageStatus.model_validate(known_status(fresh.get("status") or {}))
        if cur.champion != champion or cur.champion_uri != lin.status.champion_uri:
            # The champion moved while we worked: the next sync (triggered by that change) owns the condition.
            return None
        new = cur.model_copy(deep=True)
        new.serving_uri = served
        if written is not None:
            new.servable = written
        new.conditions = set_condition(
            new.conditions,
            LineageCondition.SERVING_SYNCED,
            status,
            reason=reason,
            message=message,
            now=now,
            observed_generation=fresh["metadata"].get("generation"),
        )
        if new == cur:
            return None
        return status_body(fresh.get("status") or {}, new)

    before = get_condition(lin.status.conditions, LineageCondition.SERVING_SYNCED)
    await mutate_status(kube, MODELLINEAGES, namespace=namespace, name=lineage, mutate=mutate)
    if patched:
        await emit_event(kube, obj, reason="ServingSynced", message=f"{message}")
    elif status == ConditionStatus.FALSE and (before is None or before.reason != reason):
        await emit_event(
            kube, obj, reason=reason, message=message, type="Normal" if reason == "Exporting" else "Warning"
        )
    quiet = not patched and before is not None and before.reason == reason
    log.log(
        logging.DEBUG if quiet else logging.INFO,
        "serving of %s/%s (champion %s): %s %s",
        namespace,
        lineage,
        champion,
        reason,
        message,
    )
    return reason
