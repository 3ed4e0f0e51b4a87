"""The cycle planner, transition by transition: observed state in, status and actions out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reverie import APPROVAL_ANNOTATION
from reverie.api.lineage import Generation, GenerationState, ModelLineage
from reverie.api.sleepcycle import Phase, SleepCycle, Step, StepResult
from reverie.core.conditions import get_condition, set_condition
from reverie.core.observed import JobState, ObservedJob
from reverie.core.planner import (
    MAX_JOB_NAME,
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
    backoff_seconds,
    job_name,
    may_claim,
    plan,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STORE = "file:///store"


def make_cycle(name: str = "c1", **spec: Any) -> SleepCycle:
    annotations = spec.pop("annotations", {})
    body: dict[str, Any] = {
        "lineageRef": "lin",
        "memory": {"sources": [{"inline": ["The sky on Zorblax is green."]}]},
        "dreaming": {"enabled": True},  # the three-step cycle (dreaming is off by default)
        "retries": {"maxAttempts": 3, "backoffSeconds": 10, "backoffMultiplier": 2.0, "maxBackoffSeconds": 100},
        "evaluation": {"gate": {"rules": ["knowledge_incorporation >= 0.5"]}},
    }
    body.update(spec)
    return SleepCycle.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns", "generation": 1, "annotations": annotations},
            "spec": body,
        }
    )


def make_lineage(
    active: str | None = "c1", generations: list[Generation] | None = None, champion: str | None = None
) -> ModelLineage:
    lin = ModelLineage.model_validate(
        {
            "metadata": {"name": "lin", "namespace": "ns"},
            "spec": {"baseModel": {"uri": "file:///base"}, "store": {"uri": STORE}},
        }
    )
    lin.status.active_cycle = active
    lin.status.generations = generations or []
    lin.status.champion = champion
    return lin


def result(step: Step, **kw: Any) -> str:
    body = {"step": step.value, "status": "Succeeded", "outputUri": f"{STORE}/lin/c1/{step.value}/model"}
    body.update(kw)
    return json.dumps(body)


def job(step: Step, attempt: int = 1, state: JobState = JobState.ACTIVE, **kw: Any) -> ObservedJob:
    return ObservedJob(
        name=job_name("c1", step, attempt),
        step=step,
        attempt=attempt,
        state=state,
        created=T0,
        finished=T0 + timedelta(seconds=5) if state != JobState.ACTIVE else None,
        **kw,
    )


def advance(cycle: SleepCycle, p: Plan) -> SleepCycle:
    """The cycle as the controller leaves it: the planned status written."""
    return cycle.model_copy(update={"status": p.status})


def one(p: Plan, kind: type) -> Any:
    found = p.of(kind)
    assert len(found) == 1, f"expected one {kind.__name__}, got {p.actions}"
    return found[0]


def started(cycle: SleepCycle | None = None, lineage: ModelLineage | None = None) -> SleepCycle:
    """A cycle whose first consolidation attempt has been planned."""
    cycle = cycle or make_cycle()
    return advance(cycle, plan(cycle, observed=[], lineage=lineage or make_lineage(), now=T0))


def through(
    cycle: SleepCycle,
    steps: list[Step],
    *,
    lineage: ModelLineage | None = None,
    eval_metrics: dict[str, float] | None = None,
    baseline: dict[str, float] | None = None,
) -> tuple[SleepCycle, list[ObservedJob]]:
    """Drive a cycle through successful ``steps``; return it and the Jobs observed."""
    lineage = lineage or make_lineage()
    observed: list[ObservedJob] = []
    now = T0
    for step in steps:
        extra = {}
        if step == Step.EVALUATION:
            extra = {
                "metrics": eval_metrics or {"knowledge_incorporation": 0.8},
                "baseline": baseline or {"knowledge_incorporation": 0.1},
            }
        observed.append(job(step, state=JobState.SUCCEEDED, result_text=result(step, **extra)))
        now += timedelta(seconds=10)
        cycle = advance(cycle, plan(cycle, observed=observed, lineage=lineage, now=now))
    return cycle, observed


# --- pure rules ------------------------------------------------------------------
def test_job_names_are_deterministic_and_short() -> None:
    assert job_name("c1", Step.CONSOLIDATION, 2) == "c1-consolidation-2"
    long = "a" * 60
    n1, n2 = job_name(long, Step.DREAMING, 1), job_name(long + "b", Step.DREAMING, 1)
    assert len(n1) <= MAX_JOB_NAME and n1.endswith("-dreaming-1") and n1 != n2
    assert job_name(long, Step.DREAMING, 1) == n1


@pytest.mark.parametrize(("failures", "expected"), [(0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (10, 100.0)])
def test_backoff_is_exponential_and_capped(failures: int, expected: float) -> None:
    assert backoff_seconds(failures, base=10, multiplier=2, cap=100) == expected


@pytest.mark.parametrize(
    ("active", "finished", "ok"),
    [(None, False, True), ("c1", False, True), ("other", False, False), ("other", True, True)],
)
def test_claim_rule(active: str | None, finished: bool, ok: bool) -> None:
    assert may_claim(active, cycle="c1", holder_finished=finished) is ok


def test_condition_transition_time_moves_only_when_status_changes() -> None:
    conds = set_condition([], "Ready", False, reason="A", now=T0, observed_generation=1)
    later = set_condition(
        conds, "Ready", False, reason="B", message="m", now=T0 + timedelta(hours=1), observed_generation=2
    )
    assert later[0].last_transition_time == T0 and later[0].reason == "B" and later[0].observed_generation == 2
    flipped = set_condition(later, "Ready", True, reason="C", now=T0 + timedelta(hours=2))
    assert flipped[0].last_transition_time == T0 + timedelta(hours=2)


# --- waiting -----------------------------------------------------------------------
def test_missing_lineage_waits_in_pending() -> None:
    p = plan(make_cycle(), observed=[], lineage=None, now=T0)
    assert p.status.phase == Phase.PENDING
    assert get_condition(p.status.conditions, "Ready").reason == "LineageNotFound"
    assert one(p, RequeueAfter).seconds > 0 and not p.of(CreateJob)


def test_busy_lineage_waits_and_asks_to_claim() -> None:
    p = plan(make_cycle(), observed=[], lineage=make_lineage(active="other"), now=T0)
    assert p.status.phase == Phase.PENDING and "busy with cycle other" in p.status.message
    assert get_condition(p.status.conditions, "Ready").reason == "WaitingForLineage"
    assert one(p, ClaimLineage).lineage == "lin" and not p.of(CreateJob)


def test_free_lineage_is_claimed_before_any_job() -> None:
    p = plan(make_cycle(), observed=[], lineage=make_lineage(active=None), now=T0)
    assert p.of(ClaimLineage) and not p.of(CreateJob)


# --- the happy path --------------------------------------------------------------------
def test_first_reconcile_creates_consolidation_attempt_1_from_base_model() -> None:
    p = plan(make_cycle(), observed=[], lineage=make_lineage(), now=T0)
    create = one(p, CreateJob)
    assert (create.step, create.attempt, create.job_name) == (Step.CONSOLIDATION, 1, "c1-consolidation-1")
    assert create.config.base_generation == "gen-0" and create.config.base_uri == "file:///base"
    assert create.config.output_uri == f"{STORE}/lin/c1/consolidation" and create.config.resume_from is None
    assert create.image == make_cycle().spec.images.trainer
    assert p.status.phase == Phase.CONSOLIDATING and p.status.records[0].result == StepResult.PENDING
    assert p.status.observed_generation == 1 and p.status.start_time == T0
    assert any(isinstance(a, EmitEvent) and a.reason == "Consolidating" for a in p.actions)


def test_phases_replay_what_the_base_model_knows_and_what_its_descendants_consolidated() -> None:
    gens = [
        Generation(name="gen-0", uri="file:///base", state=GenerationState.RETIRED),
        Generation(
            name="gen-1",
            parent="gen-0",
            cycle="c-old",
            uri=f"{STORE}/lin/c-old/consolidation/model",
            state=GenerationState.RETIRED,
        ),
        Generation(
            name="gen-2",
            parent="gen-1",
            cycle="c-prev",
            uri=f"{STORE}/lin/c-prev/consolidation/model",
            state=GenerationState.CHAMPION,
        ),
        Generation(
            name="gen-3",
            parent="gen-1",
            cycle="c-side",
            uri=f"{STORE}/lin/c-side/consolidation/model",
            state=GenerationState.REJECTED,
        ),
    ]
    lineage = make_lineage(generations=gens, champion="gen-2")
    lineage.spec.base_model.known_memories = ["pretraining/facts.jsonl"]
    p = plan(make_cycle(), observed=[], lineage=lineage, now=T0)
    assert one(p, CreateJob).config.prior_memory_uris == [
        "pretraining/facts.jsonl",
        f"{STORE}/lin/c-old/consolidation/memories.jsonl",
        f"{STORE}/lin/c-prev/consolidation/memories.jsonl",
    ]


def test_running_job_creates_nothing() -> None:
    cycle = started()
    p = plan(cycle, observed=[job(Step.CONSOLIDATION)], lineage=make_lineage(), now=T0)
    assert not p.of(CreateJob) and p.status.records[0].result == StepResult.RUNNING
    assert not p.of(EmitEvent)  # no transition, no event


def test_success_moves_to_dreaming_with_consolidation_output_and_dreamer_image() -> None:
    cycle = started()
    obs = [job(Step.CONSOLIDATION, state=JobState.SUCCEEDED, result_text=result(Step.CONSOLIDATION, checkpointUri="x"))]
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(seconds=9))
    create = one(p, CreateJob)
    assert create.step == Step.DREAMING and create.image == cycle.spec.images.dreamer
    assert create.config.inputs == {"consolidation": f"{STORE}/lin/c1/consolidation/model"}
    assert p.status.phase == Phase.DREAMING
    rec = p.status.records[0]
    assert rec.result == StepResult.SUCCEEDED and rec.completion_time == T0 + timedelta(seconds=5)


def test_disabled_dreaming_goes_straight_to_evaluation() -> None:
    cycle = started(make_cycle(dreaming={"enabled": False}))
    obs = [job(Step.CONSOLIDATION, state=JobState.SUCCEEDED, result_text=result(Step.CONSOLIDATION))]
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0)
    assert one(p, CreateJob).step == Step.EVALUATION and p.status.phase == Phase.EVALUATING


def test_evaluation_feeds_the_gate_then_records_the_candidate() -> None:
    cycle, _ = through(started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
    assert cycle.status.evaluation == {"knowledge_incorporation": 0.8}
    assert cycle.status.champion_evaluation == {"knowledge_incorporation": 0.1}
    assert cycle.status.gate is not None and cycle.status.gate.outcome == "Passed"
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(minutes=5))
    rec = one(p, RecordCandidate)
    assert rec.uri == f"{STORE}/lin/c1/dreaming/model" and rec.parent == "gen-0"


def candidate(state: GenerationState, **kw: Any) -> Generation:
    return Generation(name="gen-1", parent="gen-0", cycle="c1", uri="u", state=state, **kw)


def test_passed_gate_with_auto_policy_promotes_then_succeeds_and_releases() -> None:
    cycle, _ = through(started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
    p = plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0)
    assert one(p, Promote).generation == "gen-1" and p.status.phase == Phase.PROMOTING
    cycle = advance(cycle, p)
    lin = make_lineage(generations=[candidate(GenerationState.CHAMPION, promoted_at=T0)], champion="gen-1")
    p = plan(cycle, observed=[], lineage=lin, now=T0 + timedelta(minutes=1))
    assert p.status.phase == Phase.SUCCEEDED and p.status.generation == "gen-1"
    assert p.of(ReleaseLineage) and p.status.completion_time is not None
    assert get_condition(p.status.conditions, "Ready").status == "True"
    assert get_condition(p.status.conditions, "Promoted").status == "True"


def test_failed_gate_rejects_and_releases() -> None:
    cycle, _ = through(
        started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION], eval_metrics={"knowledge_incorporation": 0.2}
    )
    assert cycle.status.gate.outcome == "Failed"
    p = plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0)
    assert p.status.phase == Phase.REJECTED and one(p, Reject).reason == "GateFailed"
    assert p.of(ReleaseLineage) and not p.of(Promote)
    assert get_condition(p.status.conditions, "GatePassed").status == "False"


def test_rejected_cycle_retries_a_lost_reject_write() -> None:
    cycle, _ = through(
        started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION], eval_metrics={"knowledge_incorporation": 0.2}
    )
    lin = make_lineage(generations=[candidate(GenerationState.CANDIDATE)])
    cycle = advance(cycle, plan(cycle, observed=[], lineage=lin, now=T0))
    p = plan(cycle, observed=[], lineage=lin, now=T0 + timedelta(seconds=1))
    assert one(p, Reject).generation == "gen-1"


def test_missing_metric_is_inconclusive_and_never_promotes() -> None:
    cycle, _ = through(started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION], eval_metrics={"other": 1.0})
    p = plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0)
    assert p.status.gate.outcome == "Inconclusive" and p.status.phase == Phase.REJECTED and not p.of(Promote)


def test_inconclusive_can_ask_a_human() -> None:
    cycle = started(make_cycle(promotion={"onInconclusive": "AwaitApproval"}))
    cycle, _ = through(cycle, [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION], eval_metrics={"other": 1.0})
    p = plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0)
    assert p.status.phase == Phase.AWAITING_APPROVAL and not p.of(Promote) and not p.of(Reject)


@pytest.mark.parametrize(
    ("annotation", "phase", "action"),
    [
        (None, Phase.AWAITING_APPROVAL, None),
        ("approved", Phase.PROMOTING, Promote),
        ("rejected", Phase.REJECTED, Reject),
    ],
)
def test_manual_policy_waits_for_the_approval_annotation(
    annotation: str | None, phase: Phase, action: type | None
) -> None:
    cycle = started(make_cycle(promotion={"policy": "manual"}))
    cycle, _ = through(cycle, [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
    if annotation:
        cycle.metadata.annotations[APPROVAL_ANNOTATION] = annotation
    p = plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0)
    assert p.status.phase == phase
    assert (p.of(Promote) + p.of(Reject)) == ([] if action is None else p.of(action))
    if annotation is None:
        assert APPROVAL_ANNOTATION in p.status.message


def test_promotion_refused_by_lineage_ends_rejected() -> None:
    cycle, _ = through(started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
    cycle = advance(
        cycle,
        plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0),
    )
    assert cycle.status.phase == Phase.PROMOTING
    p = plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.REJECTED)]), now=T0)
    assert p.status.phase == Phase.REJECTED and get_condition(p.status.conditions, "Ready").reason == "PromotionRefused"


# --- failures, retries, resume ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "MissingResult"),
        ("", "MissingResult"),
        ("{not json", "MalformedResult"),
        ('{"step": "dreaming", "status": "Succeeded", "outputUri": "x"}', "MalformedResult"),
        ('{"step": "consolidation", "status": "Succeeded"}', "MalformedResult"),
        ('{"step": "consolidation", "status": "Failed", "message": "nan loss"}', "PhaseReportedFailure"),
    ],
)
def test_bad_results_fail_the_attempt_and_never_advance(text: str | None, reason: str) -> None:
    cycle = started()
    obs = [job(Step.CONSOLIDATION, state=JobState.SUCCEEDED, result_text=text)]
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(seconds=6))
    rec = p.status.records[0]
    assert rec.result == StepResult.FAILED and rec.reason == reason and rec.message
    assert not p.of(CreateJob) and p.status.phase == Phase.CONSOLIDATING
    assert p.status.next_attempt_after == T0 + timedelta(seconds=15)  # finished at +5, backoff 10
    assert one(p, RequeueAfter).seconds == pytest.approx(9.0)


def test_retry_after_backoff_resumes_from_the_default_checkpoint() -> None:
    cycle = started()
    obs = [job(Step.CONSOLIDATION, state=JobState.FAILED, reason="BackoffLimitExceeded", message="exit 1")]
    cycle = advance(cycle, plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(seconds=6)))
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(seconds=15))
    create = one(p, CreateJob)
    assert create.attempt == 2 and create.job_name == "c1-consolidation-2"
    assert create.config.resume_from == f"{STORE}/lin/c1/consolidation/checkpoints"
    assert p.status.next_attempt_after is None


def test_retry_resumes_from_the_checkpoint_the_failed_attempt_reported() -> None:
    cycle = started()
    text = json.dumps(
        {
            "step": "consolidation",
            "status": "Failed",
            "message": "preempted",
            "checkpointUri": "file:///store/ck/step-40",
        }
    )
    obs = [job(Step.CONSOLIDATION, state=JobState.FAILED, reason="Evicted", result_text=text)]
    cycle = advance(cycle, plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(seconds=6)))
    assert cycle.status.records[0].checkpoint_uri == "file:///store/ck/step-40"
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(minutes=1))
    assert one(p, CreateJob).config.resume_from == "file:///store/ck/step-40"


def test_budget_exhausted_fails_the_cycle_with_the_last_reason() -> None:
    cycle = started()
    obs: list[ObservedJob] = []
    now = T0
    for attempt in (1, 2, 3):
        obs.append(
            job(Step.CONSOLIDATION, attempt, JobState.FAILED, reason="OOMKilled", message="container ran out of memory")
        )
        now += timedelta(hours=1)
        p = plan(cycle, observed=obs, lineage=make_lineage(), now=now)
        cycle = advance(cycle, p)
        if attempt < 3:
            assert one(p, CreateJob).attempt == attempt + 1
    assert p.status.phase == Phase.FAILED and not p.of(CreateJob)
    ready = get_condition(p.status.conditions, "Ready")
    assert ready.reason == "RetryBudgetExhausted" and "3 of 3" in ready.message and "OOMKilled" in ready.message
    assert p.of(ReleaseLineage) and get_condition(p.status.conditions, "Failed").status == "True"


def test_permanent_failure_is_not_retried() -> None:
    cycle = started()
    rec = cycle.status.records[0].model_copy(
        update={"result": StepResult.FAILED, "reason": "EngineNotInstalled", "message": "no TrainJob CRD"}
    )
    cycle.status.records[0] = rec
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(hours=1))
    assert p.status.phase == Phase.FAILED and not p.of(CreateJob)


# --- restarts ------------------------------------------------------------------------------
def test_a_job_whose_record_was_lost_is_adopted_not_recreated() -> None:
    cycle = make_cycle()  # status never written: the operator died right after creating the Job
    p = plan(cycle, observed=[job(Step.CONSOLIDATION)], lineage=make_lineage(), now=T0)
    assert not p.of(CreateJob) and p.status.records[0].job_name == "c1-consolidation-1"


def test_a_planned_job_that_was_never_created_is_created_again_with_the_same_name() -> None:
    cycle = started()
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(seconds=1))
    assert one(p, CreateJob).job_name == "c1-consolidation-1" and len(p.status.records) == 1


def test_attempt_numbers_never_reuse_an_observed_job() -> None:
    cycle = make_cycle()
    obs = [
        job(Step.CONSOLIDATION, 1, JobState.FAILED, reason="X"),
        job(Step.CONSOLIDATION, 2, JobState.FAILED, reason="X"),
    ]
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(hours=1))
    assert one(p, CreateJob).attempt == 3


def test_a_running_job_that_vanished_counts_as_a_failed_attempt() -> None:
    cycle = advance(started(), plan(started(), observed=[job(Step.CONSOLIDATION)], lineage=make_lineage(), now=T0))
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(seconds=1))
    assert p.status.records[0].reason == "JobDeleted" and not p.of(CreateJob)


def test_orphan_jobs_of_superseded_attempts_are_deleted() -> None:
    cycle = started()
    obs = [job(Step.CONSOLIDATION, 1), job(Step.DREAMING, 7)]
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0)
    assert [a.job_name for a in p.of(DeleteJob)] == [job_name("c1", Step.DREAMING, 7)]


# --- suspend / resume --------------------------------------------------------------------------
def test_suspend_deletes_the_running_job_and_resume_continues_from_its_checkpoint() -> None:
    cycle = started()
    obs = [job(Step.CONSOLIDATION)]
    cycle = advance(cycle, plan(cycle, observed=obs, lineage=make_lineage(), now=T0))
    cycle.spec.suspend = True
    p = plan(cycle, observed=obs, lineage=make_lineage(), now=T0 + timedelta(seconds=30))
    assert one(p, DeleteJob).job_name == "c1-consolidation-1" and p.status.phase == Phase.SUSPENDED
    assert p.status.records[0].reason == "Suspended"
    cycle = advance(cycle, p)
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(seconds=31))
    assert not p.of(CreateJob) and not p.of(DeleteJob) and p.status.phase == Phase.SUSPENDED
    cycle.spec.suspend = False
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(seconds=32))  # no backoff: not a failure
    create = one(p, CreateJob)
    assert create.attempt == 2 and create.config.resume_from == f"{STORE}/lin/c1/consolidation/checkpoints"
    assert get_condition(p.status.conditions, "Suspended").reason == "Resumed"


def test_suspended_attempts_do_not_spend_the_budget() -> None:
    cycle = make_cycle(retries={"maxAttempts": 1})
    cycle = started(cycle)
    for n in range(1, 4):
        cycle.spec.suspend = True
        cycle = advance(cycle, plan(cycle, observed=[job(Step.CONSOLIDATION, n)], lineage=make_lineage(), now=T0))
        cycle.spec.suspend = False
        p = plan(cycle, observed=[], lineage=make_lineage(), now=T0)
        assert one(p, CreateJob).attempt == n + 1
        cycle = advance(cycle, p)


# --- finished cycles -----------------------------------------------------------------------------
def finished(ttl: int | None) -> SleepCycle:
    cycle, _ = through(
        started(make_cycle(ttlSecondsAfterFinished=ttl) if ttl is not None else None),
        [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION],
        eval_metrics={"knowledge_incorporation": 0.2},
    )
    return advance(
        cycle,
        plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0),
    )


def test_ttl_deletes_a_finished_cycle_when_due() -> None:
    cycle = finished(ttl=60)
    lin = make_lineage(active=None, generations=[candidate(GenerationState.REJECTED)])
    p = plan(cycle, observed=[], lineage=lin, now=T0 + timedelta(seconds=30))
    assert one(p, RequeueAfter).seconds == pytest.approx(30) and not p.of(DeleteCycle)
    p = plan(cycle, observed=[], lineage=lin, now=T0 + timedelta(seconds=61))
    assert p.of(DeleteCycle)


def test_finished_cycle_without_ttl_does_nothing_but_release_a_held_lineage() -> None:
    cycle = finished(ttl=None)
    p = plan(
        cycle, observed=[], lineage=make_lineage(active="c1", generations=[candidate(GenerationState.REJECTED)]), now=T0
    )
    assert [type(a) for a in p.actions] == [ReleaseLineage]
    p = plan(
        cycle, observed=[], lineage=make_lineage(active=None, generations=[candidate(GenerationState.REJECTED)]), now=T0
    )
    assert p.actions == []


def test_unknown_base_generation_fails_fast() -> None:
    p = plan(make_cycle(baseGeneration="gen-9"), observed=[], lineage=make_lineage(), now=T0)
    assert p.status.phase == Phase.FAILED and "gen-9" in p.status.message and not p.of(CreateJob)


def test_base_generation_is_the_champion_when_unset() -> None:
    gens = [Generation(name="gen-3", uri="file:///g3", state=GenerationState.CHAMPION)]
    p = plan(make_cycle(), observed=[], lineage=make_lineage(generations=gens, champion="gen-3"), now=T0)
    assert (p.status.base_generation, p.status.base_uri) == ("gen-3", "file:///g3")
    assert one(p, CreateJob).config.champion_generation == "gen-3"


def test_plan_is_deterministic() -> None:
    cycle = started()
    obs = [job(Step.CONSOLIDATION, state=JobState.SUCCEEDED, result_text=result(Step.CONSOLIDATION))]
    a = plan(cycle, observed=obs, lineage=make_lineage(), now=T0)
    b = plan(cycle, observed=obs, lineage=make_lineage(), now=T0)
    assert a.status == b.status and a.actions == b.actions


def test_lineage_deleted_under_a_running_cycle_fails_it_and_stops_its_job() -> None:
    cycle = started()
    p = plan(cycle, observed=[job(Step.CONSOLIDATION)], lineage=None, now=T0)
    assert p.status.phase == Phase.FAILED and one(p, DeleteJob).job_name == "c1-consolidation-1"
    assert get_condition(p.status.conditions, "Ready").reason == "LineageNotFound"


def test_nan_eval_metric_is_inconclusive_and_status_stays_valid_json() -> None:
    cycle, _ = through(
        started(),
        [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION],
        eval_metrics={"knowledge_incorporation": float("nan")},
    )
    assert cycle.status.gate is not None and cycle.status.gate.outcome == "Inconclusive"
    assert "nan" in cycle.status.gate.rules[0].reason.lower()
    json.dumps(cycle.status.model_dump(by_alias=True, mode="json"), allow_nan=False)


# --- step conditions tell the truth -------------------------------------------------------------
def cond(p: Plan | SleepCycle, type_: str) -> Any:
    status = p.status
    found = get_condition(status.conditions, type_)
    assert found is not None, f"no {type_} condition in {[c.type for c in status.conditions]}"
    return found


@pytest.mark.parametrize(
    ("steps", "condition", "job_name_"),
    [
        ([Step.CONSOLIDATION], "Consolidated", "c1-consolidation-1"),
        ([Step.CONSOLIDATION, Step.DREAMING], "Dreamed", "c1-dreaming-1"),
        ([Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION], "Evaluated", "c1-evaluation-1"),
    ],
)
def test_a_succeeded_step_condition_is_true_with_its_attempt_job_and_output(
    steps: list[Step], condition: str, job_name_: str
) -> None:
    cycle, _ = through(started(), steps)
    c = cond(cycle, condition)
    assert (c.status, c.reason) == ("True", "Succeeded")
    assert "attempt 1 of 3" in c.message and job_name_ in c.message
    assert f"{STORE}/lin/c1/{steps[-1].value}/model" in c.message  # the output the step reported
    assert c.observed_generation == 1


def test_every_step_condition_is_true_on_a_succeeded_cycle() -> None:
    cycle, _ = through(started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
    cycle = advance(
        cycle,
        plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0),
    )
    lin = make_lineage(generations=[candidate(GenerationState.CHAMPION, promoted_at=T0)], champion="gen-1")
    p = plan(cycle, observed=[], lineage=lin, now=T0 + timedelta(minutes=1))
    assert p.status.phase == Phase.SUCCEEDED
    for type_ in ("Consolidated", "Dreamed", "Evaluated", "GatePassed", "Promoted", "Ready"):
        assert cond(p, type_).status == "True", (type_, cond(p, type_))


def test_a_cycle_finished_with_running_step_conditions_gets_them_corrected() -> None:
    # What an older operator left behind: Succeeded, with Consolidated still False/Running.
    cycle, _ = through(started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
    cycle.status.phase = Phase.SUCCEEDED
    cycle.status.conditions = set_condition(
        cycle.status.conditions,
        "Consolidated",
        False,
        reason="Running",
        message="consolidation attempt 1 of 3 is running",
        now=T0,
    )
    p = plan(cycle, observed=[], lineage=make_lineage(active=None), now=T0 + timedelta(minutes=1))
    assert cond(p, "Consolidated").status == "True"


def test_disabled_dreaming_reads_skipped() -> None:
    cycle = started(make_cycle(dreaming={"enabled": False}))
    assert (cond(cycle, "Dreamed").status, cond(cycle, "Dreamed").reason) == ("True", "Skipped")


def test_a_running_step_condition_is_false_running() -> None:
    c = cond(started(), "Consolidated")
    assert (c.status, c.reason) == ("False", "Running") and "c1-consolidation-1" in c.message


def test_a_failed_attempt_waiting_for_backoff_reads_backoff_waiting() -> None:
    obs = [job(Step.CONSOLIDATION, state=JobState.FAILED, reason="BackoffLimitExceeded", message="exit 1")]
    p = plan(started(), observed=obs, lineage=make_lineage(), now=T0 + timedelta(seconds=6))
    assert (cond(p, "Consolidated").status, cond(p, "Consolidated").reason) == ("False", "BackoffWaiting")


@pytest.mark.parametrize("step", [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
def test_a_step_that_spends_its_budget_is_false_with_the_reason(step: Step) -> None:
    order = [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION]
    cycle, observed = through(started(), order[: order.index(step)])
    now = T0
    for attempt in (1, 2, 3):
        observed = [o for o in observed if o.step != step or o.attempt < attempt]
        observed.append(
            ObservedJob(
                name=job_name("c1", step, attempt),
                step=step,
                attempt=attempt,
                state=JobState.FAILED,
                created=now,
                finished=now,
                reason="OOMKilled",
                message="out of memory",
            )
        )
        now += timedelta(hours=1)
        cycle = advance(cycle, plan(cycle, observed=observed, lineage=make_lineage(), now=now))
    assert cycle.status.phase == Phase.FAILED
    c = cond(cycle, {Step.CONSOLIDATION: "Consolidated", Step.DREAMING: "Dreamed", Step.EVALUATION: "Evaluated"}[step])
    assert (c.status, c.reason) == ("False", "RetryBudgetExhausted") and "OOMKilled" in c.message


def test_a_permanent_failure_is_false_with_its_reason() -> None:
    cycle = started()
    cycle.status.records[0] = cycle.status.records[0].model_copy(
        update={"result": StepResult.FAILED, "reason": "EngineNotInstalled", "message": "no TrainJob CRD"}
    )
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(hours=1))
    assert (cond(p, "Consolidated").status, cond(p, "Consolidated").reason) == ("False", "EngineNotInstalled")


def test_a_suspended_step_reads_suspended() -> None:
    cycle = started()
    cycle.spec.suspend = True
    p = plan(cycle, observed=[job(Step.CONSOLIDATION)], lineage=make_lineage(), now=T0 + timedelta(seconds=30))
    assert (cond(p, "Consolidated").status, cond(p, "Consolidated").reason) == ("False", "Suspended")


def test_a_step_stopped_by_a_deleted_lineage_says_so() -> None:
    cycle = advance(started(), plan(started(), observed=[job(Step.CONSOLIDATION)], lineage=make_lineage(), now=T0))
    p = plan(cycle, observed=[job(Step.CONSOLIDATION)], lineage=None, now=T0 + timedelta(seconds=5))
    assert (cond(p, "Consolidated").status, cond(p, "Consolidated").reason) == ("False", "LineageNotFound")


def test_conditions_follow_a_new_spec_generation() -> None:
    cycle, _ = through(started(), [Step.CONSOLIDATION])
    cycle.metadata.generation = 2  # e.g. spec.retries changed
    p = plan(
        cycle,
        observed=[
            job(Step.CONSOLIDATION, state=JobState.SUCCEEDED, result_text=result(Step.CONSOLIDATION)),
            job(Step.DREAMING),
        ],
        lineage=make_lineage(),
        now=T0 + timedelta(minutes=1),
    )
    assert {c.type: c.observed_generation for c in p.status.conditions} == {c.type: 2 for c in p.status.conditions}


# --- strict results --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ['"0.95"', "true", "null"])
def test_a_metric_that_is_not_a_json_number_fails_the_attempt_with_the_field(value: str) -> None:
    cycle, observed = through(started(), [Step.CONSOLIDATION, Step.DREAMING])
    text = (
        '{"step": "evaluation", "status": "Succeeded", "outputUri": "file:///store/lin/c1/evaluation/eval.json", '
        f'"metrics": {{"knowledge_incorporation": {value}}}, "baseline": {{"knowledge_incorporation": 0.1}}}}'
    )
    observed.append(job(Step.EVALUATION, state=JobState.SUCCEEDED, result_text=text))
    p = plan(cycle, observed=observed, lineage=make_lineage(), now=T0 + timedelta(seconds=6))
    rec = p.status.records[-1]
    assert (rec.step, rec.result, rec.reason) == (Step.EVALUATION, StepResult.FAILED, "MalformedResult")
    assert "metrics.knowledge_incorporation" in rec.message and "not a JSON number" in rec.message
    assert p.status.gate is None and not p.of(RecordCandidate) and not p.of(Promote)


def test_an_integer_metric_is_a_number() -> None:
    cycle, _ = through(
        started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION], eval_metrics={"knowledge_incorporation": 1}
    )
    assert cycle.status.gate is not None and cycle.status.gate.outcome == "Passed"


# --- a pinned lineage starts no cycle ----------------------------------------------------------------
def pinned(to: str = "gen-99", **kw: Any) -> ModelLineage:
    lin = make_lineage(**kw)
    lin.spec.rollback_to = to
    return lin


def test_a_cycle_on_a_pinned_lineage_waits_in_pending_and_says_how_to_unpin() -> None:
    p = plan(make_cycle(), observed=[], lineage=pinned(active=None), now=T0)
    assert p.status.phase == Phase.PENDING and not p.of(CreateJob) and not p.of(ClaimLineage)
    ready = cond(p, "Ready")
    assert (ready.status, ready.reason) == ("False", "LineagePinned")
    assert "gen-99" in ready.message and "rollbackTo" in ready.message and "whilePinned: Run" in ready.message
    assert any(isinstance(a, EmitEvent) and a.type == "Warning" and a.reason == "LineagePinned" for a in p.actions)
    assert one(p, RequeueAfter).seconds > 0
    again = plan(advance(make_cycle(), p), observed=[], lineage=pinned(active=None), now=T0 + timedelta(seconds=30))
    assert not again.of(EmitEvent)  # one Event when it starts waiting, not one per pass


def test_a_waiting_cycle_that_held_the_lineage_gives_it_back() -> None:
    p = plan(make_cycle(), observed=[], lineage=pinned(active="c1"), now=T0)
    assert one(p, ReleaseLineage).lineage == "lin" and not p.of(CreateJob)


def test_a_cycle_starts_once_the_pin_is_removed() -> None:
    cycle = advance(make_cycle(), plan(make_cycle(), observed=[], lineage=pinned(active=None), now=T0))
    p = plan(cycle, observed=[], lineage=make_lineage(), now=T0 + timedelta(seconds=1))
    assert one(p, CreateJob).step == Step.CONSOLIDATION


def test_while_pinned_run_trains_now_and_waits_to_promote() -> None:
    cycle = make_cycle(promotion={"whilePinned": "Run"})
    lin = pinned("gen-0")
    cycle = started(cycle, lineage=lin)
    assert cycle.status.records, "whilePinned: Run starts the Jobs"
    cycle, _ = through(cycle, [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION], lineage=lin)
    lin.status.generations = [candidate(GenerationState.CANDIDATE)]
    p = plan(cycle, observed=[], lineage=lin, now=T0)
    assert p.status.phase == Phase.PROMOTING and not p.of(Promote)
    assert cond(p, "Promoted").reason == "LineagePinned" and "rollbackTo" in cond(p, "Promoted").message
    p = plan(
        advance(cycle, p), observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0
    )
    assert one(p, Promote).generation == "gen-1"


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("StaleParent", "trained from gen-0, but another cycle made gen-2 champion first"),
        ("Pinned", "pinned by spec.rollbackTo"),
    ],
)
def test_a_refused_promotion_names_its_actual_cause(reason: str, words: str) -> None:
    cycle, _ = through(started(), [Step.CONSOLIDATION, Step.DREAMING, Step.EVALUATION])
    cycle = advance(
        cycle,
        plan(cycle, observed=[], lineage=make_lineage(generations=[candidate(GenerationState.CANDIDATE)]), now=T0),
    )
    lin = make_lineage(generations=[candidate(GenerationState.REJECTED, reason=reason)], champion="gen-2")
    p = plan(cycle, observed=[], lineage=lin, now=T0)
    assert p.status.phase == Phase.REJECTED and words in p.status.message
    assert " or " not in cond(p, "Promoted").message


# --- problems post Warning Events ------------------------------------------------------------------
def test_waiting_for_a_missing_lineage_posts_one_warning_event() -> None:
    p = plan(make_cycle(), observed=[], lineage=None, now=T0)
    warning = one(p, EmitEvent)
    assert (warning.type, warning.reason) == ("Warning", "LineageNotFound") and "lin" in warning.message
    assert not plan(advance(make_cycle(), p), observed=[], lineage=None, now=T0 + timedelta(seconds=30)).of(EmitEvent)
