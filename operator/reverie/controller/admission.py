"""The validating admission webhook: the checks a CRD schema cannot make.

The schema (OpenAPI + CEL, generated from the API models) judges one object
alone.  What needs another object or a library is checked here, when the
object is applied, instead of surfacing later as a condition:

* a SleepCycle's ``spec.lineageRef`` names a ModelLineage that exists, and its
  ``spec.baseGeneration`` a generation that lineage has;
* a ModelLineage's ``spec.rollbackTo`` names a generation that was champion
  (the pin :func:`reverie.core.lineage.rollback` can enforce), and its
  ``spec.schedule`` cron expression and time zone parse.

Each refusal names the field and the fix.  On UPDATE only the fields that
changed are judged, so writes that do not touch them (Kopf's own annotations
and finalizers, a deletion in progress) always pass.

The webhook is served by Kopf's own admission machinery (``kopf.on.validate``
and :class:`kopf.WebhookServer`, TLS from ``tls.crt``/``tls.key`` in the
certificate folder, re-read when cert-manager renews them), inside the
operator process, at ``/validate-sleepcycle`` and ``/validate-modellineage``
(Kopf routes a request by the handler id in its path).  The
ValidatingWebhookConfiguration comes from the Helm chart
(``webhook.enabled``); Kopf does not manage it, so the operator needs no RBAC
on admission registration.  With ``failurePolicy: Ignore`` (the chart's
default) the API server admits objects while the operator is down: the
operator's own conditions then report what the webhook would have refused.

:func:`check_cycle` and :func:`check_lineage` are pure (tested without a
cluster); the handlers only fetch the lineage a cycle names, with the API
client the operator's start-up puts in Kopf's ``memo``
(:func:`reverie.controller.cycle_handlers._configure`), so this module needs
nothing from the handlers' module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from pydantic import ValidationError

from reverie import GROUP, VERSION
from reverie.api.lineage import GenerationState, ModelLineage, ScheduleSpec
from reverie.api.sleepcycle import SleepCycleSpec
from reverie.controller.kube import MODELLINEAGES, ApiError, Kube
from reverie.controller.lineage_status import parse_lineage
from reverie.core import lineage as rules
from reverie.core.schedule import ScheduleError
from reverie.core.schedule import validate as validate_schedule

log = logging.getLogger(__name__)

CYCLE_WEBHOOK = "validate-sleepcycle"
LINEAGE_WEBHOOK = "validate-modellineage"
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"
# The key in Kopf's ``memo`` under which start-up leaves the operator's API client.
MEMO_KUBE = "kube"
# 422, as the API server answers a schema violation: the request is invalid, not the server.
INVALID = 422


# --- the checks (pure) -----------------------------------------------------------------------
def check_cycle(spec: SleepCycleSpec, *, namespace: str, lineage: ModelLineage | None) -> list[str]:
    """What is wrong with a new SleepCycle given the lineage it names (None: missing); empty if nothing."""
    if lineage is None:
        return [
            f"spec.lineageRef: ModelLineage {spec.lineage_ref!r} does not exist in namespace {namespace}; "
            "create the ModelLineage first, or fix spec.lineageRef"
        ]
    wanted = spec.base_generation
    if wanted is None or wanted == rules.BASE_GENERATION or rules.find(lineage.status, wanted) is not None:
        return []
    known = [g.name for g in lineage.status.generations] or [rules.BASE_GENERATION]
    dropped = ""
    number = rules.generation_number(wanted)
    if lineage.status.dropped.count and number is not None and number < lineage.status.next_generation:
        dropped = f" ({wanted} may have been dropped by spec.historyLimit)"
    return [
        f"spec.baseGeneration: lineage {spec.lineage_ref} has no generation {wanted!r}{dropped}; "
        f"use one of {', '.join(known)}, or omit baseGeneration to start from the champion"
    ]


def check_lineage(lineage: ModelLineage, *, old: ModelLineage | None) -> list[str]:
    """What is wrong with a created or changed ModelLineage; on update only changed fields count."""
    problems: list[str] = []
    spec = lineage.spec
    if spec.rollback_to and (old is None or old.spec.rollback_to != spec.rollback_to):
        # Judged against the generations the lineage has now (a new lineage has only gen-0).
        status = rules.ensure_base(lineage.status, spec.base_model, now=_EPOCH)
        gen = rules.find(status, spec.rollback_to)
        if gen is None or gen.state not in (GenerationState.CHAMPION, GenerationState.RETIRED):
            _, result = rules.rollback(status, target=spec.rollback_to, now=_EPOCH)
            problems.append(f"{result.message}; pick a generation that was champion, or remove spec.rollbackTo")
    if spec.schedule is not None and (old is None or _schedule_key(old.spec.schedule) != _schedule_key(spec.schedule)):
        try:
            validate_schedule(spec.schedule)
        except ScheduleError as err:
            problems.append(str(err))
    return problems


def _schedule_key(schedule: ScheduleSpec | None) -> tuple[str, str] | None:
    return None if schedule is None else (schedule.cron, schedule.time_zone)


# The rules take a clock for the timestamps they write; a check writes nothing.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- Kopf handlers -----------------------------------------------------------------------------
def _cycle_spec(body: kopf.Body) -> SleepCycleSpec | None:
    """The admitted cycle's spec; None when it does not parse (the schema has judged it already)."""
    try:
        return SleepCycleSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as exc:
        log.debug("admission: SleepCycle spec does not parse (%s); leaving it to the schema", exc)
        return None


