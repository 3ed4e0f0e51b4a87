"""Kopf handlers of SleepCycle: observe, plan, write status, act.

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
4. after an action that changed the lineage (claim, record, promote, reject)
   the cycle is planned again at once against the fresh lineage.

Reconciles of one cycle never overlap (a per-cycle task; triggers that arrive
meanwhile coalesce into one more pass), and at most ``max_concurrent`` cycles
reconcile at once.  Kopf's bookkeeping lives in annotations under
``kopf.reverie.dev``; our periodic resync is a single operator-wide loop
rather than per-object Kopf timers, which would put a finalizer on every cycle
and block its deletion whenever the operator is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf

from reverie import GROUP, KOPF_PREFIX, VERSION
from reverie.api.base import Engine
from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import (
    TERMINAL_PHASES,
    Phase,
    PhaseRecord,
    SleepCycle,
    SleepCycleStatus,
    Step,
    StepResult,
)
from reverie.controller import admission, lineage_status, metrics, promotion
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
    authorization_header,
    load_configuration,
)
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
    plan,
)

log = logging.getLogger(__name__)

CONTROLLER = "sleepcycle"
ENGINE_RESOURCES = {Engine.JOB: JOBS, Engine.TRAINJOB: TRAINJOBS, Engine.JOBSET: JOBSETS}
# Re-plan at most this often in one pass after lineage actions (claim → record → promote → done).
MAX_PASSES = 5


@dataclass
class Options:
    """Operator knobs (``reverie operator`` flags; REVERIE_* env vars for ``kopf run``)."""

    resync_seconds: float = float(os.environ.get("REVERIE_RESYNC_SECONDS", "30"))
    # Reconciles are I/O-bound (a handful of sequential API calls each): many may wait at once.
    max_concurrent: int = int(os.environ.get("REVERIE_MAX_CONCURRENT_RECONCILES", "64"))
    kubeconfig: str | None = os.environ.get("REVERIE_KUBECONFIG") or os.environ.get("KUBECONFIG") or None
    # The admission webhook (controller/admission.py): off without a port.
    webhook_port: int | None = int(os.environ["REVERIE_WEBHOOK_PORT"]) if os.environ.get("REVERIE_WEBHOOK_PORT") else None
    webhook_cert_dir: str | None = os.environ.get("REVERIE_WEBHOOK_CERT_DIR") or None
    webhook_addr: str | None = os.environ.get("REVERIE_WEBHOOK_ADDR") or None  # default: every interface


@dataclass
class _Seen:
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
    seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)
    _running: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    _dirty: set[tuple[str, str]] = field(default_factory=set)
    _timers: dict[tuple[str, str], tuple[float, asyncio.TimerHandle]] = field(default_factory=dict)
    _engines: dict[str, bool] = field(default_factory=dict)
    _sem: asyncio.Semaphore | None = None
    last_resync: float = field(default_factory=time.monotonic)

    # --- scheduling ---------------------------------------------------------
    def trigger(self, namespace: str, name: str) -> None:
        """Reconcile soon; coalesces with a pass already running."""
        key = (namespace, name)
        if key in self._running:
            self._dirty.add(key)
            return
        self._running[key] = asyncio.get_running_loop().create_task(self._run(key), name=f"reconcile {namespace}/{name}")

    def requeue(self, namespace: str, name: str, seconds: float) -> None:
        key = (namespace, name)
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, seconds)
        current = self._timers.get(key)
        if current is not None and current[0] <= due:
            return
        if current is not None:
            current[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key))

    def _fire(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        self.trigger(*key)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        seen = self.seen.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        if seen is not None and seen.phase is not None:
            with contextlib.suppress(KeyError):
                metrics.cycle_phase.remove(namespace, seen.lineage, name, seen.phase)

    async def _run(self, key: tuple[str, str]) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.options.max_concurrent)
        try:
            while True:
                self._dirty.discard(key)
                async with self._sem:
                    await self.reconcile_once(*key)
                if key not in self._dirty:
                    break
        finally:
            self._running.pop(key, None)

    async def reconcile_once(self, namespace: str, name: str) -> None:
        """One reconcile with metrics; errors are logged and retried later, never raised."""
        start = time.monotonic()
        try:
            await self.reconcile(namespace, name)
            metrics.reconcile_total.labels(controller=CONTROLLER, result="success").inc()
            if (seen := self.seen.get((namespace, name))) is not None:
                seen.reconciled_at = time.monotonic()
        except Exception:
            log.exception("reconcile of SleepCycle %s/%s failed; retrying", namespace, name)
            metrics.reconcile_total.labels(controller=CONTROLLER, result="error").inc()
            metrics.reconcile_errors_total.labels(controller=CONTROLLER).inc()
            self.requeue(namespace, name, min(30.0, self.options.resync_seconds))
        finally:
            metrics.reconcile_duration_seconds.labels(controller=CONTROLLER).observe(time.monotonic() - start)

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
        seen = self.seen.setdefault(key, _Seen())
        seen.lineage = cycle.spec.lineage_ref
        old_phase = Phase(cycle.status.phase)
        if old_phase in TERMINAL_PHASES and seen.terminal and cycle.spec.ttl_seconds_after_finished is None:
            return False  # nothing left to do for this one
        lineage_obj, (observed, kinds) = await asyncio.gather(
            self.kube.get_or_none(MODELLINEAGES, namespace, cycle.spec.lineage_ref), self._observe(cycle),
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
            writes.insert(0, self.kube.merge_patch(
                SLEEPCYCLES, namespace, name, {"status": _status_patch(result.status)}, subresource="status",
            ))
        done = await asyncio.gather(*writes)
        if result.status != cycle.status:
            seen.written_rv = done[0]["metadata"]["resourceVersion"]
        self._export(cycle, result.status, seen, observed=observed)
        lineage_changed = False
        # Deletes next, lineage actions after, Events last and concurrently.
        events = [a for a in result.actions if isinstance(a, EmitEvent)]
        ordered = sorted((a for a in result.actions if not isinstance(a, EmitEvent | CreateJob)),
                         key=lambda a: 0 if isinstance(a, DeleteJob) else 1)
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
        engines = {Engine(r.engine) for r in (cycle.spec.consolidation.runtime, cycle.spec.dreaming.runtime, cycle.spec.evaluation.runtime)}
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
        final = {(r.step, r.attempt) for r in cycle.status.records if r.result in (StepResult.SUCCEEDED, StepResult.FAILED)}
        if any(o.state != JobState.ACTIVE and (o.step, o.attempt) not in final for o in observed):
            pods = await self.kube.list(PODS, ns, label_selector=selector)
            observed = observe(workloads, pods)
        return observed, kinds

    async def _engine_available(self, res: Resource) -> bool:
        if res.plural not in self._engines:
            self._engines[res.plural] = await self.kube.has_resource(res)
        return self._engines[res.plural]

    async def _check_engines(self, cycle: SleepCycle, result: Plan, *, observed: list[ObservedJob],
                             lineage: ModelLineage | None, now: datetime) -> Plan:
        """A TrainJob/JobSet attempt on a cluster without that engine fails permanently, with the reason."""
        for action in result.of(CreateJob):
            assert isinstance(action, CreateJob)
            engine = Engine(action.runtime.engine)
            res = ENGINE_RESOURCES[engine]
            if engine == Engine.JOB or await self._engine_available(res):
                continue
            self._engines.pop(res.plural, None)  # look again next time: it may get installed
            msg = (f"spec.{action.step}.runtime.engine is {engine.value} but {res.plural}.{res.group} is not served "
                   "by this cluster: install it, or use engine Job")
            records = [
                r.model_copy(update={"result": StepResult.FAILED, "reason": "EngineNotInstalled", "message": msg,
                                     "completion_time": now})
                if r.job_name == action.job_name else r
                for r in result.status.records
            ]
            # Plan again from the failed record: EngineNotInstalled is permanent, so the cycle fails.
            failed = cycle.model_copy(update={"status": result.status.model_copy(update={"records": records})})
            return plan(failed, observed=observed, lineage=lineage, now=now)
        return result

    # --- actions -------------------------------------------------------------------------
    async def _apply(self, action: Any, *, obj: Obj, cycle: SleepCycle, lineage: ModelLineage | None,
                     kinds: dict[str, Resource]) -> bool:
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
                self.kube, namespace=ns, lineage=action.lineage, cycle=name, uri=action.uri,
                content_hash=action.content_hash, parent=action.parent, scores=action.scores,
            )
            return True
        elif isinstance(action, Promote):
            await promotion.promote(self.kube, namespace=ns, lineage=action.lineage, cycle=name)
            return True
        elif isinstance(action, Reject):
            await promotion.reject(self.kube, namespace=ns, lineage=action.lineage, cycle=name, reason=action.reason)
            return False  # the cycle is already Rejected: nothing to plan against the new lineage
        return False

    async def _create(self, action: CreateJob, *, obj: Obj, cycle: SleepCycle, lineage: ModelLineage | None) -> None:
        assert lineage is not None
        ns = cycle.metadata.namespace
        owner = Owner(name=cycle.metadata.name, namespace=ns, uid=obj["metadata"]["uid"])
        objects = render(action, owner=owner, lineage=lineage, scheduling=cycle.spec.scheduling)
        # All at once: a pod whose ConfigMap or Service is not there yet just waits for it
        # (the kubelet retries the mount), so ordering would only add round trips.
        creations = [self.kube.create_or_get(CONFIGMAPS, ns, objects.config_map),
                     self.kube.create_or_get(ENGINE_RESOURCES[objects.engine], ns, objects.workload)]
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
                self.kube, namespace=ns, lineage=lineage,
                rule=lambda lin: rules.apply_lineage_action(
                    lin, action, cycle=me, now=self.clock(),
                    holder_finished=finished and lin.status.active_cycle == holder).status,
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
        await emit_event(self.kube, obj, reason=action.reason, message=action.message, type=action.type,
                         now=self.clock())

    # --- metrics --------------------------------------------------------------------------
    def _export(self, cycle: SleepCycle, new: SleepCycleStatus, seen: _Seen, *, observed: list[ObservedJob]) -> None:
        ns, name, lin = cycle.metadata.namespace, cycle.metadata.name, cycle.spec.lineage_ref
        old = cycle.status
        phase = Phase(new.phase)
        if seen.phase != phase.value:
            if seen.phase is not None:
                with contextlib.suppress(KeyError):
                    metrics.cycle_phase.remove(ns, lin, name, seen.phase)
            if phase in TERMINAL_PHASES:
                with contextlib.suppress(KeyError):
                    metrics.cycle_phase.remove(ns, lin, name, phase.value)
            else:
                metrics.cycle_phase.labels(namespace=ns, lineage=lin, cycle=name, phase=phase.value).set(1)
            seen.phase = phase.value
        if phase in TERMINAL_PHASES and Phase(old.phase) not in TERMINAL_PHASES:
            metrics.cycles_total.labels(namespace=ns, lineage=lin, outcome=phase.value).inc()
            if new.start_time and new.completion_time:
                metrics.cycle_duration_seconds.labels(outcome=phase.value).observe(
                    (new.completion_time - new.start_time).total_seconds())
        before = {(r.step, r.attempt): r for r in old.records}
        budget = cycle.spec.retries.max_attempts
        jobs = {(o.step, o.attempt): o for o in observed}
        for rec in new.records:
            prev = before.get((rec.step, rec.attempt))
            _record_metrics(rec, prev, budget=budget, records=new.records)
            obs = jobs.get((Step(rec.step), rec.attempt))
            final = (StepResult.SUCCEEDED, StepResult.FAILED)
            if (rec.result in final and (prev is None or prev.result not in final)
                    and obs is not None and obs.created and obs.started):
                # Job created → its pods started: Kueue admission plus scheduling.
                metrics.phase_queue_wait_seconds.labels(step=Step(rec.step).value).observe(
                    max(0.0, (obs.started - obs.created).total_seconds()))
        if new.gate is not None and old.gate is None:
            promotion.observe_gate(namespace=ns, lineage=lin, decision=new.gate, candidate=new.evaluation,
                                   champion=new.champion_evaluation or None)


def _record_metrics(rec: PhaseRecord, prev: PhaseRecord | None, *, budget: int, records: list[PhaseRecord]) -> None:
    step = Step(rec.step).value
    final = (StepResult.SUCCEEDED, StepResult.FAILED)
    if rec.result in final and (prev is None or prev.result not in final):
        if rec.start_time and rec.completion_time:
            metrics.phase_duration_seconds.labels(step=step, result=StepResult(rec.result).value).observe(
                max(0.0, (rec.completion_time - rec.start_time).total_seconds()))
        if rec.result == StepResult.FAILED:
            metrics.phase_failures_total.labels(step=step, reason=rec.reason or "Unknown").inc()
            failed = sum(1 for r in records if r.step == rec.step and r.result == StepResult.FAILED)
            if failed < budget:
                metrics.phase_retries_total.labels(step=step, reason=rec.reason or "Unknown").inc()


def _status_patch(status: SleepCycleStatus) -> dict[str, Any]:
    """The whole status for a merge patch: None becomes null, which removes the field."""
    return status.model_dump(by_alias=True, mode="json")


# --- Kopf wiring ------------------------------------------------------------------------------
_reconciler: Reconciler | None = None
_resync: asyncio.Task[None] | None = None
OPTIONS = Options()


def reconciler() -> Reconciler:
    if _reconciler is None:
        raise RuntimeError("the SleepCycle reconciler starts with the operator (on.startup)")
    return _reconciler


@kopf.on.startup()
async def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _reconciler, _resync
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
    # Our own Events say what happened; Kopf's per-handler "Handler succeeded" posts are noise.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # Kopf waits this long for more events of one object before handling them; our
    # reconciles coalesce on their own, so a short window only adds latency.
    settings.batching.batch_window = 0.01
    settings.admission.server = admission.server(
        port=OPTIONS.webhook_port, cert_dir=OPTIONS.webhook_cert_dir, addr=OPTIONS.webhook_addr,
    )
    kube = Kube.from_kubeconfig(OPTIONS.kubeconfig)
    _reconciler = Reconciler(kube=kube, options=OPTIONS)
    _resync = asyncio.get_running_loop().create_task(_reconciler.resync_forever(), name="sleepcycle resync")
    with contextlib.suppress(ImportError):
        from reverie.controller import lineage_handlers

        lineage_handlers.use_kube(kube)


@kopf.on.login(id="reverie-login")
def _login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf's credentials: the same kubeconfig / in-cluster identity as our own client."""
    cfg = load_configuration(OPTIONS.kubeconfig)
    token = authorization_header(cfg)
    scheme, _sep, value = token.partition(" ") if token else (None, "", None)
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
        scheme=scheme or None, token=value or None,
    )


