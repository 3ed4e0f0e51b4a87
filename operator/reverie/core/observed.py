"""What the operator observed of a cycle's children, in plain data for the planner.

The controller turns Jobs (or TrainJobs/JobSets) and their pods into
:class:`ObservedJob` values; the planner never sees a Kubernetes object.  The
result of an attempt is the termination message of its leader pod's ``phase``
container (``status.containerStatuses[].state.terminated.message``), exactly
what the kubelet copies from ``/dev/termination-log``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from reverie.api.sleepcycle import Step


class JobState(StrEnum):
    ACTIVE = "Active"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class ObservedJob:
    """One child workload of a cycle: one attempt of one step."""

    name: str
    step: Step
    attempt: int
    state: JobState
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    reason: str = ""
    message: str = ""
    result_text: str | None = None
    deleting: bool = False
