"""The two custom resources, as pydantic v2 models: the single source of truth.

``crds/`` is generated from these models (``reverie crds``); the operator, the
local runner and the workloads all read specs through them.
"""

from reverie.api.lineage import ModelLineage, ModelLineageSpec, ModelLineageStatus
from reverie.api.sleepcycle import SleepCycle, SleepCycleSpec, SleepCycleStatus

__all__ = [
    "ModelLineage",
    "ModelLineageSpec",
    "ModelLineageStatus",
    "SleepCycle",
    "SleepCycleSpec",
    "SleepCycleStatus",
]
