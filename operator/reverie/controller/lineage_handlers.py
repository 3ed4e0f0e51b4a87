"""Kopf handlers of ModelLineage: generation 0, the rollback pin, serving and the schedule.

One level-based :func:`reconcile_lineage` runs on create, resume, every spec
change and on a timer.  It applies the pure rules of
:func:`reverie.core.lineage.reconcile` with optimistic concurrency (generation
0 recorded, ``spec.rollbackTo`` enforced, conditions ``Ready``/``RolledBack``),
hands the champion to the serving target when it differs
(:func:`reverie.controller.serving.sync_serving`), exports the champion
metrics, and, on the timer, runs the schedule
(:func:`reverie.core.schedule.plan_schedule`): creates the due
SleepCycle (deterministic name, so a repeat meets 409), deletes replaced and
old finished cycles, records ``lastScheduleTime`` and ``MissedSchedule``.  A
lineage with a memory inbox is counted on every tick
(:mod:`reverie.controller.inbox_watch`), and a due run with nothing new in its
inbox is skipped (``NothingToConsolidate``).

Promotion itself is driven by the SleepCycle handlers through
:mod:`reverie.controller.promotion`; this module only follows its results.

The handlers are registered into Kopf's default registry on import (so
``kopf run -m reverie.controller.lineage_handlers`` or an import from the
operator's main module is enough); :func:`register` puts them into any other
registry (tests run them alone that way).  ``REVERIE_LINEAGE_INTERVAL_S``
(default 30) sets the timer interval.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from reverie import GROUP, VERSION
from reverie.api.lineage import LineageCondition, ModelLineage
from reverie.controller import inbox_watch, metrics
from reverie.controller.events import emit_event
from reverie.controller.kube import MODELLINEAGES, SLEEPCYCLES, ApiError, Kube, Obj, mutate_status
from reverie.controller.lineage_status import known_status, parse_lineage, status_body, utcnow
from reverie.controller.promotion import export_champion, forget_lineage
from reverie.controller.serving import sync_serving
from reverie.core import lineage as rules
from reverie.core.conditions import get_condition, set_condition
from reverie.core.lineage import inbox_of
from reverie.core.schedule import (
    SCHEDULED_BY_LABEL,
    CycleInfo,
    ScheduleError,
    SchedulePlan,
    plan_schedule,
    render_cycle,
)
from reverie.core.schedule import validate as validate_schedule
from reverie.workloads.store.store import StoreError

log = logging.getLogger(__name__)

PLURAL = "modellineages"
DEFAULT_INTERVAL_S = float(os.environ.get("REVERIE_LINEAGE_INTERVAL_S", "30"))

# The clock of the schedule; tests replace it to stand at a scheduled time.
clock: Callable[[], datetime] = utcnow

_kube: Kube | None = None


def use_kube(kube: Kube | None) -> None:
    """Share the operator's API client (main calls this); None drops it."""
    global _kube
    _kube = kube


def kube() -> Kube:
    """The API client: the one shared by main, else one from the kubeconfig / in-cluster config."""
    global _kube
    if _kube is None:
        _kube = Kube.from_kubeconfig(os.environ.get("KUBECONFIG") or None)
    return _kube


# --- reconcile -----------------------------------------------------------------
async def reconcile_lineage(api: Kube, *, namespace: str, name: str) -> Obj | None:
    """Generation 0, rollback pin, conditions, metrics and serving of one lineage; returns it as written."""
    now = utcnow()
    outcome: list[rules.Rollback | None] = [None]

    def mutate(obj: Obj) -> dict[str, Any] | None:
        lin = parse_lineage(obj)
        new, result = rules.reconcile(lin, now=now, schedule_problem=schedule_problem(lin))
        outcome[:] = [result]
        if new == lin.status:
            return None
        return status_body(obj.get("status") or {}, new)

    before = await api.get_or_none(MODELLINEAGES, namespace, name)
    if before is None:
        return None
    old = parse_lineage(before)
    written = await mutate_status(api, MODELLINEAGES, namespace=namespace, name=name, mutate=mutate)
    if written is None:
        return None
    lin = parse_lineage(written)
    result = outcome[-1]
    if result is not None and result.changed:
        metrics.rollbacks_total.labels(namespace=namespace, lineage=name).inc()
        await emit_event(api, written, reason="RolledBack", message=result.message)
    elif result is not None and not result.ok:
        prior = get_condition(old.status.conditions, LineageCondition.ROLLED_BACK)
        if prior is None or prior.reason != result.kind:
            await emit_event(api, written, reason=result.kind, message=result.message, type="Warning")
    ready, was = (
        get_condition(lin.status.conditions, LineageCondition.READY),
        get_condition(old.status.conditions, LineageCondition.READY),
    )
    if ready is not None and ready.reason == "InvalidSchedule" and (was is None or was.reason != ready.reason):
        await emit_event(api, written, reason="InvalidSchedule", message=ready.message, type="Warning")
    export_champion(namespace=namespace, lineage=name, status=lin.status)
    if lin.spec.serving_target is not None and lin.status.champion_uri is not None:
        await sync_serving(api, namespace=namespace, lineage=name)
    return written


