"""The SleepCycle resource: one sleep of one model lineage.

Consolidation Job → dreaming Job → evaluation Job → gate → promotion into the
ModelLineage.  The status is written only by the operator (status subresource);
conditions are the contract, ``phase`` is the human summary.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from reverie.api.base import ApiModel, Condition, Images, RetryPolicy, Scheduling, cel
from reverie.api.steps import ConsolidationSpec, DreamingSpec, EvaluationSpec, MemorySpec

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Label values (and DNS labels) stop at 63 characters.
MAX_NAME_LABEL = 63

# Conditions are a map keyed by type, so server-side apply merges them per type.
CONDITIONS_LIST: JsonDict = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class Phase(StrEnum):
    """Derived, human-facing phase of a cycle."""

    PENDING = "Pending"
    CONSOLIDATING = "Consolidating"
    DREAMING = "Dreaming"
    EVALUATING = "Evaluating"
    AWAITING_APPROVAL = "AwaitingApproval"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    REJECTED = "Rejected"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.REJECTED, Phase.FAILED})


class Step(StrEnum):
    """A workload step of the cycle: one Job per attempt of each."""

    CONSOLIDATION = "consolidation"
    DREAMING = "dreaming"
    EVALUATION = "evaluation"


class CycleCondition(StrEnum):
    """The condition types of a SleepCycle: the contract clients wait on (``phase`` is the human summary)."""

    READY = "Ready"
    CONSOLIDATED = "Consolidated"
    DREAMED = "Dreamed"
    EVALUATED = "Evaluated"
    GATE_PASSED = "GatePassed"
    PROMOTED = "Promoted"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


class CycleReason(StrEnum):
    """The reasons the operator writes on a SleepCycle's conditions.

    Besides these, ``Ready`` (False) carries the phase's name while a step runs,
    ``GatePassed`` the gate's outcome (Passed, Failed, Inconclusive) and a
    rejected promotion ``Gate<outcome>``.
    """

    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    SKIPPED = "Skipped"
    BACKOFF_WAITING = "BackoffWaiting"
    RETRY_BUDGET_EXHAUSTED = "RetryBudgetExhausted"
    # A Job that can never succeed (reported by the Job's own reason): no retry.
    ENGINE_NOT_INSTALLED = "EngineNotInstalled"
    INVALID_JOB_SPEC = "InvalidJobSpec"
    LINEAGE_NOT_FOUND = "LineageNotFound"
    WAITING_FOR_LINEAGE = "WaitingForLineage"
    CLAIMING_LINEAGE = "ClaimingLineage"
    LINEAGE_PINNED = "LineagePinned"
    BASE_GENERATION_NOT_FOUND = "BaseGenerationNotFound"
    NOTHING_TO_CONSOLIDATE = "NothingToConsolidate"
    NO_INBOX = "NoInbox"
    TAKING_MEMORIES = "TakingMemories"
    SUSPENDED = "Suspended"
    SUSPENDED_BY_USER = "SuspendedByUser"
    RESUMED = "Resumed"
    AWAITING_APPROVAL = "AwaitingApproval"
    REJECTED_BY_APPROVER = "RejectedByApprover"
    PROMOTING = "Promoting"
    PROMOTED = "Promoted"
    PROMOTION_REFUSED = "PromotionRefused"


class PromotionPolicy(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class PromotionSpec(ApiModel):
    """What happens after the gate."""

    policy: PromotionPolicy = Field(
        default=PromotionPolicy.AUTO,
        description="auto: promote when the gate passes; manual: wait for `reverie approve` (annotation).",
    )
    on_inconclusive: Literal["Reject", "AwaitApproval"] = Field(
        default="Reject",
        description="What an Inconclusive gate does: reject the candidate, or ask a human.",
    )
    while_pinned: Literal["Wait", "Run"] = Field(
        default="Wait",
        description=(
            "While the lineage is pinned (spec.rollbackTo): Wait stays Pending and starts no Job until the pin "
            "is removed; Run trains and evaluates from the pinned champion now and promotes once the pin is removed."
        ),
    )


class SleepCycleSpec(ApiModel):
    """Desired state of one sleep cycle."""

    lineage_ref: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Name of the ModelLineage (same namespace) this cycle trains and promotes into.",
    )
    base_generation: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Generation to start from; default: the lineage's champion when the cycle starts.",
    )
    memory: MemorySpec = Field(description="The in-context memories to consolidate.")
    consolidation: ConsolidationSpec = Field(
        default_factory=ConsolidationSpec, description="Knowledge Seeding settings."
    )
    dreaming: DreamingSpec = Field(default_factory=DreamingSpec, description="Dreaming settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation suites and gate rules.")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec, description="Promotion policy after the gate.")
    retries: RetryPolicy = Field(default_factory=RetryPolicy, description="Per-phase retry budget and backoff.")
    suspend: bool = Field(
        default=False,
        description="Stop creating Jobs; running Jobs are deleted and resume later from their checkpoint.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Delete the finished cycle (not its artifacts or generation) this many seconds after it ends.",
    )
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Kueue queue, priority, node placement of phase Jobs."
    )
    images: Images = Field(default_factory=Images, description="Default images of the phase workloads.")


class StepResult(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class AttemptRecord(ApiModel):
    """One attempt of one step: what ran, when, and what it produced."""

    step: Step = Field(description="consolidation, dreaming or evaluation.")
    attempt: int = Field(ge=1, le=100, description="1-based attempt number.")
    job_name: str = Field(max_length=253, description="Name of the Job (<cycle>-<step>-<attempt>).")
    result: StepResult = Field(default=StepResult.PENDING, description="Pending, Running, Succeeded or Failed.")
    reason: str = Field(default="", max_length=128, description="CamelCase reason of the result.")
    message: str = Field(default="", max_length=4096, description="Human-readable detail (failure cause).")
    start_time: datetime | None = Field(default=None, description="When the Job was created.")
    completion_time: datetime | None = Field(default=None, description="When the attempt ended.")
    output_uri: str | None = Field(default=None, max_length=2048, description="Where the step wrote its outputs.")
    content_hash: str | None = Field(default=None, max_length=128, description="sha256 of the produced artifact.")
    checkpoint_uri: str | None = Field(
        default=None, max_length=2048, description="Last checkpoint, handed to the next attempt."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, max_length=64, description="Scalar metrics the step reported."
    )


class RuleVerdict(ApiModel):
    """The gate's verdict on one rule."""

    rule: str = Field(max_length=256, description="The rule as written in the spec.")
    verdict: Literal["Passed", "Failed", "Inconclusive"] = Field(description="Passed, Failed or Inconclusive.")
    reason: str = Field(default="", max_length=1024, description="Why, with the values compared.")


