"""The SleepCycle metrics a reconcile pass exports (names in :mod:`reverie.controller.metrics`).

Counters and histograms move only on a transition this pass observed (old
status -> new status), so a repeated pass never counts twice; the per-cycle
phase gauge follows the phase and is removed when the cycle finishes or goes.
"""

from __future__ import annotations

import contextlib

from reverie.api.sleepcycle import (
    TERMINAL_PHASES,
    AttemptRecord,
    Phase,
    SleepCycle,
    SleepCycleStatus,
    Step,
    StepResult,
)
from reverie.controller import metrics, promotion
from reverie.core.observed import ObservedJob

CONTROLLER = "sleepcycle"


def export_cycle(
    cycle: SleepCycle, new: SleepCycleStatus, *, shown_phase: str | None, observed: list[ObservedJob]
) -> str:
    """Update the metrics of one reconcile pass; returns the phase now exported (pass it back next time).

    ``shown_phase`` is the phase this process last exported for the cycle (None: none yet).
    """
    ns, name, lin = cycle.metadata.namespace, cycle.metadata.name, cycle.spec.lineage_ref
    old = cycle.status
    phase = Phase(new.phase)
    if shown_phase != phase.value:
        if shown_phase is not None:
            with contextlib.suppress(KeyError):
                metrics.cycle_phase.remove(ns, lin, name, shown_phase)
        if phase in TERMINAL_PHASES:
            with contextlib.suppress(KeyError):
                metrics.cycle_phase.remove(ns, lin, name, phase.value)
        else:
            metrics.cycle_phase.labels(namespace=ns, lineage=lin, cycle=name, phase=phase.value).set(1)
    if phase in TERMINAL_PHASES and Phase(old.phase) not in TERMINAL_PHASES:
        metrics.cycles_total.labels(namespace=ns, lineage=lin, outcome=phase.value).inc()
        if new.start_time and new.completion_time:
            metrics.cycle_duration_seconds.labels(outcome=phase.value).observe(
                (new.completion_time - new.start_time).total_seconds()
            )
    before = {(r.step, r.attempt): r for r in old.records}
    budget = cycle.spec.retries.max_attempts
    jobs = {(o.step, o.attempt): o for o in observed}
    for rec in new.records:
        prev = before.get((rec.step, rec.attempt))
        _record_step(rec, prev, budget=budget, records=new.records)
        if (
            rec.step == Step.CONSOLIDATION
            and rec.result == StepResult.SUCCEEDED
            and (prev is None or prev.result != StepResult.SUCCEEDED)
        ):
            _record_sleep_cost(rec, namespace=ns, lineage=lin)
        obs = jobs.get((Step(rec.step), rec.attempt))
        final = (StepResult.SUCCEEDED, StepResult.FAILED)
        if (
            rec.result in final
            and (prev is None or prev.result not in final)
            and obs is not None
            and obs.created
            and obs.started
        ):
            # Job created → its pods started: Kueue admission plus scheduling.
            metrics.phase_queue_wait_seconds.labels(step=Step(rec.step).value).observe(
                max(0.0, (obs.started - obs.created).total_seconds())
            )
    if new.gate is not None and old.gate is None:
        promotion.observe_gate(
            namespace=ns,
            lineage=lin,
            decision=new.gate,
            candidate=new.evaluation,
            champion=new.champion_evaluation or None,
        )
    return phase.value


def _record_step(rec: AttemptRecord, prev: AttemptRecord | None, *, budget: int, records: list[AttemptRecord]) -> None:
    step = Step(rec.step).value
    final = (StepResult.SUCCEEDED, StepResult.FAILED)
    if rec.result in final and (prev is None or prev.result not in final):
        if rec.start_time and rec.completion_time:
            metrics.phase_duration_seconds.labels(step=step, result=StepResult(rec.result).value).observe(
                max(0.0, (rec.completion_time - rec.start_time).total_seconds())
            )
        if rec.result == StepResult.FAILED:
            metrics.phase_failures_total.labels(step=step, reason=rec.reason or "Unknown").inc()
            failed = sum(1 for r in records if r.step == rec.step and r.result == StepResult.FAILED)
            if failed < budget:
                metrics.phase_retries_total.labels(step=step, reason=rec.reason or "Unknown").inc()


# The phase result's metric behind each stage of reverie_sleep_stage_seconds.
SLEEP_STAGES = {"selfstudy": "selfstudy_seconds", "replay_probe": "replay_probe_seconds", "training": "seconds"}


def _record_sleep_cost(rec: AttemptRecord, *, namespace: str, lineage: str) -> None:
    """Export what the consolidation that just succeeded cost: seconds per stage, replay items and bytes."""
    for stage, key in SLEEP_STAGES.items():
        if key in rec.metrics:
            metrics.sleep_stage_seconds.labels(namespace=namespace, lineage=lineage, stage=stage).set(rec.metrics[key])
    if "replay_earlier_items" in rec.metrics:
        metrics.sleep_replay_items.labels(namespace=namespace, lineage=lineage).set(rec.metrics["replay_earlier_items"])
    if "replay_bytes" in rec.metrics:
        metrics.sleep_replay_bytes.labels(namespace=namespace, lineage=lineage).set(rec.metrics["replay_bytes"])


def forget_cycle(*, namespace: str, lineage: str, name: str, shown_phase: str | None) -> None:
    """Drop a deleted cycle's phase gauge."""
    if shown_phase is not None:
        with contextlib.suppress(KeyError):
            metrics.cycle_phase.remove(namespace, lineage, name, shown_phase)