@kopf.on.cleanup()
async def _shutdown(**_: Any) -> None:
    global _reconciler, _resync
    if _resync is not None:
        _resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _resync
        _resync = None
    if _reconciler is not None:
        for task in list(_reconciler._running.values()):
            task.cancel()
        await _reconciler.kube.close()
        _reconciler = None


@kopf.on.resume(GROUP, VERSION, "sleepcycles", id="cycle-resume")
@kopf.on.create(GROUP, VERSION, "sleepcycles", id="cycle-create")
@kopf.on.update(GROUP, VERSION, "sleepcycles", id="cycle-update")
async def _cycle_changed(*, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # SleepCycle is namespaced
    reconciler().trigger(namespace, name)


@kopf.on.event(GROUP, VERSION, "sleepcycles")
async def _cycle_event(*, type: str, event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    rec = reconciler()
    if type == "DELETED":
        rec.forget(namespace, name)
        return
    seen = rec.seen.get((namespace, name))
    body: dict[str, Any] = dict(event.get("object") or {})
    if seen is not None and seen.written_rv == (body.get("metadata") or {}).get("resourceVersion"):
        return  # the echo of our own status write
    if seen is None:
        # Unknown to this process (e.g. just restarted): one full pass, even for a finished
        # cycle, so a lineage it still holds gets released.
        rec.seen[(namespace, name)] = _Seen(lineage=(body.get("spec") or {}).get("lineageRef", ""))
    rec.trigger(namespace, name)


@kopf.on.event(GROUP, VERSION, "modellineages")
async def _lineage_event(*, name: str, namespace: str | None, **_: Any) -> None:
    """A lineage appeared or changed (e.g. released): wake the cycles waiting for it."""
    assert namespace is not None
    rec = reconciler()
    for (ns, cycle_name), seen in list(rec.seen.items()):
        if ns == namespace and seen.lineage == name and seen.phase in (None, Phase.PENDING.value):
            rec.trigger(ns, cycle_name)


def _job_matters(type_: str | None, body: kopf.Body) -> bool:
    """Only a finished or vanished Job can change a plan; a Job we just created, or one whose
    pods merely progress (the Job controller updates status several times per attempt), cannot."""
    if type_ == "DELETED":
        return True
    if type_ is None or type_ == "ADDED":
        # ADDED after a restart is covered by the cycles' resume; ADDED otherwise is our own create.
        return False
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_CYCLE: kopf.PRESENT})
async def _job_event(*, type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    if _job_matters(type, body):
        reconciler().trigger(namespace, labels[LABEL_CYCLE])
