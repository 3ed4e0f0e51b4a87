"""A lineage's inbox as the operator sees it: what waits, in status and metrics, and whether a run has work.

The lineage timer counts the inbox (:func:`observe_inbox`; each tick lists it
and reads only files it has not parsed before): ``status.inbox``
(memories waiting, oldest arrival) and the gauges ``reverie_inbox_memories``,
``reverie_inbox_oldest_memory_age_seconds`` and ``reverie_inbox_max_per_sleep``
that the dashboard shows and the backlog alert compares.  The schedule asks
:func:`count_new` before it starts a run, and :func:`record_skip` writes down a
run it did not start because nothing was new (status, one Event, a counter).

New means not slept on by the generation a scheduled cycle would start from:
the template's ``baseGeneration``, else the champion.  Reading the store runs
in a thread (fsspec is blocking); the operator reads it with its own
credentials (the ``AWS_*`` environment of its Deployment).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from reverie.api.lineage import InboxStatus, ModelLineage
from reverie.controller import metrics
from reverie.controller.events import emit_event
from reverie.controller.kube import MODELLINEAGES, Kube, Obj, mutate_status
from reverie.controller.lineage_status import parse_lineage, status_body
from reverie.core.lineage import inbox_of, slept_memory_uris
from reverie.workloads.data import inbox
from reverie.workloads.store.store import StoreError

log = logging.getLogger(__name__)

NOTHING_TO_CONSOLIDATE = "NothingToConsolidate"
# Every tick lists each inbox; only files not seen before are read (the operator's one cache of store files).
_parsed = inbox.ParsedFiles()


def base_of(lineage: ModelLineage) -> str | None:
    """The generation a scheduled cycle of ``lineage`` starts from."""
    template = lineage.spec.schedule.template if lineage.spec.schedule is not None else None
    return (template.base_generation if template is not None else None) or lineage.status.champion


async def count_new(lineage: ModelLineage) -> inbox.NewMemories | None:
    """What the inbox holds that the next sleep's base has not slept on; None without an inbox."""
    box = inbox_of(lineage)
    if box is None:
        return None
    new, problems = await asyncio.to_thread(
        inbox.new_memories,
        box.uri,
        slept_memory_uris(lineage, base_of(lineage)),
        limit=box.max_per_sleep,
        cache=_parsed,
    )
    for problem in problems:
        log.warning("inbox of %s/%s: %s", lineage.metadata.namespace, lineage.metadata.name, problem)
    return new


async def observe_inbox(api: Kube, obj: Obj, *, now: datetime) -> inbox.NewMemories | None:
    """Count the inbox; export the gauges and keep status.inbox current (written only when it changed)."""
    lineage = parse_lineage(obj)
    namespace, name = lineage.metadata.namespace, lineage.metadata.name
    box = inbox_of(lineage)
    if box is None:
        forget_inbox(namespace=namespace, lineage=name)
        return None
    try:
        new = await count_new(lineage)
    except (StoreError, OSError) as exc:
        log.warning("inbox of %s/%s cannot be read: %s", namespace, name, exc)
        return None
    assert new is not None
    oldest = new.oldest.replace(microsecond=0) if new.oldest is not None else None
    # The skipped-sleeps counter starts at 0 with the inbox, so rate() and increase() see its first skip.
    metrics.skipped_sleeps_total.labels(namespace=namespace, lineage=name, reason=NOTHING_TO_CONSOLIDATE)
    metrics.inbox_memories.labels(namespace=namespace, lineage=name).set(new.count)
    metrics.inbox_max_per_sleep.labels(namespace=namespace, lineage=name).set(box.max_per_sleep)
    metrics.inbox_oldest_memory_age_seconds.labels(namespace=namespace, lineage=name).set(
        max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    )
    await _update_inbox_status(
        api, namespace=namespace, name=name, change={"memories": new.count, "oldest_arrival": oldest}
    )
    return new


async def record_skip(api: Kube, obj: Obj, *, scheduled: datetime, now: datetime) -> None:
    """A scheduled run not started for an empty inbox: status.inbox, one Event, the skipped-sleeps counter."""
    lineage = parse_lineage(obj)
    namespace, name = lineage.metadata.namespace, lineage.metadata.name
    base = base_of(lineage) or "gen-0"
    message = (
        f"the scheduled run of {scheduled:%Y-%m-%dT%H:%M:%SZ} was not started: the inbox holds nothing "
        f"{base} has not slept on"
    )
    metrics.skipped_sleeps_total.labels(namespace=namespace, lineage=name, reason=NOTHING_TO_CONSOLIDATE).inc()
    await emit_event(api, obj, reason=NOTHING_TO_CONSOLIDATE, message=message, now=now)
    await _update_inbox_status(
        api,
        namespace=namespace,
        name=name,
        change={"last_skipped_time": scheduled, "message": message, "memories": 0, "oldest_arrival": None},
        skipped=True,
    )


async def _update_inbox_status(
    api: Kube, *, namespace: str, name: str, change: dict[str, Any], skipped: bool = False
) -> None:
    def mutate(current: Obj) -> dict[str, Any] | None:
        lin = parse_lineage(current)
        before = lin.status.inbox or InboxStatus()
        after = before.model_copy(update=change)
        if skipped:
            after.skipped_runs = before.skipped_runs + 1
        if after == lin.status.inbox:
            return None
        return status_body(current.get("status") or {}, lin.status.model_copy(update={"inbox": after}))

    await mutate_status(api, MODELLINEAGES, namespace=namespace, name=name, mutate=mutate)


def forget_inbox(*, namespace: str, lineage: str) -> None:
    """Drop the inbox gauges of a lineage that has no inbox (any more) or was deleted."""
    for gauge in (metrics.inbox_memories, metrics.inbox_oldest_memory_age_seconds, metrics.inbox_max_per_sleep):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, lineage)
    with contextlib.suppress(KeyError):
        metrics.skipped_sleeps_total.remove(namespace, lineage, NOTHING_TO_CONSOLIDATE)