class GateDecision(ApiModel):
    """Outcome of the promotion gate."""

    outcome: Literal["Passed", "Failed", "Inconclusive"] = Field(description="Passed only if every rule passed.")
    rules: list[RuleVerdict] = Field(default_factory=list, max_length=32, description="One verdict per rule.")
    decided_at: datetime | None = Field(default=None, description="When the gate decided.")


class MemorySetStatus(ApiModel):
    """The memories an inbox cycle took, fixed when it started: a retry or a restart reads the same file."""

    uri: str = Field(
        max_length=2048, description="JSONL file of the memories, beside the cycle's outputs in the store."
    )
    count: int = Field(ge=0, description="Memories in the set (0: nothing new in the inbox).")
    waiting: int = Field(default=0, ge=0, description="New memories left in the inbox for later sleeps (maxPerSleep).")
    content_hash: str | None = Field(default=None, max_length=128, description="sha256 of the file.")
    taken_at: datetime | None = Field(default=None, description="When the set was fixed.")


class SleepCycleStatus(ApiModel):
    """Observed state of a cycle, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation last reconciled.")
    phase: Phase = Field(default=Phase.PENDING, description="Human-facing summary; conditions are the contract.")
    message: str = Field(default="", max_length=4096, description="What the cycle is doing or waiting for, and why.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description=f"Conditions ({', '.join(CycleCondition)}).",
        json_schema_extra=CONDITIONS_LIST,
    )
    base_generation: str | None = Field(
        default=None, max_length=63, description="Generation this cycle started from (resolved champion)."
    )
    base_uri: str | None = Field(default=None, max_length=2048, description="Artifact URI of the base generation.")
    memory: MemorySetStatus | None = Field(
        default=None, description="Inbox cycles: the memories taken from the inbox when the cycle started."
    )
    records: list[AttemptRecord] = Field(
        default_factory=list, max_length=64, description="Every step attempt, oldest first."
    )
    next_attempt_after: datetime | None = Field(
        default=None, description="Backoff: no new attempt is created before this time."
    )
    evaluation: dict[str, float] = Field(
        default_factory=dict, max_length=64, description="Candidate eval metrics the gate read."
    )
    champion_evaluation: dict[str, float] = Field(
        default_factory=dict, max_length=64, description="Champion metrics the gate compared against."
    )
    gate: GateDecision | None = Field(default=None, description="Gate decision with a verdict per rule.")
    generation: str | None = Field(default=None, max_length=63, description="The generation this cycle produced.")
    start_time: datetime | None = Field(default=None, description="When the first Job was created.")
    completion_time: datetime | None = Field(default=None, description="When the cycle reached a terminal phase.")


class ObjectMeta(ApiModel):
    """The parts of metadata the models read (everything else passes through)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", description="Object name.")
    namespace: str = Field(default="default", description="Object namespace.")
    generation: int | None = Field(default=None, description="Spec generation, set by the API server.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")


class SleepCycle(ApiModel):
    """One sleep of a model lineage: consolidation, dreaming, evaluation, gate, promotion (short name: sleep)."""

    # Job names are shortened by the planner (hash suffix), but every phase Job and pod carries
    # the cycle's name in the reverie.dev/cycle label, and label values stop at 63.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=cel(
            (
                f"size(self.metadata.name) <= {MAX_NAME_LABEL}",
                f"metadata.name may not be more than {MAX_NAME_LABEL} characters: the operator labels every phase "
                f"Job and pod with it (reverie.dev/cycle) and label values stop at {MAX_NAME_LABEL}; choose a shorter name",
            ),
        ),
    )

    api_version: Literal["reverie.dev/v1alpha1"] = Field(
        default="reverie.dev/v1alpha1", description="reverie.dev/v1alpha1"
    )
    kind: Literal["SleepCycle"] = Field(default="SleepCycle", description="SleepCycle")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: SleepCycleSpec = Field(
        description="Desired state.",
        # Immutability lives here, not on SleepCycleSpec: a ModelLineage's
        # schedule template is a SleepCycleSpec too, and that one may change.
        json_schema_extra=cel(
            (
                "self.lineageRef == oldSelf.lineageRef",
                "lineageRef is immutable; create a new SleepCycle instead",
                ".lineageRef",
            ),
            (
                "has(self.baseGeneration) == has(oldSelf.baseGeneration)"
                " && (!has(self.baseGeneration) || self.baseGeneration == oldSelf.baseGeneration)",
                "baseGeneration is immutable; create a new SleepCycle instead",
                ".baseGeneration",
            ),
            (
                "self.memory == oldSelf.memory",
                "memory is immutable once the cycle exists; create a new SleepCycle instead",
                ".memory",
            ),
        ),
    )
    status: SleepCycleStatus = Field(default_factory=SleepCycleStatus, description="Observed state.")
