"""Promotion into a ModelLineage: the I/O around the pure lineage rules.

The SleepCycle handlers call these when a cycle has a candidate, reaches
``Promoting``, or is rejected.  Each is one optimistic-concurrency update of the
lineage's ``status`` through :func:`reverie.controller.kube.mutate_status` (GET,
apply a pure rule from :mod:`reverie.core.lineage`, PUT with the read
``resourceVersion``, and on 409 re-apply the rule to fresh state), so:

* **Exactly once.** Every rule is keyed by the cycle name and idempotent; a call
  repeated after an operator restart (the candidate recorded, the operator died
  before the cycle's status said so) finds its own earlier write and completes
  without recording or promoting twice.
* **No lost generations.** Writers never overwrite each other's generations: a
  conflicting write is retried against the state that won.
* **One winner.** Promotion is a compare-and-set on the champion (the
  candidate's parent must still be the champion), so of two cycles trained from
  the same champion only the first to write promotes; the other gets
  ``StaleParent`` and its candidate is Rejected.

How the SleepCycle handlers use this module (``kube`` is their
:class:`~reverie.controller.kube.Kube`)::

    # after the evaluation step succeeded (before or after the gate):
    gen = await record_candidate(kube, namespace=ns, lineage=lin, cycle=name,
                                 uri=out_uri, content_hash=h, parent=status.baseGeneration,
                                 scores=status.evaluation)
    observe_gate(namespace=ns, lineage=lin, decision=gate, candidate=..., champion=...)
    # phase Promoting (gate Passed and auto, or approved):
    result = await promote(kube, namespace=ns, lineage=lin, cycle=name)
    # result.promoted -> cycle Succeeded (status.generation = result.generation)
    # else            -> cycle Rejected with reason result.kind, message result.message
    # phase Rejected (gate Failed, Inconclusive+Reject, or annotation rejected):
    await reject(kube, namespace=ns, lineage=lin, cycle=name)

After a champion change, :func:`promote` hands the new champion to the serving
target (:mod:`reverie.controller.serving`); the lineage handlers re-check it
level-based, so a restart between the two still converges.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from reverie.api.lineage import ModelLineage, ModelLineageStatus
from reverie.api.sleepcycle import GateDecision
from reverie.controller import metrics
from reverie.controller.kube import EVENTS, MODELLINEAGES, ApiError, Kube, Obj, mutate_status
from reverie.core import lineage as rules
from reverie.core.actions import ClaimLineage, Promote, RecordCandidate, Reject, ReleaseLineage

log = logging.getLogger(__name__)


class LineageNotFound(LookupError):
    """The lineage named by a cycle's spec.lineageRef does not exist."""


