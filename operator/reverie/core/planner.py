"""The cycle planner: observed state in, next status and actions out.  Pure.

``plan(cycle, observed=..., lineage=..., now=...)`` reads the SleepCycle (spec,
status, annotations), the child Jobs the controller observed and the
ModelLineage, and returns the status the cycle should have and the actions that
move the world towards it.  It never does I/O and never reads a clock, so every
transition is a table-driven unit test, and it is level-based: everything it
decides is derived from what exists, so an operator restarted at any point (or
an action applied twice) converges on the same result.

The three rules that make restarts safe:

* Child names are deterministic (``<cycle>-<step>-<attempt>``): a repeated
  create meets 409, never a second GPU Job.
* Attempt numbers come from ``status.records`` *and* the observed Jobs, so a
  lost status write or a deleted Job never resets the retry budget (the
  Kubeflow Trainer bug #3779 that users hit).
* A planned attempt is recorded in status (``Pending``) in the same pass that
  creates its Job: whichever of the two lands, the next pass completes the
  other (a record without its Job re-creates it under the same name, a Job
  without its record is adopted).

Phase machine (conditions are the contract, ``phase`` the summary)::

    Pending → Consolidating → Dreaming (unless disabled) → Evaluating
            → [AwaitingApproval] → Promoting → Succeeded
    any → Rejected (gate) | Failed (budget spent, permanent error) | Suspended
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from reverie import APPROVAL_ANNOTATION
from reverie.api.base import ConditionStatus, StepRuntime
from reverie.api.lineage import Generation, GenerationState, ModelLineage
from reverie.api.sleepcycle import (
    TERMINAL_PHASES,
    AttemptRecord,
    CycleCondition,
    CycleReason,
    GateDecision,
    Phase,
    PromotionPolicy,
    SleepCycle,
    SleepCycleStatus,
    Step,
    StepResult,
)
from reverie.api.steps import MemorySource, MemorySpec
from reverie.core.actions import (
    LINEAGE_ACTIONS,
    Action,
    ClaimLineage,
    CreateJob,
    DeleteCycle,
    DeleteJob,
    EmitEvent,
    LineageAction,
    Promote,
    RecordCandidate,
    Reject,
    ReleaseLineage,
    RequeueAfter,
    TakeMemories,
)
from reverie.core.conditions import get_condition, set_condition
from reverie.core.contract import (
    AttemptConfig,
    ResultError,
    checkpoint_root,
    parse_result,
    slept_ledger_uri,
    step_output_uri,
    taken_memories_uri,
)
from reverie.core.gate import decide
from reverie.core.lineage import held_memory_uris, inbox_of, may_claim, slept_memory_uris
from reverie.core.observed import JobState, ObservedJob

__all__ = [
    "LINEAGE_ACTIONS",
    "MAX_JOB_NAME",
    "Action",
    "ClaimLineage",
    "CreateJob",
    "DeleteCycle",
    "DeleteJob",
    "EmitEvent",
    "LineageAction",
    "Plan",
    "Promote",
    "RecordCandidate",
    "Reject",
    "ReleaseLineage",
    "RequeueAfter",
    "TakeMemories",
    "backoff_seconds",
    "job_name",
    "may_claim",
    "plan",
    "steps_of",
]

# Kubernetes caps names at 63; an Indexed Job's pods are named ``<job>-<index>-<rand>``
# and their hostnames ``<job>-<index>``, so we leave room (CronJob uses 52 too).
MAX_JOB_NAME = 52
# Attempts that end for these reasons are not the workload's fault and do not
# spend the retry budget (they still get a new attempt number).
UNCOUNTED_REASONS = frozenset({"Suspended"})
# Attempts that end for these reasons are not retried: retrying cannot help.
PERMANENT_REASONS = frozenset({CycleReason.ENGINE_NOT_INSTALLED, CycleReason.INVALID_JOB_SPEC})
# How often a waiting cycle (lineage busy or missing) looks again when no event wakes it.
WAIT_REQUEUE_SECONDS = 30.0

# Ready reasons of a cycle that waits on something a person must fix: each posts a Warning Event
# when the cycle starts waiting for it (a phase change posts its own Event).
WAITING_PROBLEMS = frozenset({"LineageNotFound", "LineagePinned"})
# Step condition reasons of an unfinished step: a cycle that ends otherwise turns them into its reason.
UNFINISHED_STEP_REASONS = frozenset({CycleReason.RUNNING, CycleReason.BACKOFF_WAITING})

STEP_PHASE = {Step.CONSOLIDATION: Phase.CONSOLIDATING, Step.DREAMING: Phase.DREAMING, Step.EVALUATION: Phase.EVALUATING}
STEP_CONDITION = {
    Step.CONSOLIDATION: CycleCondition.CONSOLIDATED,
    Step.DREAMING: CycleCondition.DREAMED,
    Step.EVALUATION: CycleCondition.EVALUATED,
}


@dataclass
class Plan:
    status: SleepCycleStatus
    actions: list[Action] = field(default_factory=list)

    def of(self, kind: type) -> list[Action]:
        return [a for a in self.actions if isinstance(a, kind)]


# --- small pure rules ------------------------------------------------------------
def job_name(cycle: str, step: Step | str, attempt: int) -> str:
    """``<cycle>-<step>-<attempt>``; long cycle names are cut and made unique by a hash."""
    step = Step(step).value
    name = f"{cycle}-{step}-{attempt}"
    if len(name) <= MAX_JOB_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    suffix = f"-{digest}-{step}-{attempt}"
    return cycle[: MAX_JOB_NAME - len(suffix)].rstrip("-") + suffix


def backoff_seconds(failures: int, *, base: float, multiplier: float, cap: float) -> float:
    """Wait before the attempt after ``failures`` counted failures (exponential, capped)."""
    if failures <= 0:
        return 0.0
    return float(min(cap, base * multiplier ** (failures - 1)))


def steps_of(cycle: SleepCycle) -> list[Step]:
    steps = [Step.CONSOLIDATION]
    if cycle.spec.dreaming.enabled:
        steps.append(Step.DREAMING)
    steps.append(Step.EVALUATION)
    return steps


def _runtime(cycle: SleepCycle, step: Step) -> StepRuntime:
    spec = cycle.spec
    return {
        Step.CONSOLIDATION: spec.consolidation.runtime,
        Step.DREAMING: spec.dreaming.runtime,
        Step.EVALUATION: spec.evaluation.runtime,
    }[step]


def _image(cycle: SleepCycle, step: Step) -> str:
    runtime = _runtime(cycle, step)
    if runtime.image:
        return runtime.image
    return cycle.spec.images.dreamer if step == Step.DREAMING else cycle.spec.images.trainer


def _counted_failures(records: list[AttemptRecord], step: Step) -> list[AttemptRecord]:
    return [
        r for r in records if r.step == step and r.result == StepResult.FAILED and r.reason not in UNCOUNTED_REASONS
    ]


def _describe(rec: AttemptRecord) -> str:
    return f"{rec.reason}: {rec.message}" if rec.message else rec.reason


# --- the planner -------------------------------------------------------------------
class _Planner:
    """One planning pass; a class only to share the inputs between small steps."""

    def __init__(self, cycle: SleepCycle, observed: list[ObservedJob], lineage: ModelLineage | None, now: datetime):
        self.cycle = cycle
        self.name = cycle.metadata.name
        self.ns = cycle.metadata.namespace
        self.gen = cycle.metadata.generation
        self.lineage = lineage
        self.now = now
        self.observed = {(o.step, o.attempt): o for o in observed}
        self.old = cycle.status
        self.status = cycle.status.model_copy(deep=True)
        self.status.observed_generation = self.gen
        self.actions: list[Action] = []
        self.raw_scores: tuple[dict[str, float], dict[str, float]] | None = None

    # -- helpers
    def cond(self, type_: str, status: ConditionStatus | bool, reason: str, message: str = "") -> None:
        self.status.conditions = set_condition(
            self.status.conditions,
            type_,
            status,
            reason=reason,
            message=message,
            now=self.now,
            observed_generation=self.gen,
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        self.actions.append(EmitEvent(type_, reason, message))

    def set_phase(self, phase: Phase, message: str) -> None:
        self.status.phase = phase
        self.status.message = message[:4096]

    def finish(self, phase: Phase, reason: str, message: str) -> None:
        self.set_phase(phase, message)
        self.status.completion_time = self.status.completion_time or self.now
        self.status.next_attempt_after = None
        self.cond(CycleCondition.READY, phase == Phase.SUCCEEDED, reason, message)
        if phase == Phase.FAILED:
            self.cond(CycleCondition.FAILED, True, reason, message)
        self.close_unfinished_steps(reason, message)

    def close_unfinished_steps(self, reason: str, message: str) -> None:
        """A step that was running or waiting when the cycle stopped says why it never finished."""
        for type_ in STEP_CONDITION.values():
            current = get_condition(self.status.conditions, type_)
            if (
                current is not None
                and ConditionStatus(current.status) == ConditionStatus.FALSE
                and current.reason in UNFINISHED_STEP_REASONS
            ):
                self.cond(type_, False, reason, message)

    def mark_finished_steps(self) -> None:
        """Each succeeded step's condition: True, with the attempt, the Job and the output."""
        budget = self.cycle.spec.retries.max_attempts
        for step in steps_of(self.cycle):
            rec = next((r for r in self.status.records if r.step == step and r.result == StepResult.SUCCEEDED), None)
            if rec is not None:
                output = f"; output {rec.output_uri}" if rec.output_uri else ""
                self.cond(
                    STEP_CONDITION[step],
                    True,
                    CycleReason.SUCCEEDED,
                    f"{step} attempt {rec.attempt} of {budget} succeeded in Job {rec.job_name}{output}",
                )
        if not self.cycle.spec.dreaming.enabled:
            self.cond(CycleCondition.DREAMED, True, CycleReason.SKIPPED, "spec.dreaming.enabled is false")

    # -- records from observation
    def sync_records(self) -> None:
        """Fold what the Jobs say into status.records; final records never change."""
        records = self.status.records
        known = {(r.step, r.attempt) for r in records}
        for (step, attempt), seen in sorted(
            self.observed.items(), key=lambda kv: (kv[1].created or self.now, kv[0][1])
        ):
            if (step, attempt) not in known:
                # A Job we created but whose record was lost (crash before the status write).
                records.append(AttemptRecord(step=step, attempt=attempt, job_name=seen.name, start_time=seen.created))
        for i, rec in enumerate(records):
            if rec.result in (StepResult.SUCCEEDED, StepResult.FAILED):
                continue
            obs = self.observed.get((Step(rec.step), rec.attempt))
            if obs is None:
                if rec.result == StepResult.RUNNING:
                    records[i] = self._fail(rec, "JobDeleted", f"Job {rec.job_name} disappeared before it finished")
                continue  # Pending: the create is re-applied below
            if obs.state == JobState.ACTIVE:
                records[i] = rec.model_copy(
                    update={"result": StepResult.RUNNING, "start_time": rec.start_time or obs.created}
                )
            elif obs.state == JobState.SUCCEEDED:
                records[i] = self._from_result(rec, obs)
            else:
                records[i] = self._from_failure(rec, obs)

    def _fail(self, rec: AttemptRecord, reason: str, message: str, **extra: object) -> AttemptRecord:
        rec = rec.model_copy(
            update={
                "result": StepResult.FAILED,
                "reason": reason,
                "message": message[:4096],
                "completion_time": rec.completion_time or self.now,
                **extra,
            }
        )
        self.event(
            "Warning", "AttemptFailed", f"{rec.step} attempt {rec.attempt} ({rec.job_name}) failed: {_describe(rec)}"
        )
        return rec

    def _from_result(self, rec: AttemptRecord, obs: ObservedJob) -> AttemptRecord:
        step = Step(rec.step)
        finished = {"completion_time": obs.finished or self.now}
        try:
            result = parse_result(obs.result_text, step=step)
        except ResultError as exc:
            reason = "MissingResult" if not (obs.result_text or "").strip() else "MalformedResult"
            return self._fail(rec, reason, str(exc), **finished)
        if result.status != "Succeeded":
            # The workload says it failed although the pod exited 0: trust the result.
            return self._fail(
                rec,
                "PhaseReportedFailure",
                result.message or "the phase reported failure",
                checkpoint_uri=result.checkpoint_uri,
                **finished,
            )
        if step == Step.EVALUATION:
            # JSON (and so the API server) has no NaN: status keeps the finite values, the gate
            # of this pass judges the raw ones (a NaN metric is Inconclusive, with that reason).
            self.raw_scores = (dict(result.metrics), dict(result.baseline))
            self.status.evaluation = {k: v for k, v in result.metrics.items() if math.isfinite(v)}
            self.status.champion_evaluation = {k: v for k, v in result.baseline.items() if math.isfinite(v)}
        self.event("Normal", "AttemptSucceeded", f"{step} attempt {rec.attempt} ({rec.job_name}) succeeded")
        return rec.model_copy(
            update={
                "result": StepResult.SUCCEEDED,
                "reason": "Succeeded",
                "message": result.message[:4096],
                "output_uri": result.output_uri,
                "content_hash": result.content_hash,
                "checkpoint_uri": result.checkpoint_uri,
                "metrics": {k: v for k, v in result.metrics.items() if math.isfinite(v)},
                **finished,
            }
        )

    def _from_failure(self, rec: AttemptRecord, obs: ObservedJob) -> AttemptRecord:
        checkpoint: str | None = None
        message = obs.message or "the Job failed"
        try:
            result = parse_result(obs.result_text, step=Step(rec.step))
            checkpoint = result.checkpoint_uri
            if result.message:
                message = f"{result.message} ({obs.message})" if obs.message else result.message
        except ResultError:
            pass  # a crashed pod writes no result; the Job's reason is all we have
        return self._fail(
            rec, obs.reason or "JobFailed", message, checkpoint_uri=checkpoint, completion_time=obs.finished or self.now
        )

    # -- phases
    def run(self) -> Plan:
        old_phase = Phase(self.old.phase)
        if old_phase in TERMINAL_PHASES:
            self.terminal()
            return self.done(old_phase)
        self.sync_records()
        if self.lineage is None:
            lineage = self.cycle.spec.lineage_ref
            if self.status.records:
                # Deleted under a running cycle: nothing left to train from or promote into.
                for rec in self.status.records:
                    obs = self.observed.get((Step(rec.step), rec.attempt))
                    if obs is not None and obs.state == JobState.ACTIVE and not obs.deleting:
                        self.actions.append(DeleteJob(rec.job_name, "LineageDeleted"))
                self.finish(
                    Phase.FAILED,
                    CycleReason.LINEAGE_NOT_FOUND,
                    f"ModelLineage {lineage} was deleted while the cycle ran; create a new cycle for a new lineage",
                )
                return self.done(old_phase)
            self.set_phase(Phase.PENDING, f"waiting for ModelLineage {lineage} to exist in namespace {self.ns}")
            self.cond(CycleCondition.READY, False, CycleReason.LINEAGE_NOT_FOUND, self.status.message)
            self.actions.append(RequeueAfter(WAIT_REQUEUE_SECONDS))
            return self.done(old_phase)
        if self.cycle.spec.suspend:
            self.suspend()
            return self.done(old_phase)
        if any(
            c.type == "Suspended" and ConditionStatus(c.status) == ConditionStatus.TRUE for c in self.status.conditions
        ):
            self.cond(
                CycleCondition.SUSPENDED,
                False,
                CycleReason.RESUMED,
                "spec.suspend is false; the cycle continues where it stopped",
            )
        if self.waits_for_pin():
            return self.done(old_phase)
        if self.lineage.status.active_cycle != self.name:
            holder = self.lineage.status.active_cycle
            why = (
                f"lineage {self.lineage.metadata.name} is busy with cycle {holder}; this cycle starts when it ends"
                if holder
                else f"claiming lineage {self.lineage.metadata.name}"
            )
            self.set_phase(Phase.PENDING, why)
            self.cond(
                CycleCondition.READY,
                False,
                CycleReason.WAITING_FOR_LINEAGE if holder else CycleReason.CLAIMING_LINEAGE,
                why,
            )
            self.actions.append(ClaimLineage(self.lineage.metadata.name))
            self.actions.append(RequeueAfter(WAIT_REQUEUE_SECONDS))
            return self.done(old_phase)
        if not self.resolve_base():
            return self.done(old_phase)
        if self.cycle.spec.memory.uses_inbox and not self.has_memory_set():
            return self.done(old_phase)
        self.mark_finished_steps()
        for step in steps_of(self.cycle):
            if any(r.step == step and r.result == StepResult.SUCCEEDED for r in self.status.records):
                continue
            self.run_step(step)
            return self.done(old_phase)
        self.after_evaluation()
        return self.done(old_phase)

    def pin_message(self) -> str:
        assert self.lineage is not None
        lin = self.lineage.metadata.name
        pin = self.lineage.spec.rollback_to
        rolled = get_condition(self.lineage.status.conditions, "RolledBack")
        broken = ""
        if (
            rolled is not None
            and ConditionStatus(rolled.status) == ConditionStatus.FALSE
            and rolled.reason != "Unpinned"
        ):
            broken = f" (and the pin itself fails: {rolled.message})"
        return (
            f"lineage {lin} is pinned to {pin} by spec.rollbackTo{broken}; no candidate can be promoted "
            f"while it is pinned. Unpin it with: kubectl patch modellineage {lin} --type=merge "
            '-p \'{"spec":{"rollbackTo":null}}\''
        )

    def waits_for_pin(self) -> bool:
        """A cycle that has not started waits while its lineage is pinned (unless whilePinned: Run).

        A pinned lineage promotes nothing, so the three phase Jobs would only spend GPU hours
        on a candidate that is then refused.  A cycle that already started keeps going and
        waits to promote instead (:meth:`after_evaluation`).
        """
        assert self.lineage is not None
        if not self.lineage.spec.rollback_to or self.status.records or self.cycle.spec.promotion.while_pinned == "Run":
            return False
        msg = (
            f"{self.pin_message()}; or set spec.promotion.whilePinned: Run on this cycle to train "
            "a candidate now and promote it once the pin is removed"
        )
        self.set_phase(Phase.PENDING, msg)
        self.cond(CycleCondition.READY, False, CycleReason.LINEAGE_PINNED, msg)
        # The champion may change when the pin is removed: resolve the base again then.
        self.status.base_generation = self.status.base_uri = None
        if self.lineage.status.active_cycle == self.name:
            self.actions.append(ReleaseLineage(self.lineage.metadata.name))
        self.actions.append(RequeueAfter(WAIT_REQUEUE_SECONDS))
        return True

    def resolve_base(self) -> bool:
        """Pin the base generation once, when the cycle first owns the lineage."""
        assert self.lineage is not None
        if self.status.base_generation and self.status.base_uri:
            return True
        lin = self.lineage
        wanted = self.cycle.spec.base_generation or lin.status.champion
        uri: str | None = None
        if wanted is None or wanted == "gen-0":
            wanted, uri = "gen-0", lin.spec.base_model.uri
        else:
            gen = next((g for g in lin.status.generations if g.name == wanted), None)
            uri = gen.uri if gen else (lin.status.champion_uri if wanted == lin.status.champion else None)
        if uri is None:
            msg = f"spec.baseGeneration {wanted} is not a generation of lineage {lin.metadata.name}"
            self.finish(Phase.FAILED, CycleReason.BASE_GENERATION_NOT_FOUND, msg)
            return False
        self.status.base_generation, self.status.base_uri = wanted, uri
        return True

    def has_memory_set(self) -> bool:
        """An inbox cycle's memories are fixed once, after it owns the lineage and its base is pinned.

        The set is what the base generation's ancestry has not slept on; the
        executor writes it to the store and records it in status.memory
        (:class:`TakeMemories`), and every attempt of every step reads that
        file.  A set with nothing in it ends the cycle: there is nothing to sleep on.
        """
        assert self.lineage is not None and self.status.base_generation
        lin = self.lineage
        taken = self.status.memory
        if taken is not None:
            if taken.count == 0 and not self.status.records:
                msg = (
                    f"the inbox of lineage {lin.metadata.name} holds nothing that {self.status.base_generation} "
                    "has not slept on; drop memories into it (reverie remember) and create a new cycle"
                )
                self.finish(Phase.FAILED, CycleReason.NOTHING_TO_CONSOLIDATE, msg)
                return False
            return True
        inbox = inbox_of(lin)
        if inbox is None:
            msg = (
                f"spec.memory.sources names the inbox, but ModelLineage {lin.metadata.name} has no "
                "spec.memory.inbox; set it (spec.memory.inbox: {}) or use another memory source"
            )
            self.finish(Phase.FAILED, CycleReason.NO_INBOX, msg)
            return False
        self.actions.append(
            TakeMemories(
                inbox_uri=inbox.uri,
                slept_uris=tuple(slept_memory_uris(lin, self.status.base_generation)),
                limit=inbox.max_per_sleep,
                set_uri=taken_memories_uri(lin.spec.store.uri, lin.metadata.name, self.name),
                ledger_uri=slept_ledger_uri(lin.spec.store.uri, lin.metadata.name, self.name),
            )
        )
        msg = f"taking the memories {self.status.base_generation} has not slept on from the inbox {inbox.uri}"
        self.set_phase(Phase.PENDING, msg)
        self.cond(CycleCondition.READY, False, CycleReason.TAKING_MEMORIES, msg)
        self.actions.append(RequeueAfter(WAIT_REQUEUE_SECONDS))
        return False

    def memory(self) -> MemorySpec:
        """The cycle's memory spec as a phase reads it: the inbox source becomes the fixed set's file."""
        spec = self.cycle.spec.memory
        taken = self.status.memory
        if not spec.uses_inbox or taken is None:
            return spec
        sources = [MemorySource(uri=taken.uri) if source.inbox else source for source in spec.sources]
        return spec.model_copy(update={"sources": sources})

    def suspend(self) -> None:
        for i, rec in enumerate(self.status.records):
            if rec.result in (StepResult.SUCCEEDED, StepResult.FAILED):
                continue
            obs = self.observed.get((Step(rec.step), rec.attempt))
            ckpt = rec.checkpoint_uri or self._default_checkpoint(Step(rec.step))
            self.status.records[i] = rec.model_copy(
                update={
                    "result": StepResult.FAILED,
                    "reason": "Suspended",
                    "completion_time": self.now,
                    "message": "spec.suspend: the Job was deleted; the next attempt resumes from its checkpoint",
                    "checkpoint_uri": ckpt,
                }
            )
            if obs is not None and not obs.deleting:
                self.actions.append(DeleteJob(rec.job_name, "Suspended"))
        for other in self.observed.values():
            if (
                other.state == JobState.ACTIVE
                and not other.deleting
                and not any(isinstance(a, DeleteJob) and a.job_name == other.name for a in self.actions)
            ):
                self.actions.append(DeleteJob(other.name, "Suspended"))
        msg = "spec.suspend is true: no Jobs run; set it to false to resume where the cycle stopped"
        self.close_unfinished_steps(CycleReason.SUSPENDED, msg)
        self.set_phase(Phase.SUSPENDED, msg)
        self.cond(CycleCondition.SUSPENDED, True, CycleReason.SUSPENDED_BY_USER, msg)
        self.cond(CycleCondition.READY, False, CycleReason.SUSPENDED, msg)

    def _default_checkpoint(self, step: Step) -> str | None:
        if self.lineage is None:
            return None
        return checkpoint_root(
            step_output_uri(self.lineage.spec.store.uri, self.lineage.metadata.name, self.name, step)
        )

    def run_step(self, step: Step) -> None:
        phase = STEP_PHASE[step]
        records = [r for r in self.status.records if r.step == step]
        policy = self.cycle.spec.retries
        live = [r for r in records if r.result in (StepResult.PENDING, StepResult.RUNNING)]
        # Any other live Job (an older attempt, another step) is an orphan of a crash: stop it.
        for obs in self.observed.values():
            if obs.state == JobState.ACTIVE and not obs.deleting and not any(r.job_name == obs.name for r in live):
                self.actions.append(DeleteJob(obs.name, "Superseded"))
        if live:
            rec = live[-1]
            if rec.result == StepResult.PENDING and (step, rec.attempt) not in self.observed:
                self.actions.append(self._create(step, rec.attempt))  # re-apply a create lost in a crash
            msg = f"{step} attempt {rec.attempt} of {policy.max_attempts} is running in Job {rec.job_name}"
            self.set_phase(phase, msg)
            self.cond(STEP_CONDITION[step], False, CycleReason.RUNNING, msg)
            self.cond(CycleCondition.READY, False, phase.value, msg)
            return
        failures = _counted_failures(self.status.records, step)
        last = records[-1] if records else None
        if last is not None and last.reason in PERMANENT_REASONS:
            msg = f"{step} attempt {last.attempt} failed permanently: {_describe(last)}"
            self.cond(STEP_CONDITION[step], False, last.reason, msg)
            self.finish(Phase.FAILED, last.reason, msg)
            return
        if len(failures) >= policy.max_attempts:
            msg = f"{step} failed {len(failures)} of {policy.max_attempts} attempts; last: {_describe(failures[-1])}"
            self.cond(STEP_CONDITION[step], False, CycleReason.RETRY_BUDGET_EXHAUSTED, msg)
            self.finish(Phase.FAILED, CycleReason.RETRY_BUDGET_EXHAUSTED, msg)
            return
        if failures:
            delay = backoff_seconds(
                len(failures),
                base=policy.backoff_seconds,
                multiplier=policy.backoff_multiplier,
                cap=policy.max_backoff_seconds,
            )
            not_before = (failures[-1].completion_time or self.now) + timedelta(seconds=delay)
            if self.now < not_before:
                self.status.next_attempt_after = not_before
                msg = (
                    f"{step} attempt {failures[-1].attempt} failed ({_describe(failures[-1])}); "
                    f"attempt {len(failures) + 1} of {policy.max_attempts} starts after {not_before.isoformat()}"
                )
                self.set_phase(phase, msg)
                self.cond(STEP_CONDITION[step], False, CycleReason.BACKOFF_WAITING, msg)
                self.cond(CycleCondition.READY, False, CycleReason.BACKOFF_WAITING, msg)
                self.actions.append(RequeueAfter((not_before - self.now).total_seconds()))
                return
        attempt = 1 + max([r.attempt for r in records] + [a for (s, a) in self.observed if s == step], default=0)
        create = self._create(step, attempt)
        self.status.records.append(
            AttemptRecord(
                step=step,
                attempt=attempt,
                job_name=create.job_name,
                start_time=self.now,
                output_uri=create.config.output_uri,
            )
        )
        self.status.next_attempt_after = None
        self.status.start_time = self.status.start_time or self.now
        self.actions.append(create)
        resume = f", resuming from {create.config.resume_from}" if create.config.resume_from else ""
        taken = self.status.memory
        if taken is not None and step == Step.CONSOLIDATION:
            resume += f", on {taken.count} memories from the inbox ({taken.waiting} wait for later sleeps)"
        msg = f"{step} attempt {attempt} of {policy.max_attempts} started in Job {create.job_name}{resume}"
        self.event("Normal", "JobCreated", msg)
        self.set_phase(phase, msg)
        self.cond(STEP_CONDITION[step], False, CycleReason.RUNNING, msg)
        self.cond(CycleCondition.READY, False, phase.value, msg)

    def _create(self, step: Step, attempt: int) -> CreateJob:
        assert self.lineage is not None and self.status.base_generation and self.status.base_uri
        lin = self.lineage
        spec = self.cycle.spec
        done = {Step(r.step): r for r in self.status.records if r.result == StepResult.SUCCEEDED}
        inputs = {s.value: r.output_uri for s, r in done.items() if r.output_uri}
        previous = [
            r for r in self.status.records if r.step == step and r.attempt < attempt and r.result == StepResult.FAILED
        ]
        resume_from = None
        if previous:
            resume_from = previous[-1].checkpoint_uri or self._default_checkpoint(step)
        champion = lin.status.champion or "gen-0"
        champion_uri = lin.status.champion_uri or (lin.spec.base_model.uri if champion == "gen-0" else None)
        config = AttemptConfig(
            step=step,
            cycle=self.name,
            namespace=self.ns,
            lineage=lin.metadata.name,
            attempt=attempt,
            store_uri=lin.spec.store.uri,
            output_uri=step_output_uri(lin.spec.store.uri, lin.metadata.name, self.name, step),
            base_generation=self.status.base_generation,
            base_uri=self.status.base_uri,
            inputs=inputs,
            resume_from=resume_from,
            memory=self.memory(),
            # What the base generation already knows: replayed, and scored by retention.
            prior_memory_uris=held_memory_uris(lin, self.status.base_generation),
            champion_generation=champion,
            champion_uri=champion_uri,
            consolidation=spec.consolidation,
            dreaming=spec.dreaming,
            evaluation=spec.evaluation,
        )
        return CreateJob(
            step=step,
            attempt=attempt,
            job_name=job_name(self.name, step, attempt),
            config=config,
            runtime=_runtime(self.cycle, step),
            image=_image(self.cycle, step),
        )

    def candidate(self) -> Generation | None:
        assert self.lineage is not None
        return next((g for g in reversed(self.lineage.status.generations) if g.cycle == self.name), None)

    def after_evaluation(self) -> None:
        assert self.lineage is not None
        lin = self.lineage.metadata.name
        if self.status.gate is None:
            candidate, baseline = self.raw_scores or (self.status.evaluation, self.status.champion_evaluation)
            champion = baseline or self._champion_scores()
            rules = [str(r) for r in self.cycle.spec.evaluation.gate.rules]
            self.status.gate = decide(rules, candidate, champion, now=self.now)
            self.event(
                "Normal" if self.status.gate.outcome == "Passed" else "Warning",
                f"Gate{self.status.gate.outcome}",
                _gate_summary(self.status.gate),
            )
        gate = self.status.gate
        self.cond(
            CycleCondition.GATE_PASSED,
            {"Passed": True, "Failed": False}.get(gate.outcome, ConditionStatus.UNKNOWN),
            gate.outcome,
            _gate_summary(gate),
        )
        gen = self.candidate()
        generation = gen.name if gen else None
        self.status.generation = generation
        if gen is None or generation is None:
            model = self._candidate_record()
            self.set_phase(Phase.EVALUATING, "recording the candidate generation in the lineage")
            self.actions.append(
                RecordCandidate(
                    lineage=lin,
                    parent=self.status.base_generation,
                    uri=model.output_uri or "",
                    content_hash=model.content_hash,
                    scores=dict(self.status.evaluation),
                )
            )
            return
        state = GenerationState(gen.state)
        if state == GenerationState.CHAMPION or (state == GenerationState.RETIRED and gen.promoted_at is not None):
            msg = f"generation {generation} is the champion of lineage {lin}"
            self.cond(CycleCondition.PROMOTED, True, CycleReason.PROMOTED, msg)
            self.finish(Phase.SUCCEEDED, CycleReason.PROMOTED, msg)
            return
        if state == GenerationState.REJECTED:
            # Only a promotion refused by the lineage lands here (StaleParent, Pinned):
            # gate and approver rejections finish the cycle in the branch below.
            msg = f"the lineage refused to promote {generation}: {self._refusal(gen)}"
            self.cond(CycleCondition.PROMOTED, False, CycleReason.PROMOTION_REFUSED, msg)
            self.finish(Phase.REJECTED, CycleReason.PROMOTION_REFUSED, msg)
            return
        approval = self.cycle.metadata.annotations.get(APPROVAL_ANNOTATION, "")
        manual = self.cycle.spec.promotion.policy == PromotionPolicy.MANUAL
        ask_human = (
            manual
            if gate.outcome == "Passed"
            else (gate.outcome == "Inconclusive" and self.cycle.spec.promotion.on_inconclusive == "AwaitApproval")
        )
        if (
            gate.outcome == "Failed"
            or (gate.outcome == "Inconclusive" and not ask_human)
            or (ask_human and approval == "rejected")
        ):
            reason = CycleReason.REJECTED_BY_APPROVER if ask_human and approval == "rejected" else f"Gate{gate.outcome}"
            msg = f"candidate {generation} rejected: {_gate_summary(gate)}"
            self.cond(CycleCondition.PROMOTED, False, reason, msg)
            self.finish(Phase.REJECTED, reason, msg)
            self.actions.append(Reject(lineage=lin, generation=generation, reason=reason))
            return
        if ask_human and approval != "approved":
            msg = (
                f"candidate {generation} waits for approval: annotate {APPROVAL_ANNOTATION}=approved "
                f"(or rejected); gate: {_gate_summary(gate)}"
            )
            self.set_phase(Phase.AWAITING_APPROVAL, msg)
            self.cond(CycleCondition.PROMOTED, False, CycleReason.AWAITING_APPROVAL, msg)
            self.cond(CycleCondition.READY, False, CycleReason.AWAITING_APPROVAL, msg)
            return
        if self.lineage.spec.rollback_to:
            msg = f"candidate {generation} passed the gate and waits to be promoted: {self.pin_message()}"
            self.set_phase(Phase.PROMOTING, msg)
            self.cond(CycleCondition.PROMOTED, False, CycleReason.LINEAGE_PINNED, msg)
            self.cond(CycleCondition.READY, False, CycleReason.LINEAGE_PINNED, msg)
            self.actions.append(RequeueAfter(WAIT_REQUEUE_SECONDS))
            return
        msg = f"promoting {generation} to champion of lineage {lin}"
        self.set_phase(Phase.PROMOTING, msg)
        self.cond(CycleCondition.PROMOTED, False, CycleReason.PROMOTING, msg)
        self.cond(CycleCondition.READY, False, CycleReason.PROMOTING, msg)
        self.actions.append(Promote(lineage=lin, generation=generation, scores=dict(self.status.evaluation)))

    def _refusal(self, gen: Generation) -> str:
        """Why the lineage refused the promotion, from the reason it recorded on the generation."""
        assert self.lineage is not None
        lin = self.lineage
        reason = gen.reason
        if reason is None:  # recorded by an older operator: read the cause off the lineage
            reason = "Pinned" if lin.spec.rollback_to else "StaleParent" if gen.parent != lin.status.champion else None
        if reason == "Pinned":
            return (
                f"lineage {lin.metadata.name} was pinned by spec.rollbackTo when the promotion was written; "
                "remove the pin and run a new cycle"
            )
        if reason == "StaleParent":
            return (
                f"it was trained from {gen.parent}, but another cycle made {lin.status.champion} champion first; "
                "run a new cycle from the champion"
            )
        return f"{gen.name} is Rejected in the lineage ({reason or 'no reason recorded'})"

    def _candidate_record(self) -> AttemptRecord:
        """The model the cycle produced: dreaming's output when it ran, else consolidation's."""
        ok = [r for r in self.status.records if r.result == StepResult.SUCCEEDED]
        for step in (Step.DREAMING, Step.CONSOLIDATION):
            rec = next((r for r in ok if r.step == step), None)
            if rec is not None:
                return rec
        raise AssertionError("evaluation succeeded without a model step")

    def _champion_scores(self) -> dict[str, float]:
        assert self.lineage is not None
        champ = self.lineage.status.champion
        gen = next((g for g in self.lineage.status.generations if g.name == champ), None)
        return dict(gen.scores) if gen else {}

    def terminal(self) -> None:
        """Finished cycles: give the lineage back, retry a lost Reject, honour the TTL."""
        self.mark_finished_steps()  # cycles finished by an operator that left them Running
        lin = self.lineage
        if lin is not None and lin.status.active_cycle == self.name:
            self.actions.append(ReleaseLineage(lin.metadata.name))
        if lin is not None and Phase(self.old.phase) == Phase.REJECTED and self.status.generation:
            gen = next((g for g in lin.status.generations if g.name == self.status.generation), None)
            if gen is not None and GenerationState(gen.state) == GenerationState.CANDIDATE:
                self.actions.append(Reject(lineage=lin.metadata.name, generation=gen.name, reason="GateRejected"))
        ttl = self.cycle.spec.ttl_seconds_after_finished
        if ttl is not None:
            end = self.status.completion_time or self.now
            due = end + timedelta(seconds=ttl)
            if self.now >= due:
                self.actions.append(DeleteCycle(f"ttlSecondsAfterFinished ({ttl}s) passed"))
            else:
                self.actions.append(RequeueAfter((due - self.now).total_seconds()))

    def done(self, old_phase: Phase) -> Plan:
        # Every condition was judged against this generation of the spec, rewritten or not.
        self.status.conditions = [
            c if c.observed_generation == self.gen else c.model_copy(update={"observed_generation": self.gen})
            for c in self.status.conditions
        ]
        ready, was = get_condition(self.status.conditions, "Ready"), get_condition(self.old.conditions, "Ready")
        if ready is not None and ready.reason in WAITING_PROBLEMS and (was is None or was.reason != ready.reason):
            self.event("Warning", ready.reason, ready.message)
        new_phase = Phase(self.status.phase)
        if new_phase != old_phase:
            warn = new_phase in (Phase.FAILED, Phase.REJECTED)
            self.event("Warning" if warn else "Normal", new_phase.value, self.status.message or new_phase.value)
            if (
                new_phase in TERMINAL_PHASES
                and self.lineage is not None
                and self.lineage.status.active_cycle == self.name
            ):
                self.actions.append(ReleaseLineage(self.lineage.metadata.name))
            ttl = self.cycle.spec.ttl_seconds_after_finished
            if new_phase in TERMINAL_PHASES and ttl is not None:
                self.actions.append(RequeueAfter(float(ttl)))
        return Plan(status=self.status, actions=self.actions)


def _gate_summary(gate: GateDecision) -> str:
    parts = [f"{v.rule}: {v.verdict}" + (f" ({v.reason})" if v.reason else "") for v in gate.rules]
    return f"{gate.outcome}; " + "; ".join(parts) if parts else f"{gate.outcome} (no rules)"


def plan(cycle: SleepCycle, *, observed: list[ObservedJob], lineage: ModelLineage | None, now: datetime) -> Plan:
    """Decide the next status and actions of ``cycle`` from what was observed."""
    return _Planner(cycle, observed, lineage, now).run()