def _refuse(problems: list[str]) -> None:
    if problems:
        raise kopf.AdmissionError("; ".join(problems), code=INVALID)


# Kopf passes many keyword arguments; these handlers read the few they need.
async def _validate_cycle(**kwargs: Any) -> None:
    body: kopf.Body = kwargs["body"]
    namespace: str | None = kwargs.get("namespace")
    # lineageRef and baseGeneration are immutable (CEL): only a creation can get them wrong.
    if kwargs.get("operation") != "CREATE" or body.metadata.get("deletionTimestamp"):
        return
    spec = _cycle_spec(body)
    if spec is None:
        return
    ns = namespace or "default"
    try:
        obj = await _kube(kwargs["memo"]).get_or_none(MODELLINEAGES, ns, spec.lineage_ref)
    except ApiError as exc:
        # Fail open, as failurePolicy Ignore would: the cycle's own conditions report a missing lineage.
        log.warning("admission: could not read ModelLineage %s/%s (%s); admitting the cycle", ns, spec.lineage_ref, exc)
        return
    lineage = None if obj is None else _lineage(obj)
    _refuse(check_cycle(spec, namespace=ns, lineage=lineage))


async def _validate_lineage(**kwargs: Any) -> None:
    body: kopf.Body = kwargs["body"]
    old: kopf.Body | None = kwargs.get("old")
    if kwargs.get("operation") not in ("CREATE", "UPDATE") or body.metadata.get("deletionTimestamp"):
        return
    new = _lineage(body)
    if new is None:
        return
    _refuse(check_lineage(new, old=_lineage(old) if old is not None else None))


def _lineage(body: Any) -> ModelLineage | None:
    try:
        return parse_lineage(dict(body))
    except ValidationError as exc:
        log.debug("admission: ModelLineage does not parse (%s); leaving it to the schema", exc)
        return None


def _kube(memo: Any) -> Kube:
    """The operator's API client, put in Kopf's ``memo`` at start-up (a webhook handler gets a copy of it)."""
    kube: Kube | None = getattr(memo, MEMO_KUBE, None)
    if kube is None:
        raise RuntimeError("the admission webhook's API client is set by the operator's start-up (on.startup)")
    return kube


# --- serving ------------------------------------------------------------------------------------
class _NoWebhook:
    """The webhook switched off: Kopf wants a server whenever admission handlers exist; this one never listens."""

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield  # pragma: no cover - never reached; makes this an async generator


def server(*, port: int | None, cert_dir: str | None, addr: str | None = None) -> Any:
    """Kopf's admission server for these options: a TLS :class:`kopf.WebhookServer`, or none listening."""
    if port is None:
        return _NoWebhook()
    if not cert_dir:
        raise ValueError(
            "--webhook-port needs --webhook-cert-dir: a folder with the serving certificate's "
            f"{CERT_FILE} and {KEY_FILE} (the chart mounts its webhook Secret there)"
        )
    folder = Path(cert_dir)
    missing = [name for name in (CERT_FILE, KEY_FILE) if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"--webhook-cert-dir {folder}: {', '.join(missing)} not found")
    log.info("serving the admission webhook on %s:%d (certificate from %s)", addr or "*", port, folder)
    return kopf.WebhookServer(
        addr=addr or None, port=port, certfile=str(folder / CERT_FILE), pkeyfile=str(folder / KEY_FILE)
    )


def register(registry: kopf.OperatorRegistry) -> None:
    """Put the validating handlers into ``registry`` (the operator's main module does, on import)."""
    kopf.on.validate(GROUP, VERSION, "sleepcycles", id=CYCLE_WEBHOOK, registry=registry, operations=["CREATE"])(
        _validate_cycle
    )
    kopf.on.validate(
        GROUP, VERSION, "modellineages", id=LINEAGE_WEBHOOK, registry=registry, operations=["CREATE", "UPDATE"]
    )(_validate_lineage)
