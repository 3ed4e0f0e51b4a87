"""Kubernetes-style conditions: upsert with honest ``lastTransitionTime``.

Kopf has no conditions helper (kopf#796).  The rule, from the API conventions:
a condition's ``lastTransitionTime`` moves only when its ``status`` changes;
reason, message and ``observedGeneration`` are refreshed on every write.
"""

from __future__ import annotations

from datetime import datetime

from reverie.api.base import Condition, ConditionStatus


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus | str | bool,
    *,
    reason: str,
    message: str = "",
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """Return ``conditions`` with ``type_`` inserted or updated (input is not modified)."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    status = ConditionStatus(status)
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        changed = ConditionStatus(cond.status) != status
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message[:4096],
                last_transition_time=now if changed or cond.last_transition_time is None else cond.last_transition_time,
                observed_generation=observed_generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message[:4096],
                last_transition_time=now,
                observed_generation=observed_generation,
            )
        )
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == type_), None)