def utcnow() -> datetime:
    """Now, to the second (Kubernetes timestamps have second precision)."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_lineage(obj: Obj) -> ModelLineage:
    """The lineage as the API model; unknown status keys (other writers') are ignored."""
    return ModelLineage.model_validate({**obj, "status": known_status(obj.get("status") or {})})


def known_status(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a raw status that ModelLineageStatus knows (camelCase)."""
    fields = {f.alias or name for name, f in ModelLineageStatus.model_fields.items()}
    return {k: v for k, v in raw.items() if k in fields}


def status_body(raw: Mapping[str, Any], new: ModelLineageStatus) -> dict[str, Any]:
    """The raw status with our model's fields replaced and any other writer's keys kept.

    A field of ours that is now empty (``activeCycle`` released) is removed, not kept from ``raw``.
    """
    ours = {f.alias or name for name, f in ModelLineageStatus.model_fields.items()}
    return {**{k: v for k, v in raw.items() if k not in ours}, **new.wire()}


Rule = Callable[[ModelLineage], ModelLineageStatus | None]


async def update_lineage(kube: Kube, *, namespace: str, lineage: str, rule: Rule) -> Obj:
    """Apply a pure ``rule`` (lineage -> new status, or None for no change) with optimistic concurrency.

    Generation 0 is ensured first, so a lineage whose own handler has not run
    yet still gets its base model recorded before anything else.  Raises
    :class:`LineageNotFound` if the lineage does not exist.
    """
    now = utcnow()

    def mutate(obj: Obj) -> dict[str, Any] | None:
        current = parse_lineage(obj)
        based = rules.ensure_base(current.status, current.spec.base_model, now=now)
        new = rule(current.model_copy(update={"status": based}))
        new = based if new is None else new
        if new == current.status:
            return None
        return status_body(obj.get("status") or {}, new)

    written = await mutate_status(kube, MODELLINEAGES, namespace=namespace, name=lineage, mutate=mutate)
    if written is None:
        raise LineageNotFound(f"ModelLineage {namespace}/{lineage} not found: create it, or fix spec.lineageRef")
    return written


async def ensure_base(kube: Kube, *, namespace: str, lineage: str) -> Obj:
    """Record generation 0 (spec.baseModel) as champion if the lineage has no history yet."""
    return await update_lineage(kube, namespace=namespace, lineage=lineage, rule=lambda _lin: None)


async def record_candidate(
    kube: Kube,
    *,
    namespace: str,
    lineage: str,
    cycle: str,
    uri: str,
    content_hash: str | None,
    parent: str | None,
    scores: Mapping[str, float],
) -> str:
    """Record ``cycle``'s candidate as the next generation (state Candidate); return its name.

    Idempotent by cycle name: calling it again returns the same generation.
    ``parent`` is the generation the cycle trained from (its
    ``status.baseGeneration``); promotion later requires it to still be the
    champion.  Raises :class:`LineageNotFound`.
    """
    now = utcnow()
    name: list[str] = []

    action = RecordCandidate(lineage=lineage, parent=parent, uri=uri, content_hash=content_hash, scores=dict(scores))

    def rule(lin: ModelLineage) -> ModelLineageStatus:
        change = rules.apply_lineage_action(lin, action, cycle=cycle, now=now)
        assert change.generation is not None
        name[:] = [change.generation]  # the last run of the rule is the one that was written
        return change.status

    await update_lineage(kube, namespace=namespace, lineage=lineage, rule=rule)
    return name[-1]


async def promote(kube: Kube, *, namespace: str, lineage: str, cycle: str) -> rules.Promotion:
    """Make ``cycle``'s candidate the champion (compare-and-set on the parent); see :func:`reverie.core.lineage.promote`.

    Returns the :class:`~reverie.core.lineage.Promotion`: ``.promoted`` says
    whether the cycle succeeded, ``.kind``/``.message`` why not.  On a champion
    change it counts the promotion, posts a ``Promoted`` Event on the lineage
    and hands the new champion to the serving target.  Raises
    :class:`LineageNotFound`.
    """
    now = utcnow()
    outcome: list[rules.Promotion] = []

    def rule(lin: ModelLineage) -> ModelLineageStatus:
        change = rules.apply_lineage_action(lin, Promote(lineage=lineage, generation="", scores={}), cycle=cycle, now=now)
        assert change.promotion is not None
        outcome[:] = [change.promotion]
        return change.status

    written = await update_lineage(kube, namespace=namespace, lineage=lineage, rule=rule)
    result = outcome[-1]
    lin = parse_lineage(written)
    export_champion(namespace=namespace, lineage=lineage, status=lin.status)
    if result.changed:
        metrics.promotions_total.labels(namespace=namespace, lineage=lineage).inc()
        await emit_event(kube, written, reason="Promoted", message=result.message)
        # Imported here: serving imports this module's helpers.
        from reverie.controller.serving import sync_serving

        await sync_serving(kube, namespace=namespace, lineage=lineage)
    elif not result.promoted:
        await emit_event(kube, written, reason=result.kind, message=result.message, type="Warning")
    return result


async def reject(kube: Kube, *, namespace: str, lineage: str, cycle: str, reason: str | None = None) -> None:
    """Mark ``cycle``'s candidate Rejected (no-op if it recorded none). Raises :class:`LineageNotFound`."""
    now = utcnow()
    action = Reject(lineage=lineage, generation="", reason=reason or "Rejected")
    await update_lineage(
        kube, namespace=namespace, lineage=lineage,
        rule=lambda lin: rules.apply_lineage_action(lin, action, cycle=cycle, now=now).status,
    )


async def apply_action(kube: Kube, *, namespace: str, cycle: str, action: ClaimLineage | ReleaseLineage,
                       holder_finished: bool = False) -> ModelLineage:
    """Claim or release the lineage for ``cycle`` (status.activeCycle); returns the lineage as written."""
    now = utcnow()
    written = await update_lineage(
        kube, namespace=namespace, lineage=action.lineage,
        rule=lambda lin: rules.apply_lineage_action(lin, action, cycle=cycle, now=now,
                                                    holder_finished=holder_finished).status,
    )
    return parse_lineage(written)


def observe_gate(
    *,
    namespace: str,
    lineage: str,
    decision: GateDecision,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
) -> None:
    """Metrics of one gate decision: the decision counter and the compared scores.

    Call once per decision (when the cycle's status first records it), not on
    every reconcile, or the counter over-counts.
    """
    metrics.gate_decisions_total.labels(namespace=namespace, lineage=lineage, outcome=decision.outcome).inc()
    for role, scores in (("candidate", candidate), ("champion", champion or {})):
        for metric, value in scores.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics.eval_score.labels(namespace=namespace, lineage=lineage, metric=metric, role=role).set(value)


# Which generation each lineage's champion_info series currently names, so the
# old series is removed when the champion changes (one series per lineage).
_champion_series: dict[tuple[str, str], str] = {}


def export_champion(*, namespace: str, lineage: str, status: ModelLineageStatus) -> None:
    """Set champion_info / champion_generation / last_promotion_timestamp_seconds from a status."""
    key = (namespace, lineage)
    previous = _champion_series.get(key)
    if previous is not None and previous != status.champion:
        with contextlib.suppress(KeyError):
            metrics.champion_info.remove(namespace, lineage, previous)
    if status.champion is None:
        _champion_series.pop(key, None)
        return
    metrics.champion_info.labels(namespace=namespace, lineage=lineage, generation=status.champion).set(1)
    _champion_series[key] = status.champion
    number = rules.generation_number(status.champion)
    if number is not None:
        metrics.champion_generation.labels(namespace=namespace, lineage=lineage).set(number)
    if status.last_promotion_time is not None:
        metrics.last_promotion_timestamp_seconds.labels(namespace=namespace, lineage=lineage).set(
            status.last_promotion_time.timestamp()
        )


def forget_lineage(*, namespace: str, lineage: str) -> None:
    """Drop a deleted lineage's per-lineage gauges."""
    previous = _champion_series.pop((namespace, lineage), None)
    for gauge, labels in (
        (metrics.champion_info, (namespace, lineage, previous)),
        (metrics.champion_generation, (namespace, lineage)),
        (metrics.last_promotion_timestamp_seconds, (namespace, lineage)),
    ):
        if None in labels:
            continue
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)


async def emit_event(kube: Kube, obj: Obj, *, reason: str, message: str, type: str = "Normal") -> None:
    """Post a core/v1 Event about ``obj``; best effort (an Event is never worth failing a promotion)."""
    meta = obj.get("metadata", {})
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'reverie')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
            "namespace": meta.get("namespace"), "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type,
        "source": {"component": "reverie-operator"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": "reverie-operator",
    }
    try:
        await kube.create(EVENTS, meta.get("namespace"), event)
    except ApiError as exc:
        log.warning("could not post event %s on %s: %s", reason, meta.get("name"), exc)
