"""The SleepCycle reconciler: observe, plan, write status, act.

Every trigger — the cycle created or resumed at start-up, its spec or
annotations changed, one of its Jobs changed, a requeue timer, the periodic
resync — ends in the same level-based :meth:`Reconciler.reconcile`:

1. read the cycle, its child workloads (Jobs, or TrainJobs/JobSets) and, only
   when an attempt just finished, their pods (the termination messages), and
   the ModelLineage — fresh from the API server, never from a cache;
2. :func:`reverie.core.planner.plan` decides the status and the actions;
3. the status is written (status subresource) together with the creates, and
   before every other action, so a crash in between leaves an intent (or a
   Job) the next pass completes; creates meet 409 on a repeat, deletes 404;
4. after an action that changed the lineage (claim, record, promote, reject),
   or fixed an inbox cycle's memories in the store, the cycle is planned again
   at once against the fresh state.

Reconciles of one cycle never overlap and at most ``max_concurrent`` cycles
reconcile at once (:mod:`reverie.controller.workqueue`); the metrics of a pass
are exported by :mod:`reverie.controller.cycle_metrics`; the Kopf handlers that
trigger it are in :mod:`reverie.controller.cycle_handlers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reverie.api.base import Engine
from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import (
    TERMINAL_PHASES,
    CycleReason,
    Phase,
    SleepCycle,
    SleepCycleStatus,
    StepResult,
)
from reverie.controller import cycle_metrics, lineage_status, metrics, promotion
from reverie.controller.events import emit_event
from reverie.controller.jobs import LABEL_CYCLE, Owner, observe, render
from reverie.controller.kube import (
    CONFIGMAPS,
    JOBS,
    JOBSETS,
    MODELLINEAGES,
    PODS,
    SERVICES,
    SLEEPCYCLES,
    TRAINJOBS,
    Kube,
    Obj,
    Resource,
)
from reverie.controller.options import Options
from reverie.controller.workqueue import WorkQueue
from reverie.core import lineage as rules
from reverie.core.observed import JobState, ObservedJob
from reverie.core.planner import (
    ClaimLineage,
    CreateJob,
    DeleteCycle,
    DeleteJob,
    EmitEvent,
    Plan,
    Promote,
    RecordCandidate,
    Reject,
    ReleaseLineage,
    RequeueAfter,
    TakeMemories,
    plan,
)
from reverie.workloads.data import inbox

log = logging.getLogger(__name__)

ENGINE_RESOURCES = {Engine.JOB: JOBS, Engine.TRAINJOB: TRAINJOBS, Engine.JOBSET: JOBSETS}
# Re-plan at most this often in one pass after lineage actions (claim → record → promote → done).
MAX_PASSES = 5


@dataclass
class Seen:
    """What this process remembers of a cycle between passes (only for metrics and wake-ups)."""

    lineage: str = ""
    phase: str | None = None
    terminal: bool = False
    written_rv: str | None = None
    reconciled_at: float = 0.0  # time.monotonic() of the last pass that completed


@dataclass
class Reconciler:
    """Runs reconciles: one at a time per cycle, a bounded number at once, with requeues."""

    kube: Kube
    options: Options = field(default_factory=Options)
    clock: Callable[[], datetime] = lineage_status.utcnow
    seen: dict[tuple[str, str], Seen] = field(default_factory=dict)
    _engines: dict[str, bool] = field(default_factory=dict)
    last_resync: float = field(default_factory=time.monotonic)
    queue: WorkQueue = field(init=False)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self.reconcile_once, max_concurrent=self.options.max_concurrent)

    # --- scheduling ---------------------------------------------------------
    def trigger(self, namespace: str, name: str) -> None:
        """Reconcile soon; coalesces with a pass already running."""
        self.queue.trigger(namespace, name)

    def requeue(self, namespace: str, name: str, seconds: float) -> None:
        self.queue.requeue(namespace, name, seconds)

    def forget(self, namespace: str, name: str) -> None:
        seen = self.seen.pop((namespace, name), None)
        self.queue.cancel_requeue(namespace, name)
        if seen is not None:
            cycle_metrics.forget_cycle(namespace=namespace, lineage=seen.lineage, name=name, shown_phase=seen.phase)

    async def reconcile_once(self, namespace: str, name: str) -> None:
        """One reconcile with metrics; errors are logged and retried later, never raised."""
        start = time.monotonic()
        try:
            await self.reconcile(namespace, name)
            metrics.reconcile_total.labels(controller=cycle_metrics.CONTROLLER, result="success").inc()
            if (seen := self.seen.get((namespace, name))) is not None:
                seen.reconciled_at = time.monotonic()
        except Exception:
            log.exception("reconcile of SleepCycle %s/%s failed; retrying", namespace, name)
            metrics.reconcile_total.labels(controller=cycle_metrics.CONTROLLER, result="error").inc()
            metrics.reconcile_errors_total.labels(controller=cycle_metrics.CONTROLLER).inc()
            self.requeue(namespace, name, min(30.0, self.options.resync_seconds))
        finally:
            metrics.reconcile_duration_seconds.labels(controller=cycle_metrics.CONTROLLER).observe(
                time.monotonic() - start
            )

    async def resync_forever(self) -> None:
        """The level-based backstop: every live cycle is reconciled at least this often."""
        while True:
            await asyncio.sleep(self.options.resync_seconds)
            self.last_resync = now = time.monotonic()
            for (ns, name), seen in list(self.seen.items()):
                # A cycle reconciled within the interval (by an event) needs no extra pass:
                # at 200 live cycles blind resyncs would crowd out the passes that matter.
                if not seen.terminal and now - seen.reconciled_at >= self.options.resync_seconds:
                    self.trigger(ns, name)

    def healthy(self) -> bool:
        return time.monotonic() - self.last_resync < 3 * self.options.resync_seconds + 30

    # --- one reconcile ------------------------------------------------------------
    async def reconcile(self, namespace: str, name: str) -> None:
        for _ in range(MAX_PASSES):
            if not await self._pass(namespace, name):
                return

    async def _pass(self, namespace: str, name: str) -> bool:
        """Observe, plan, write, act; True if the lineage changed and we should plan again."""
        obj = await self.kube.get_or_none(SLEEPCYCLES, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return False
        cycle = SleepCycle.model_validate(obj)
        key = (namespace, name)
        seen = self.seen.setdefault(key, Seen())
        seen.lineage = cycle.spec.lineage_ref
        old_phase = Phase(cycle.status.phase)
        if old_phase in TERMINAL_PHASES and seen.terminal and cycle.spec.ttl_seconds_after_finished is None:
            return False  # nothing left to do for this one
        lineage_obj, (observed, kinds) = await asyncio.gather(
            self.kube.get_or_none(MODELLINEAGES, namespace, cycle.spec.lineage_ref),
            self._observe(cycle),
        )
        lineage = lineage_status.parse_lineage(lineage_obj) if lineage_obj is not None else None
        now = self.clock()
        result = plan(cycle, observed=observed, lineage=lineage, now=now)
        result = await self._check_engines(cycle, result, observed=observed, lineage=lineage, now=now)
        # The status write and the creates go out together: with deterministic names both
        # orders are safe (a Job without its record is adopted, a record without its Job is
        # re-created), and the transition costs one API round trip instead of two.  Deletes
        # wait for the status write: a Job deleted for suspension must never read as lost.
        creates = [a for a in result.actions if isinstance(a, CreateJob)]
        writes: list[Any] = [self._create(a, obj=obj, cycle=cycle, lineage=lineage) for a in creates]
        if result.status != cycle.status:
            writes.insert(
                0,
                self.kube.merge_patch(
                    SLEEPCYCLES,
                    namespace,
                    name,
                    {"status": _status_patch(result.status)},
                    subresource="status",
                ),
            )
        done = await asyncio.gather(*writes)
        if result.status != cycle.status:
            seen.written_rv = done[0]["metadata"]["resourceVersion"]
        seen.phase = cycle_metrics.export_cycle(cycle, result.status, shown_phase=seen.phase, observed=observed)
        lineage_changed = False
        # Deletes next, lineage actions after, Events last and concurrently.
        events = [a for a in result.actions if isinstance(a, EmitEvent)]
        ordered = sorted(
            (a for a in result.actions if not isinstance(a, EmitEvent | CreateJob)),
            key=lambda a: 0 if isinstance(a, DeleteJob) else 1,
        )
        for action in ordered:
            if await self._apply(action, obj=obj, cycle=cycle, lineage=lineage, kinds=kinds):
                lineage_changed = True
        await asyncio.gather(*(self._event(obj, e) for e in events))
        # Only now, with every action applied, is a finished cycle really done (lineage released).
        seen.terminal = Phase(result.status.phase) in TERMINAL_PHASES
        return lineage_changed

    async def _observe(self, cycle: SleepCycle) -> tuple[list[ObservedJob], dict[str, Resource]]:
        ns, name = cycle.metadata.namespace, cycle.metadata.name
        selector = f"{LABEL_CYCLE}={name}"
        workloads: list[Obj] = []
        kinds: dict[str, Resource] = {}
        engines = {
            Engine(r.engine)
            for r in (cycle.spec.consolidation.runtime, cycle.spec.dreaming.runtime, cycle.spec.evaluation.runtime)
        }
        for engine in sorted(engines | {Engine.JOB}):
            res = ENGINE_RESOURCES[engine]
            if engine != Engine.JOB and not await self._engine_available(res):
                continue
            for item in await self.kube.list(res, ns, label_selector=selector):
                workloads.append(item)
                kinds[item["metadata"]["name"]] = res
        observed = observe(workloads, [])
        # Pods are read only when an attempt finished and its record is not final yet:
        # that is the one moment the termination message matters.
        final = {
            (r.step, r.attempt) for r in cycle.status.records if r.result in (StepResult.SUCCEEDED, StepResult.FAILED)
        }
        if any(o.state != JobState.ACTIVE and (o.step, o.attempt) not in final for o in observed):
            pods = await self.kube.list(PODS, ns, label_selector=selector)
            observed = observe(workloads, pods)
        return observed, kinds

    async def _engine_available(self, res: Resource) -> bool:
        if res.plural not in self._engines:
            self._engines[res.plural] = await self.kube.has_resource(res)
        return self._engines[res.plural]

    async def _check_engines(
        self,
        cycle: SleepCycle,
        result: Plan,
        *,
        observed: list[ObservedJob],
        lineage: ModelLineage | None,
        now: datetime,
    ) -> Plan:
        """A TrainJob/JobSet attempt on a cluster without that engine fails permanently, with the reason."""
        for action in result.of(CreateJob):
            assert isinstance(action, CreateJob)
            engine = Engine(action.runtime.engine)
            res = ENGINE_RESOURCES[engine]
            if engine == Engine.JOB or await self._engine_available(res):
                continue
            self._engines.pop(res.plural, None)  # look again next time: it may get installed
            msg = (
                f"spec.{action.step}.runtime.engine is {engine.value} but {res.plural}.{res.group} is not served "
                "by this cluster: install it, or use engine Job"
            )
            records = [
                r.model_copy(
                    update={
                        "result": StepResult.FAILED,
                        "reason": CycleReason.ENGINE_NOT_INSTALLED,
                        "message": msg,
                        "completion_time": now,
                    }
                )
                if r.job_name == action.job_name
                else r
                for r in result.status.records
            ]
            # Plan again from the failed record: EngineNotInstalled is permanent, so the cycle fails.
            failed = cycle.model_copy(update={"status": result.status.model_copy(update={"records": records})})
            return plan(failed, observed=observed, lineage=lineage, now=now)
        return result

    # --- actions -------------------------------------------------------------------------
    async def _apply(
        self, action: Any, *, obj: Obj, cycle: SleepCycle, lineage: ModelLineage | None, kinds: dict[str, Resource]
    ) -> bool:
        ns, name = cycle.metadata.namespace, cycle.metadata.name
        if isinstance(action, CreateJob):
            await self._create(action, obj=obj, cycle=cycle, lineage=lineage)
        elif isinstance(action, DeleteJob):
            if await self.kube.delete(kinds.get(action.job_name, JOBS), ns, action.job_name):
                log.info("deleted Job %s/%s (%s)", ns, action.job_name, action.reason)
        elif isinstance(action, EmitEvent):
            await self._event(obj, action)
        elif isinstance(action, RequeueAfter):
            self.requeue(ns, name, action.seconds)
        elif isinstance(action, DeleteCycle):
            log.info("deleting SleepCycle %s/%s: %s", ns, name, action.reason)
            await self.kube.delete(SLEEPCYCLES, ns, name)
            self.forget(ns, name)
        elif isinstance(action, ClaimLineage):
            return await self._claim(cycle, action.lineage)
        elif isinstance(action, ReleaseLineage):
            await self._release(cycle, action.lineage)
        elif isinstance(action, RecordCandidate):
            await promotion.record_candidate(
                self.kube,
                namespace=ns,
                lineage=action.lineage,
                cycle=name,
                uri=action.uri,
                content_hash=action.content_hash,
                parent=action.parent,
                scores=action.scores,
            )
            return True
        elif isinstance(action, Promote):
            await promotion.promote(self.kube, namespace=ns, lineage=action.lineage, cycle=name)
            return True
        elif isinstance(action, Reject):
            await promotion.reject(self.kube, namespace=ns, lineage=action.lineage, cycle=name, reason=action.reason)
            return False  # the cycle is already Rejected: nothing to plan against the new lineage
        elif isinstance(action, TakeMemories):
            await self._take_memories(cycle, action)
            return True
        return False

    async def _take_memories(self, cycle: SleepCycle, action: TakeMemories) -> None:
        """Fix an inbox cycle's memories in the store (written once), then record them in its status."""
        ns, name = cycle.metadata.namespace, cycle.metadata.name
        taken = await asyncio.to_thread(
            inbox.take,
            inbox_uri=action.inbox_uri,
            slept_uris=action.slept_uris,
            limit=action.limit,
            set_uri=action.set_uri,
            ledger_uri=action.ledger_uri,
            now=self.clock(),
        )
        await self.kube.merge_patch(SLEEPCYCLES, ns, name, {"status": {"memory": taken.wire()}}, subresource="status")
        log.info("SleepCycle %s/%s takes %d memories from the inbox (%s)", ns, name, taken.count, taken.uri)

    async def _create(self, action: CreateJob, *, obj: Obj, cycle: SleepCycle, lineage: ModelLineage | None) -> None:
        assert lineage is not None
        ns = cycle.metadata.namespace
        owner = Owner(name=cycle.metadata.name, namespace=ns, uid=obj["metadata"]["uid"])
        objects = render(action, owner=owner, lineage=lineage, scheduling=cycle.spec.scheduling)
        # All at once: a pod whose ConfigMap or Service is not there yet just waits for it
        # (the kubelet retries the mount), so ordering would only add round trips.
        creations = [
            self.kube.create_or_get(CONFIGMAPS, ns, objects.config_map),
            self.kube.create_or_get(ENGINE_RESOURCES[objects.engine], ns, objects.workload),
        ]
        if objects.service is not None:
            creations.append(self.kube.create_or_get(SERVICES, ns, objects.service))
        (_, (_, created), *_) = await asyncio.gather(*creations)
        if created:
            metrics.phase_attempts_total.labels(step=action.step.value).inc()
            log.info("created %s %s/%s", objects.engine.value, ns, action.job_name)

    async def _claim(self, cycle: SleepCycle, lineage: str) -> bool:
        ns, me = cycle.metadata.namespace, cycle.metadata.name
        current = await self.kube.get_or_none(MODELLINEAGES, ns, lineage)
        holder = ((current or {}).get("status") or {}).get("activeCycle")
        finished = False
        if holder and holder != me:
            other = await self.kube.get_or_none(SLEEPCYCLES, ns, holder)
            finished = other is None or ((other.get("status") or {}).get("phase") in {p.value for p in TERMINAL_PHASES})
        # What we learnt of the holder only counts while it still holds the lineage (a 409 retry
        # may see another holder, which we know nothing about).
        action = ClaimLineage(lineage)
        try:
            written = await lineage_status.update_lineage(
                self.kube,
                namespace=ns,
                lineage=lineage,
                rule=lambda lin: (
                    rules.apply_lineage_action(
                        lin,
                        action,
                        cycle=me,
                        now=self.clock(),
                        holder_finished=finished and lin.status.active_cycle == holder,
                    ).status
                ),
            )
        except lineage_status.LineageNotFound:
            return False
        return bool((written.get("status") or {}).get("activeCycle") == me)

    async def _release(self, cycle: SleepCycle, lineage: str) -> None:
        ns, me = cycle.metadata.namespace, cycle.metadata.name
        with contextlib.suppress(lineage_status.LineageNotFound):
            await promotion.apply_action(self.kube, namespace=ns, cycle=me, action=ReleaseLineage(lineage))
        # Wake the cycles waiting for this lineage now rather than at their next requeue.
        for (wns, wname), seen in list(self.seen.items()):
            if wns == ns and wname != me and seen.lineage == lineage and seen.phase == Phase.PENDING.value:
                self.trigger(wns, wname)

    async def _event(self, obj: Obj, action: EmitEvent) -> None:
        await emit_event(
            self.kube, obj, reason=action.reason, message=action.message, type=action.type, now=self.clock()
        )


def _status_patch(status: SleepCycleStatus) -> dict[str, Any]:
    """The whole status for a merge patch: None becomes null, which removes the field."""
    return status.model_dump(by_alias=True, mode="json")
