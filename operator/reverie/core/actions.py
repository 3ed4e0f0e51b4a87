"""The actions a cycle plan is made of: what an executor does to the world.

The planner (:mod:`reverie.core.planner`) returns them; an executor (the
operator's handlers, the local runner) carries them out.  The ones that change
a ModelLineage's status (:data:`LINEAGE_ACTIONS`) have one pure meaning,
:func:`reverie.core.lineage.apply_lineage_action`, shared by both executors, so
a cluster and a laptop record, promote and reject in exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from reverie.api.base import StepRuntime
from reverie.api.sleepcycle import Step
from reverie.core.contract import AttemptConfig


@dataclass(frozen=True)
class CreateJob:
    """Create the Job (and its ConfigMap, and Service when multi-node) of one attempt."""

    step: Step
    attempt: int
    job_name: str
    config: AttemptConfig
    runtime: StepRuntime
    image: str


@dataclass(frozen=True)
class DeleteJob:
    job_name: str
    reason: str


@dataclass(frozen=True)
class EmitEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class ClaimLineage:
    """Become the lineage's one active cycle (status.activeCycle)."""

    lineage: str


@dataclass(frozen=True)
class ReleaseLineage:
    lineage: str


@dataclass(frozen=True)
class RecordCandidate:
    """Add the candidate generation this cycle produced to the lineage."""

    lineage: str
    parent: str | None
    uri: str
    content_hash: str | None
    scores: dict[str, float]


@dataclass(frozen=True)
class Promote:
    lineage: str
    generation: str
    scores: dict[str, float]


@dataclass(frozen=True)
class Reject:
    """Mark the cycle's candidate Rejected, with the CamelCase reason (GateFailed, RejectedByApprover, ...)."""

    lineage: str
    generation: str
    reason: str


@dataclass(frozen=True)
class RequeueAfter:
    seconds: float


@dataclass(frozen=True)
class TakeMemories:
    """Fix an inbox cycle's memories: the inbox's new ones, written once to ``set_uri``, then into status.memory.

    New means not among the memories of ``slept_uris`` (the base generation's
    ancestry); at most ``limit``, oldest first.  ``ledger_uri`` receives those
    and the set (what this cycle's generation will have slept on).  If
    ``set_uri`` exists already (a restart after it was written), it is the
    set: never taken twice.
    """

    inbox_uri: str
    slept_uris: tuple[str, ...]
    limit: int
    set_uri: str
    ledger_uri: str


@dataclass(frozen=True)
class DeleteCycle:
    """ttlSecondsAfterFinished has passed: delete the cycle (children go by owner references)."""

    reason: str


Action = (
    CreateJob
    | DeleteJob
    | EmitEvent
    | ClaimLineage
    | ReleaseLineage
    | RecordCandidate
    | Promote
    | Reject
    | RequeueAfter
    | DeleteCycle
    | TakeMemories
)
# Actions that change the lineage: after applying them an executor re-plans at once
# (the local runner does; the operator re-plans on the lineage's own watch event).
LINEAGE_ACTIONS = (ClaimLineage, RecordCandidate, Promote, Reject)
# What :func:`reverie.core.lineage.apply_lineage_action` applies to a lineage's status.
LineageAction = ClaimLineage | ReleaseLineage | RecordCandidate | Promote | Reject
