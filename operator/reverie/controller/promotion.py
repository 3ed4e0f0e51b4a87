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
from collections.abc import Mapping

from reverie.api.lineage import ModelLineage, ModelLineageStatus
from reverie.api.sleepcycle import GateDecision
from reverie.controller import metrics
from reverie.controller.events import emit_event
from reverie.controller.kube import Kube, Obj
from reverie.controller.lineage_status import parse_lineage, update_lineage, utcnow
from reverie.controller.serving import sync_serving
from reverie.core import lineage as rules
from reverie.core.actions import ClaimLineage, Promote, RecordCandidate, Reject, ReleaseLineage


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
        change = rules.apply_lineage_action(
            lin, Promote(lineage=lineage, generation="", scores={}), cycle=cycle, now=now
        )
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
        await sync_serving(kube, namespace=namespace, lineage=lineage)
    elif not result.promoted:
        await emit_event(kube, written, reason=result.kind, message=result.message, type="Warning")
    return result


async def reject(kube: Kube, *, namespace: str, lineage: str, cycle: str, reason: str | None = None) -> None:
    """Mark ``cycle``'s candidate Rejected (no-op if it recorded none). Raises :class:`LineageNotFound`."""
    now = utcnow()
    action = Reject(lineage=lineage, generation="", reason=reason or "Rejected")
    await update_lineage(
        kube,
        namespace=namespace,
        lineage=lineage,
        rule=lambda lin: rules.apply_lineage_action(lin, action, cycle=cycle, now=now).status,
    )


async def apply_action(
    kube: Kube, *, namespace: str, cycle: str, action: ClaimLineage | ReleaseLineage, holder_finished: bool = False
) -> ModelLineage:
    """Claim or release the lineage for ``cycle`` (status.activeCycle); returns the lineage as written."""
    now = utcnow()
    written = await update_lineage(
        kube,
        namespace=namespace,
        lineage=action.lineage,
        rule=lambda lin: (
            rules.apply_lineage_action(lin, action, cycle=cycle, now=now, holder_finished=holder_finished).status
        ),
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
