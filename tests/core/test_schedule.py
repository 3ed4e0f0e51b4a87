"""The schedule as a specification, without a cluster: next run, due runs,
missed runs, starting deadline, concurrency policy, deterministic names,
history limits and time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reverie.api.lineage import ScheduleSpec
from reverie.core.schedule import (
    CycleInfo,
    ScheduleError,
    cycle_name,
    due_times,
    history_to_delete,
    next_run,
    plan_schedule,
    render_cycle,
)

CREATED = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
TEMPLATE = {"lineageRef": "ignored", "memory": {"sources": [{"inline": ["The sky is green."]}]}}


def spec(**kw: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate(
        {"cron": "0 3 * * *", "template": {"lineageRef": "demo", "memory": {"sources": [{"inline": ["x"]}]}}, **kw}
    )


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def done(name: str, phase: str, day: int, *, scheduled: bool = True) -> CycleInfo:
    return CycleInfo(name=name, phase=phase, scheduled=scheduled, created=at(day, 3), finished=at(day, 5))


def test_next_run_in_utc() -> None:
    assert next_run(spec(), after=at(21, 3)) == at(22, 3)


def test_time_zone_is_honoured_across_daylight_saving() -> None:
    paris = spec(timeZone="Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter (CET) ...
    assert next_run(paris, after=at(21, 0)) == at(21, 2)
    # ... and 01:00 UTC in summer (CEST).
    summer = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    assert next_run(paris, after=summer) == datetime(2026, 7, 1, 1, 0, tzinfo=UTC)


def test_unknown_time_zone_and_bad_cron_raise_clear_errors() -> None:
    with pytest.raises(ScheduleError, match="not an IANA time zone"):
        next_run(spec(timeZone="Mars/Olympus"), after=CREATED)
    with pytest.raises(ScheduleError, match="not a valid cron expression"):
        next_run(spec(cron="99 3 * * *"), after=CREATED)


def test_due_times_are_the_scheduled_times_in_the_window() -> None:
    assert due_times(spec(), after=at(20, 0), now=at(22, 4)) == [at(20, 3), at(21, 3), at(22, 3)]
    assert due_times(spec(), after=at(22, 3), now=at(22, 4)) == []


def test_cycle_name_is_deterministic_per_scheduled_time() -> None:
    assert cycle_name("demo", at(22, 3)) == "demo-202611220300"
    assert cycle_name("demo", at(22, 3).astimezone()) == "demo-202611220300"


def test_nothing_due_creates_nothing_and_reports_next_run() -> None:
    p = plan_schedule(spec(), lineage="demo", created=at(20, 12), last_schedule_time=None, cycles=[], now=at(20, 13))
    assert p.create is None and p.next_run == at(21, 3) and p.missed == 0


def test_due_run_creates_the_named_cycle() -> None:
    p = plan_schedule(
        spec(), lineage="demo", created=CREATED, last_schedule_time=at(21, 3), cycles=[], now=at(22, 3, 1)
    )
    assert (p.create, p.scheduled_time, p.last_schedule_time) == ("demo-202611220300", at(22, 3), at(22, 3))
    assert p.next_run == at(23, 3)


def test_only_the_latest_of_several_due_runs_starts_the_rest_are_missed() -> None:
    p = plan_schedule(spec(), lineage="demo", created=CREATED, last_schedule_time=at(19, 3), cycles=[], now=at(22, 4))
    assert p.create == "demo-202611220300"
    assert p.missed == 2 and p.missed_message is not None and "missed 2 earlier" in p.missed_message


def test_run_later_than_starting_deadline_is_missed_not_started() -> None:
    p = plan_schedule(
        spec(startingDeadlineSeconds=600),
        lineage="demo",
        created=CREATED,
        last_schedule_time=at(21, 3),
        cycles=[],
        now=at(22, 3, 30),
    )
    assert p.create is None and p.missed == 1
    assert p.missed_message is not None and "startingDeadlineSeconds=600" in p.missed_message
    # lastScheduleTime moves past it, so it is not reconsidered.
    assert p.last_schedule_time == at(22, 3)


def test_run_within_starting_deadline_starts() -> None:
    p = plan_schedule(
        spec(startingDeadlineSeconds=600),
        lineage="demo",
        created=CREATED,
        last_schedule_time=at(21, 3),
        cycles=[],
        now=at(22, 3, 9),
    )
    assert p.create == "demo-202611220300"


def test_forbid_waits_while_a_cycle_is_active_and_keeps_the_run_pending() -> None:
    running = CycleInfo(name="demo-202611210300", phase="Dreaming", scheduled=True, created=at(21, 3))
    p = plan_schedule(
        spec(), lineage="demo", created=CREATED, last_schedule_time=at(21, 3), cycles=[running], now=at(22, 3, 1)
    )
    assert p.create is None and p.delete == []
    assert p.last_schedule_time == at(21, 3)
    assert p.waiting is not None and "Forbid" in p.waiting and "demo-202611210300" in p.waiting


def test_replace_deletes_the_active_scheduled_cycle_and_starts_the_new_run() -> None:
    running = CycleInfo(name="demo-202611210300", phase="Dreaming", scheduled=True, created=at(21, 3))
    manual = CycleInfo(name="by-hand", phase="Pending", scheduled=False, created=at(21, 4))
    p = plan_schedule(
        spec(concurrencyPolicy="Replace"),
        lineage="demo",
        created=CREATED,
        last_schedule_time=at(21, 3),
        cycles=[running, manual],
        now=at(22, 3, 1),
    )
    assert p.create == "demo-202611220300" and p.delete == ["demo-202611210300"]


def test_already_created_run_is_recorded_not_recreated() -> None:
    mine = CycleInfo(name="demo-202611220300", phase="Pending", scheduled=True, created=at(22, 3))
    p = plan_schedule(
        spec(), lineage="demo", created=CREATED, last_schedule_time=at(21, 3), cycles=[mine], now=at(22, 3, 1)
    )
    assert p.create is None and p.last_schedule_time == at(22, 3)


def test_suspended_schedule_starts_nothing() -> None:
    p = plan_schedule(
        spec(suspend=True), lineage="demo", created=CREATED, last_schedule_time=at(21, 3), cycles=[], now=at(22, 4)
    )
    assert p.create is None and p.waiting == "schedule suspended"


def test_history_limits_delete_oldest_finished_scheduled_cycles_only() -> None:
    cycles = [
        done("s1", "Succeeded", 20),
        done("s2", "Succeeded", 21),
        done("s3", "Succeeded", 22),
        done("f1", "Failed", 20),
        done("f2", "Rejected", 21),
        done("hand", "Succeeded", 19, scheduled=False),
        CycleInfo(name="live", phase="Dreaming", scheduled=True, created=at(22, 3)),
    ]
    assert history_to_delete(spec(successfulHistoryLimit=2, failedHistoryLimit=1), cycles) == ["s1", "f1"]
    assert history_to_delete(spec(successfulHistoryLimit=0, failedHistoryLimit=0), cycles) == [
        "s1",
        "s2",
        "s3",
        "f1",
        "f2",
    ]


def test_long_outage_counts_at_most_a_bounded_number_of_missed_runs() -> None:
    every_minute = spec(cron="* * * * *")
    p = plan_schedule(
        every_minute,
        lineage="demo",
        created=CREATED,
        last_schedule_time=None,
        cycles=[],
        now=CREATED + timedelta(days=3),
    )
    assert p.create is not None and p.missed <= 100


def test_rendered_cycle_forces_lineage_ref_and_is_owned_by_the_lineage() -> None:
    body = render_cycle(
        lineage="demo",
        namespace="ns",
        lineage_uid="u-1",
        template=TEMPLATE,
        name="demo-202611220300",
        scheduled=at(22, 3),
    )
    assert body["spec"]["lineageRef"] == "demo" and TEMPLATE["lineageRef"] == "ignored"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["metadata"]["labels"]["reverie.dev/scheduled-by"] == "demo"
    assert body["metadata"]["annotations"]["reverie.dev/scheduled-at"] == "2026-11-22T03:00:00Z"


def test_a_lineage_with_an_inbox_schedules_cycles_that_sleep_on_it() -> None:
    template = {**TEMPLATE, "memory": {"sources": [{"uri": "s3://b/old.jsonl"}], "chunkDocuments": 2}}
    body = render_cycle(
        lineage="demo",
        namespace="ns",
        lineage_uid="u-1",
        template=template,
        name="demo-202611220300",
        scheduled=at(22, 3),
        inbox=True,
    )
    assert body["spec"]["memory"] == {"sources": [{"inbox": True}], "chunkDocuments": 2}
    assert template["memory"]["sources"] == [{"uri": "s3://b/old.jsonl"}]


@given(
    st.lists(st.integers(min_value=1, max_value=60 * 36), min_size=1, max_size=25),
    st.sampled_from(["0 3 * * *", "*/30 * * * *", "15 */6 * * *"]),
    st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
)
@settings(max_examples=60, deadline=None)
def test_replaying_the_timer_never_creates_a_run_twice_or_goes_back_in_time(
    steps: list[int], cron: str, tz: str
) -> None:
    sched = spec(cron=cron, timeZone=tz)
    now, last = CREATED, None
    created: list[str] = []
    cycles: list[CycleInfo] = []
    for minutes in steps:
        now += timedelta(minutes=minutes)
        for _ in range(2):  # every tick is replayed (a restart), which must change nothing
            p = plan_schedule(sched, lineage="demo", created=CREATED, last_schedule_time=last, cycles=cycles, now=now)
            if p.create is not None:
                assert p.scheduled_time is not None and p.scheduled_time <= now
                assert last is None or p.scheduled_time > last
                assert p.create not in created
                created.append(p.create)
                # the cycle runs and finishes at once, so Forbid never blocks
                cycles.append(CycleInfo(name=p.create, phase="Succeeded", scheduled=True, created=now, finished=now))
            last = p.last_schedule_time
            cycles = [c for c in cycles if c.name not in p.delete]