def schedule_problem(lineage: ModelLineage) -> str | None:
    """What is wrong with the lineage's cron expression or time zone, or None."""
    if lineage.spec.schedule is None:
        return None
    try:
        validate_schedule(lineage.spec.schedule)
    except ScheduleError as err:
        return str(err)
    return None


# --- schedule --------------------------------------------------------------------
def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def cycle_info(obj: Obj) -> CycleInfo:
    """What the schedule needs from a SleepCycle object."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    return CycleInfo(
        name=meta["name"],
        phase=status.get("phase") or "Pending",
        scheduled=SCHEDULED_BY_LABEL in (meta.get("labels") or {}),
        created=_parse_time(meta.get("creationTimestamp")) or utcnow(),
        finished=_parse_time(status.get("completionTime")),
    )


async def run_schedule(api: Kube, *, namespace: str, name: str, now: datetime | None = None) -> SchedulePlan | None:
    """Apply the lineage's schedule at ``now``: create/delete cycles, record lastScheduleTime and MissedSchedule."""
    obj = await api.get_or_none(MODELLINEAGES, namespace, name)
    if obj is None:
        return None
    lin = parse_lineage(obj)
    sched = lin.spec.schedule
    if sched is None:
        return None
    now = now or clock()
    cycles = [c for c in await api.list(SLEEPCYCLES, namespace) if (c.get("spec") or {}).get("lineageRef") == name]
    created = _parse_time(obj["metadata"].get("creationTimestamp")) or now
    try:
        plan = plan_schedule(
            sched,
            lineage=name,
            created=created,
            last_schedule_time=lin.status.last_schedule_time,
            cycles=[cycle_info(c) for c in cycles],
            now=now,
        )
    except ScheduleError as err:
        await _record_schedule(
            api, namespace=namespace, name=name, last=None, missed=("InvalidSchedule", str(err)), now=now
        )
        return None
    for victim in plan.delete:
        # Finished cycles' generations and artifacts stay in the lineage and the store.
        if await api.delete(SLEEPCYCLES, namespace, victim):
            log.info("schedule of %s/%s deleted cycle %s", namespace, name, victim)
    if plan.create is not None and plan.scheduled_time is not None and inbox_of(lin) is not None:
        try:
            new = await inbox_watch.count_new(lin)
        except (StoreError, OSError) as exc:
            # The run stays due (lastScheduleTime is not moved): the next timer tries again.
            log.warning("schedule of %s/%s waits: its inbox cannot be read (%s)", namespace, name, exc)
            return plan
        if new is not None and new.count == 0:
            await inbox_watch.record_skip(api, obj, scheduled=plan.scheduled_time, now=now)
            await _record_schedule(
                api, namespace=namespace, name=name, last=plan.last_schedule_time, missed=None, now=now
            )
            return replace(plan, create=None, skipped=inbox_watch.NOTHING_TO_CONSOLIDATE)
    if plan.create is not None and plan.scheduled_time is not None:
        template = ((obj.get("spec") or {}).get("schedule") or {}).get("template") or {}
        body = render_cycle(
            lineage=name,
            namespace=namespace,
            lineage_uid=obj["metadata"].get("uid"),
            template=template,
            name=plan.create,
            scheduled=plan.scheduled_time,
            inbox=inbox_of(lin) is not None,
        )
        try:
            _, fresh = await api.create_or_get(SLEEPCYCLES, namespace, body)
        except ApiError as exc:
            await _record_schedule(
                api,
                namespace=namespace,
                name=name,
                last=None,
                missed=("CreateFailed", f"creating SleepCycle {plan.create} failed: {exc.message}"),
                now=now,
            )
            return plan
        if fresh:
            await emit_event(
                api,
                obj,
                reason="ScheduledCycle",
                message=f"created SleepCycle {plan.create} for {plan.scheduled_time:%Y-%m-%dT%H:%M:%SZ}",
            )
    missed = ("MissedRuns", plan.missed_message) if plan.missed_message else None
    if missed and plan.create is None:
        await emit_event(api, obj, reason="MissedSchedule", message=plan.missed_message or "", type="Warning")
    await _record_schedule(
        api,
        namespace=namespace,
        name=name,
        last=plan.last_schedule_time,
        missed=missed,
        now=now,
        started=plan.create is not None,
    )
    return plan


