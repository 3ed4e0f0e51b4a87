"""The lineage schedule: CronJob-like creation of SleepCycles from a template.

:func:`plan_schedule` is pure (no API calls; cron via ``croniter``, time zones
via ``zoneinfo``) and decides, from the lineage's schedule, the cycles that
exist and the time, what to do now.  The lineage handlers' timer applies it.
Semantics follow the Kubernetes CronJob controller:

* Only the **most recent** due run (a scheduled time in
  ``(lastScheduleTime or creation, now]``) is started; earlier due runs are
  counted as missed.
* ``startingDeadlineSeconds``: a run later than this is not started; it is
  reported as missed (condition ``MissedSchedule``) and ``lastScheduleTime``
  moves past it so it is not reconsidered.
* ``concurrencyPolicy``: ``Forbid`` leaves a due run pending while a cycle of
  the lineage is active (it starts when that cycle ends, if still within the
  deadline); ``Replace`` deletes the active cycles and starts the new run.
* The created cycle is named ``<lineage>-<yyyymmddhhmm>`` from the scheduled
  time in UTC: deterministic per scheduled time, so a timer repeated after a
  restart meets 409 AlreadyExists instead of creating a duplicate.
* ``successfulHistoryLimit`` / ``failedHistoryLimit``: the oldest finished
  scheduled cycles beyond the limits are deleted (their generations and
  artifacts stay in the lineage and the store).
* ``suspend``: nothing is started; history is still trimmed.
* A lineage with a memory inbox: its cycles sleep on the inbox, and the lineage
  handlers start a due run only if the inbox holds something new
  (:mod:`reverie.controller.inbox_watch`); otherwise the run is skipped like a
  missed one (``lastScheduleTime`` moves past it) and reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from reverie import GROUP, LINEAGE_LABEL
from reverie.api.lineage import ScheduleSpec

# Labels and annotations on scheduled cycles.
SCHEDULED_BY_LABEL = f"{GROUP}/scheduled-by"
SCHEDULED_AT_ANNOTATION = f"{GROUP}/scheduled-at"

# Scanning more than this many due times means the operator was down for long
# (or the cron fires every minute for months): stop counting, like CronJob's 100.
MAX_MISSED = 100

SUCCEEDED_PHASES = frozenset({"Succeeded"})
FAILED_PHASES = frozenset({"Failed", "Rejected"})


class ScheduleError(ValueError):
    """The cron expression or time zone is invalid; the message says which and how to fix it."""


@dataclass(frozen=True)
class CycleInfo:
    """What the schedule needs to know about one existing cycle of the lineage."""

    name: str
    phase: str
    scheduled: bool
    created: datetime
    finished: datetime | None = None

    @property
    def active(self) -> bool:
        return self.phase not in SUCCEEDED_PHASES | FAILED_PHASES


@dataclass(frozen=True)
class SchedulePlan:
    """What to do now: create at most one cycle, delete some, report missed runs."""

    create: str | None = None
    scheduled_time: datetime | None = None
    delete: list[str] = field(default_factory=list)
    last_schedule_time: datetime | None = None
    next_run: datetime | None = None
    missed: int = 0
    missed_message: str | None = None
    waiting: str | None = None
    skipped: str | None = None  # why a due run was not started (set by the lineage handlers: NothingToConsolidate)


def zone(spec: ScheduleSpec) -> ZoneInfo:
    """The schedule's time zone; :class:`ScheduleError` if unknown."""
    try:
        return ZoneInfo(spec.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(
            f"spec.schedule.timeZone {spec.time_zone!r} is not an IANA time zone (e.g. UTC, Europe/Paris)"
        ) from exc


def validate(spec: ScheduleSpec) -> None:
    """Raise :class:`ScheduleError` if the cron expression or the time zone is invalid."""
    zone(spec)
    if not croniter.is_valid(spec.cron):
        raise ScheduleError(
            f"spec.schedule.cron {spec.cron!r} is not a valid cron expression (e.g. '0 3 * * *' or @daily)"
        )


def due_times(spec: ScheduleSpec, *, after: datetime, now: datetime, limit: int = MAX_MISSED + 1) -> list[datetime]:
    """Scheduled times in ``(after, now]``, oldest first, at most ``limit`` (the newest ones), in UTC."""
    validate(spec)
    tz = zone(spec)
    it = croniter(spec.cron, after.astimezone(tz))
    times: list[datetime] = []
    while True:
        t: datetime = it.get_next(datetime)
        if t > now:
            break
        times.append(t.astimezone(UTC))
        if len(times) > limit:
            times.pop(0)
    return times


def next_run(spec: ScheduleSpec, *, after: datetime) -> datetime:
    """The first scheduled time strictly after ``after``, in UTC."""
    validate(spec)
    t: datetime = croniter(spec.cron, after.astimezone(zone(spec))).get_next(datetime)
    return t.astimezone(UTC)


def cycle_name(lineage: str, scheduled: datetime) -> str:
    """``<lineage>-<yyyymmddhhmm>`` of the scheduled time in UTC."""
    return f"{lineage}-{scheduled.astimezone(UTC):%Y%m%d%H%M}"


def history_to_delete(spec: ScheduleSpec, cycles: Sequence[CycleInfo]) -> list[str]:
    """Finished scheduled cycles beyond the history limits, oldest first."""
    out: list[str] = []
    for phases, limit in (
        (SUCCEEDED_PHASES, spec.successful_history_limit),
        (FAILED_PHASES, spec.failed_history_limit),
    ):
        done = sorted(
            (c for c in cycles if c.scheduled and c.phase in phases),
            key=lambda c: (c.finished or c.created, c.name),
        )
        excess = len(done) - limit
        out.extend(c.name for c in done[: max(excess, 0)])
    return out


def plan_schedule(
    spec: ScheduleSpec,
    *,
    lineage: str,
    created: datetime,
    last_schedule_time: datetime | None,
    cycles: Sequence[CycleInfo],
    now: datetime,
) -> SchedulePlan:
    """Decide what the schedule does at ``now``; raises :class:`ScheduleError` on a bad cron or zone."""
    delete = history_to_delete(spec, cycles)
    after = last_schedule_time or created
    upcoming = next_run(spec, after=max(after, now))
    if spec.suspend:
        return SchedulePlan(
            delete=delete, last_schedule_time=last_schedule_time, next_run=upcoming, waiting="schedule suspended"
        )
    due = due_times(spec, after=after, now=now)
    if not due:
        return SchedulePlan(delete=delete, last_schedule_time=last_schedule_time, next_run=upcoming)
    latest = due[-1]
    earlier = len(due) - 1
    deadline = spec.starting_deadline_seconds
    if deadline is not None and now - latest > timedelta(seconds=deadline):
        missed = len(due)
        return SchedulePlan(
            delete=delete,
            last_schedule_time=latest,
            next_run=upcoming,
            missed=missed,
            missed_message=(
                f"missed {missed} scheduled run(s), the latest at {latest:%Y-%m-%dT%H:%M:%SZ}, "
                f"by more than startingDeadlineSeconds={deadline}"
            ),
        )
    missed_message = (
        f"missed {earlier} earlier scheduled run(s) before {latest:%Y-%m-%dT%H:%M:%SZ}; starting only the latest"
        if earlier
        else None
    )
    name = cycle_name(lineage, latest)
    active = [c for c in cycles if c.active and c.name != name]
    if any(c.name == name for c in cycles):
        # Created already (a restart before lastScheduleTime was written): just record it.
        return SchedulePlan(
            delete=delete, last_schedule_time=latest, next_run=upcoming, missed=earlier, missed_message=missed_message
        )
    if active and spec.concurrency_policy == "Forbid":
        names = ", ".join(sorted(c.name for c in active))
        return SchedulePlan(
            delete=delete,
            last_schedule_time=last_schedule_time,
            next_run=upcoming,
            waiting=f"run of {latest:%Y-%m-%dT%H:%M:%SZ} waits: concurrencyPolicy Forbid and cycle(s) {names} active",
        )
    if active:  # Replace: only cycles this schedule started; a hand-made cycle is never deleted
        replaced = [c.name for c in active if c.scheduled]
        delete = replaced + [d for d in delete if d not in replaced]
    return SchedulePlan(
        create=name,
        scheduled_time=latest,
        delete=delete,
        last_schedule_time=latest,
        next_run=upcoming,
        missed=earlier,
        missed_message=missed_message,
    )


def render_cycle(
    *,
    lineage: str,
    namespace: str,
    lineage_uid: str | None,
    template: dict[str, Any],
    name: str,
    scheduled: datetime,
    inbox: bool = False,
) -> dict[str, Any]:
    """The SleepCycle object for a scheduled run: the template (whose lineageRef the schema requires to be this lineage), owned by it.

    ``inbox``: the lineage has a memory inbox, so the cycle sleeps on it (what
    arrived since the champion's last sleep) in place of the template's memory sources.
    """
    spec = dict(template)
    spec["lineageRef"] = lineage
    if inbox:
        spec["memory"] = {**(spec.get("memory") or {}), "sources": [{"inbox": True}]}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {LINEAGE_LABEL: lineage, SCHEDULED_BY_LABEL: lineage},
        "annotations": {SCHEDULED_AT_ANNOTATION: scheduled.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
    }
    if lineage_uid:
        # Deleting the lineage deletes its scheduled cycles (and their Jobs), like a CronJob's Jobs.
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/v1alpha1",
                "kind": "ModelLineage",
                "name": lineage,
                "uid": lineage_uid,
                "controller": False,
                "blockOwnerDeletion": False,
            }
        ]
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "SleepCycle", "metadata": meta, "spec": spec}
