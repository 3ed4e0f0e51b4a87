"""Shared building blocks of the API models: camelCase wire names, conditions,
Kubernetes scheduling knobs and per-phase runtime settings.

Every field carries a one-line description (it becomes the CRD's description,
what ``kubectl explain`` shows), a safe default where one makes sense, and bounds.
CEL rules that the API server enforces are attached with :func:`cel`.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it is written to the API server (aliases, no unset Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """CEL validations for ``json_schema_extra``: (rule, message[, fieldPath]).

    ``fieldPath`` (e.g. ``".topK"``) makes the API server report the error at
    that field instead of at the object the rule is attached to.  A rule that
    mentions ``oldSelf`` is a transition rule: it runs on updates only.
    """
    validations: list[dict[str, str]] = []
    for rule in rules:
        validation = {"rule": rule[0], "message": rule[1]}
        if len(rule) == 3:
            validation["fieldPath"] = rule[2]
        validations.append(validation)
    return {"x-kubernetes-validations": validations}


# A Kubernetes resource quantity ("4", "500m", "16Gi", "1e3"), the pattern the
# API server's own CRD generators use for resource.Quantity.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)]

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity ("500m" → 0.5, "16Gi" → 17179869184)."""
    match = re.fullmatch(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)", text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity")
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix in _SUFFIXES:
        return number * Decimal(_SUFFIXES[suffix])
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    raise ValueError(f"{text!r} has an unknown suffix {suffix!r}")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-style condition; conditions are the contract, phase is for humans."""

    type: str = Field(description="Condition type, e.g. Ready, Consolidated, GatePassed.", max_length=64)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason.", max_length=128)
    message: str = Field(default="", description="Human-readable explanation of the condition.", max_length=4096)
    last_transition_time: datetime | None = Field(default=None, description="When the condition last changed status.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this condition was computed from."
    )


EXISTS_WITHOUT_VALUE = "value must be empty when operator is Exists; remove value or use operator Equal"


class Toleration(ApiModel):
    """A pod toleration, copied verbatim onto the phase pods."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value)",
                EXISTS_WITHOUT_VALUE,
                ".value",
            ),
        )
    )

    key: str | None = Field(default=None, description="Taint key the toleration applies to.", max_length=316)
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, description="Taint value for operator Equal.", max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: seconds the pod stays bound after the taint appears."
    )

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError(EXISTS_WITHOUT_VALUE)
        return self


LIMITS_BELOW_REQUESTS = "every limit must be >= its request; raise limits or lower requests"


class Resources(ApiModel):
    """Container resources (Kubernetes quantities, e.g. cpu: '4', memory: 16Gi, nvidia.com/gpu: '1')."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits)"
                " || !isQuantity(self.requests[k]) || !isQuantity(self.limits[k])"
                " || quantity(self.limits[k]).compareTo(quantity(self.requests[k])) >= 0)",
                LIMITS_BELOW_REQUESTS,
                ".limits",
            ),
        )
    )

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Minimum resources, as quantities."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=16, description="Maximum resources, as quantities."
    )

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        for name, request in self.requests.items():
            if name in self.limits and parse_quantity(self.limits[name]) < parse_quantity(request):
                raise ValueError(f"{LIMITS_BELOW_REQUESTS} ({name}: {self.limits[name]} < {request})")
        return self


class Engine(StrEnum):
    JOB = "Job"
    TRAINJOB = "TrainJob"
    JOBSET = "JobSet"


class StepRuntime(ApiModel):
    """Where and how one phase's workload runs."""

    image: str | None = Field(
        default=None,
        max_length=512,
        description="Container image; default: the cycle's images.trainer (images.dreamer for dreaming).",
    )
    resources: Resources = Field(default_factory=Resources, description="Resources of each worker container.")
    num_nodes: int = Field(
        default=1, ge=1, le=256, description="Worker pods; more than 1 runs an Indexed Job with torchrun rendezvous."
    )
    procs_per_node: int = Field(default=1, ge=1, le=16, description="Processes (usually GPUs) per worker pod.")
    engine: Engine = Field(
        default=Engine.JOB,
        description="Job (built in), or TrainJob (Kubeflow Trainer) / JobSet when those are installed.",
    )
    active_deadline_seconds: int = Field(
        default=86400, ge=60, le=1209600, description="Wall-clock limit of one attempt, in seconds (default 1 day)."
    )


class Scheduling(ApiModel):
    """Cluster scheduling knobs applied to every phase Job of a cycle."""

    queue_name: str | None = Field(
        default=None, max_length=63, description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the phase pods."
    )
    node_selector: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=dict, max_length=32, description="Node labels the phase pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of the phase pods."
    )
    service_account_name: str | None = Field(
        default=None, max_length=253, description="ServiceAccount of the phase pods (the API token is never mounted)."
    )


class Images(ApiModel):
    """Default images of the phase workloads."""

    trainer: str = Field(
        default="ghcr.io/reverie-dev/reverie-trainer:0.1.0",
        max_length=512,
        description="Image for consolidation and evaluation (torch, transformers, TRL, DeepSpeed).",
    )
    dreamer: str = Field(
        default="ghcr.io/reverie-dev/reverie-dreamer:0.1.0",
        max_length=512,
        description="Image for dreaming (vLLM + TRL).",
    )


BACKOFF_CAP_BELOW_START = "maxBackoffSeconds must be >= backoffSeconds; raise maxBackoffSeconds or lower backoffSeconds"


class RetryPolicy(ApiModel):
    """Per-phase retry budget, owned by the operator (phase Jobs use backoffLimit 0)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.maxBackoffSeconds >= self.backoffSeconds",
                BACKOFF_CAP_BELOW_START,
                ".maxBackoffSeconds",
            ),
        )
    )

    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts per phase before the cycle fails.")
    backoff_seconds: int = Field(default=30, ge=0, le=86400, description="Wait before the second attempt, in seconds.")
    backoff_multiplier: float = Field(
        default=2.0, ge=1.0, le=10.0, description="Factor applied to the wait after each failure."
    )
    max_backoff_seconds: int = Field(
        default=1800, ge=0, le=604800, description="Upper bound on the wait between attempts."
    )

    @model_validator(mode="after")
    def _cap_covers_start(self) -> RetryPolicy:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError(BACKOFF_CAP_BELOW_START)
        return self
