"""A ModelLineage's status, read and written: the optimistic-concurrency update every writer shares.

Promotion (:mod:`reverie.controller.promotion`), serving
(:mod:`reverie.controller.serving`), the lineage handlers and admission read a
lineage through :func:`parse_lineage` (other writers' status keys ignored) and
write through :func:`update_lineage` or :func:`status_body` (other writers'
keys kept).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from reverie.api.lineage import ModelLineage, ModelLineageStatus
from reverie.controller.kube import MODELLINEAGES, Kube, Obj, mutate_status
from reverie.core import lineage as rules


class LineageNotFound(LookupError):
    """The lineage named by a cycle's spec.lineageRef does not exist."""


def utcnow() -> datetime:
    """Now, to the second (Kubernetes timestamps have second precision)."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_lineage(obj: Obj) -> ModelLineage:
    """The lineage as the API model; unknown status keys (other writers') are ignored."""
    return ModelLineage.model_validate({**obj, "status": known_status(obj.get("status") or {})})


def known_status(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a raw status that ModelLineageStatus knows (camelCase)."""
    fields = {f.alias or name for name, f in ModelLineageStatus.model_fields.items()}
    return {k: v for k, v in raw.items() if k in fields}


def status_body(raw: Mapping[str, Any], new: ModelLineageStatus) -> dict[str, Any]:
    """The raw status with our model's fields replaced and any other writer's keys kept.

    A field of ours that is now empty (``activeCycle`` released) is removed, not kept from ``raw``.
    """
    ours = {f.alias or name for name, f in ModelLineageStatus.model_fields.items()}
    return {**{k: v for k, v in raw.items() if k not in ours}, **new.wire()}


Rule = Callable[[ModelLineage], ModelLineageStatus | None]


async def update_lineage(kube: Kube, *, namespace: str, lineage: str, rule: Rule) -> Obj:
    """Apply a pure ``rule`` (lineage -> new status, or None for no change) with optimistic concurrency.

    Generation 0 is ensured first, so a lineage whose own handler has not run
    yet still gets its base model recorded before anything else.  Raises
    :class:`LineageNotFound` if the lineage does not exist.
    """
    now = utcnow()

    def mutate(obj: Obj) -> dict[str, Any] | None:
        current = parse_lineage(obj)
        based = rules.ensure_base(current.status, current.spec.base_model, now=now)
        new = rule(current.model_copy(update={"status": based}))
        new = based if new is None else new
        if new == current.status:
            return None
        return status_body(obj.get("status") or {}, new)

    written = await mutate_status(kube, MODELLINEAGES, namespace=namespace, name=lineage, mutate=mutate)
    if written is None:
        raise LineageNotFound(f"ModelLineage {namespace}/{lineage} not found: create it, or fix spec.lineageRef")
    return written