async def _record_schedule(
    api: Kube,
    *,
    namespace: str,
    name: str,
    last: datetime | None,
    missed: tuple[str, str] | None,
    now: datetime,
    started: bool = False,
) -> None:
    stamp = now.replace(microsecond=0)

    def mutate(obj: Obj) -> dict[str, Any] | None:
        lin = ModelLineage.model_validate({**obj, "status": known_status(obj.get("status") or {})})
        new = lin.status.model_copy(deep=True)
        if last is not None and (new.last_schedule_time is None or last > new.last_schedule_time):
            new.last_schedule_time = last
        if missed is not None:
            new.conditions = set_condition(
                new.conditions, LineageCondition.MISSED_SCHEDULE, True, reason=missed[0], message=missed[1], now=stamp
            )
        elif started and get_condition(new.conditions, LineageCondition.MISSED_SCHEDULE) is not None:
            new.conditions = set_condition(
                new.conditions,
                LineageCondition.MISSED_SCHEDULE,
                False,
                reason="OnSchedule",
                message="the latest scheduled run started on time",
                now=stamp,
            )
        if new == lin.status:
            return None
        return status_body(obj.get("status") or {}, new)

    await mutate_status(api, MODELLINEAGES, namespace=namespace, name=name, mutate=mutate)


# --- Kopf wiring -----------------------------------------------------------------
async def _on_cleanup(**_: Any) -> None:
    global _kube
    if _kube is not None:
        await _kube.close()
        _kube = None


async def _on_change(*, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # ModelLineage is namespaced
    await reconcile_lineage(kube(), namespace=namespace, name=name)


async def _on_timer(*, name: str, namespace: str | None, spec: kopf.Spec, **_: Any) -> None:
    assert namespace is not None
    api = kube()
    written = await reconcile_lineage(api, namespace=namespace, name=name)
    if written is not None and (spec.get("memory") or {}).get("inbox") is not None:
        await inbox_watch.observe_inbox(api, written, now=clock())
    if spec.get("schedule"):
        await run_schedule(api, namespace=namespace, name=name)


async def _on_delete(*, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    forget_lineage(namespace=namespace, lineage=name)
    inbox_watch.forget_inbox(namespace=namespace, lineage=name)


def register(registry: kopf.OperatorRegistry, *, interval: float = DEFAULT_INTERVAL_S) -> None:
    """Put the ModelLineage handlers into ``registry``."""
    res = (GROUP, VERSION, PLURAL)
    kopf.on.cleanup(registry=registry, id="lineage-client")(_on_cleanup)
    kopf.on.resume(*res, registry=registry, id="lineage-resume")(_on_change)
    kopf.on.create(*res, registry=registry, id="lineage-create")(_on_change)
    kopf.on.update(*res, registry=registry, id="lineage-update", field="spec")(_on_change)
    kopf.timer(*res, registry=registry, id="lineage-timer", interval=interval, initial_delay=min(interval, 1.0))(
        _on_timer
    )
    kopf.on.delete(*res, registry=registry, id="lineage-delete", optional=True)(_on_delete)


register(kopf.get_default_registry())
