"""The ModelLineage handlers run by Kopf against the real API server: generation 0
on create, the rollback pin (serving follows; unknown generation is a clear
condition), and the schedule (timer wiring, deadline, concurrency, history)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reverie.api.lineage import ScheduleSpec
from reverie.controller import lineage_handlers, metrics, promotion
from reverie.controller.kube import CONFIGMAPS, EVENTS, MODELLINEAGES, SLEEPCYCLES, Kube
from reverie.controller.lineage_status import update_lineage
from reverie.core.schedule import SCHEDULED_BY_LABEL, cycle_name, next_run

from .conftest import (
    condition,
    cycle_template,
    eventually,
    finish_export,
    lineage_manifest,
    lineage_operator,
    lineage_status,
)

pytestmark = pytest.mark.cluster


async def promoted(api: Kube, namespace: str, cycle: str, parent: str) -> str:
    gen = await promotion.record_candidate(
        api,
        namespace=namespace,
        lineage="demo",
        cycle=cycle,
        uri=f"file:///store/demo/{cycle}",
        content_hash=None,
        parent=parent,
        scores={"retention": 0.9},
    )
    assert (await promotion.promote(api, namespace=namespace, lineage="demo", cycle=cycle)).promoted
    return gen


async def test_lineage_create_records_generation_zero_and_ready(
    cluster: Any, api: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with lineage_operator(cluster, namespace, monkeypatch):
        await api.create(MODELLINEAGES, namespace, lineage_manifest("demo", namespace))

        async def ready() -> dict[str, Any] | None:
            status = await lineage_status(api, namespace, "demo")
            cond = condition(status, "Ready")
            return status if cond and cond["status"] == "True" else None

        status = await eventually(ready, what="Ready lineage")
    assert status["champion"] == "gen-0" and status["championUri"] == "builtin:tiny"
    assert status["generations"] == [
        {
            "name": "gen-0",
            "uri": "builtin:tiny",
            "scores": {},
            "state": "Champion",
            "createdAt": status["generations"][0]["createdAt"],
            "promotedAt": status["generations"][0]["promotedAt"],
        },
    ]
    assert status["observedGeneration"] == 1


async def test_rollback_pins_an_earlier_generation_and_serving_follows(
    cluster: Any, api: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.create(
        CONFIGMAPS, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "serving"}, "data": {}}
    )
    await api.create(
        MODELLINEAGES,
        namespace,
        lineage_manifest(
            "demo",
            namespace,
            servingTarget={"kind": "ConfigMap", "name": "serving", "key": "model"},
        ),
    )
    g1 = await promoted(api, namespace, "c1", "gen-0")
    await promoted(api, namespace, "c2", g1)
    before = (
        metrics.REGISTRY.get_sample_value("reverie_rollbacks_total", {"namespace": namespace, "lineage": "demo"}) or 0.0
    )

    async def served(uri: str) -> bool:
        return (await api.get(CONFIGMAPS, namespace, "serving")).get("data", {}).get("model") == uri

    async def rolled_back(reason: str, status_: str) -> dict[str, Any] | None:
        status = await lineage_status(api, namespace, "demo")
        cond = condition(status, "RolledBack")
        return status if cond and (cond["reason"], cond["status"]) == (reason, status_) else None

    with lineage_operator(cluster, namespace, monkeypatch):
        await finish_export(api, namespace, "demo-serve-gen-2-merged")
        assert await eventually(lambda: served("file:///store/demo/servable/gen-2/merged"), what="serving the champion")
        await api.merge_patch(MODELLINEAGES, namespace, "demo", {"spec": {"rollbackTo": "gen-1"}})
        status = await eventually(lambda: rolled_back("RolledBack", "True"), what="RolledBack")
        assert status["champion"] == "gen-1" and status["championUri"] == "file:///store/demo/c1"
        await finish_export(api, namespace, "demo-serve-gen-1-merged")  # the restored champion's own servable form
        assert await eventually(
            lambda: served("file:///store/demo/servable/gen-1/merged"), what="serving follows the rollback"
        )

        await api.merge_patch(MODELLINEAGES, namespace, "demo", {"spec": {"rollbackTo": "gen-99"}})
        status = await eventually(lambda: rolled_back("UnknownGeneration", "False"), what="unknown rollback target")
        message = condition(status, "RolledBack")["message"]  # type: ignore[index]
        assert "'gen-99' is not in status.generations" in message and "gen-0, gen-1, gen-2" in message
        assert status["champion"] == "gen-1"
        ready = condition(status, "Ready")
        assert ready and ready["status"] == "False"

        await api.merge_patch(MODELLINEAGES, namespace, "demo", {"spec": {"rollbackTo": None}})
        await eventually(lambda: rolled_back("Unpinned", "False"), what="pin removed")
    after = metrics.REGISTRY.get_sample_value("reverie_rollbacks_total", {"namespace": namespace, "lineage": "demo"})
    assert after == before + 1
    events = await api.list(EVENTS, namespace)
    reasons = {e["reason"] for e in events if e["involvedObject"].get("name") == "demo"}
    assert {"Promoted", "RolledBack", "UnknownGeneration"} <= reasons


async def test_schedule_timer_creates_the_due_cycle_once(
    cluster: Any, api: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.create(
        MODELLINEAGES,
        namespace,
        lineage_manifest(
            "demo",
            namespace,
            schedule={"cron": "0 3 * * *", "template": cycle_template("demo")},
        ),
    )
    obj = await api.get(MODELLINEAGES, namespace, "demo")
    created = datetime.fromisoformat(obj["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    due = next_run(ScheduleSpec.model_validate(obj["spec"]["schedule"]), after=created)
    ticks: list[datetime] = []

    def frozen_clock() -> datetime:
        ticks.append(due)
        return due + timedelta(seconds=20)

    monkeypatch.setattr(lineage_handlers, "clock", frozen_clock)
    name = cycle_name("demo", due)

    async def scheduled() -> dict[str, Any] | None:
        status = await lineage_status(api, namespace, "demo")
        return status if status.get("lastScheduleTime") else None

    with lineage_operator(cluster, namespace, monkeypatch, interval=0.3):
        status = await eventually(scheduled, what="lastScheduleTime")
        # More timer ticks at the same instant (a restart replays them too) create nothing else.
        seen = len(ticks)

        async def three_more_ticks() -> bool:
            return len(ticks) >= seen + 3

        await eventually(three_more_ticks, what="three more schedule ticks")
    assert status["lastScheduleTime"] == due.strftime("%Y-%m-%dT%H:%M:%SZ")
    cycles = await api.list(SLEEPCYCLES, namespace)
    assert [c["metadata"]["name"] for c in cycles] == [name]
    cycle = cycles[0]
    assert cycle["spec"]["lineageRef"] == "demo"
    assert cycle["metadata"]["labels"][SCHEDULED_BY_LABEL] == "demo"
    assert cycle["metadata"]["ownerReferences"][0]["kind"] == "ModelLineage"


# --- the schedule applied directly at chosen instants (no Kopf) ----------------------
async def make_scheduled_lineage(api: Kube, namespace: str, **schedule: Any) -> datetime:
    await api.create(
        MODELLINEAGES,
        namespace,
        lineage_manifest(
            "demo",
            namespace,
            schedule={"cron": "0 3 * * *", "template": cycle_template("demo"), **schedule},
        ),
    )
    obj = await api.get(MODELLINEAGES, namespace, "demo")
    created = datetime.fromisoformat(obj["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    return next_run(ScheduleSpec.model_validate(obj["spec"]["schedule"]), after=created)


async def finish(api: Kube, namespace: str, name: str, phase: str, at: datetime) -> None:
    await api.merge_patch(
        SLEEPCYCLES,
        namespace,
        name,
        {
            "status": {"phase": phase, "completionTime": at.strftime("%Y-%m-%dT%H:%M:%SZ")},
        },
        subresource="status",
    )


async def test_forbid_waits_for_the_active_cycle_then_replace_deletes_it(api: Kube, namespace: str) -> None:
    day1 = await make_scheduled_lineage(api, namespace)
    plan = await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=day1 + timedelta(seconds=5))
    assert plan is not None and plan.create == cycle_name("demo", day1)
    day2 = day1 + timedelta(days=1)
    plan = await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=day2 + timedelta(seconds=5))
    assert plan is not None and plan.create is None and plan.waiting and "Forbid" in plan.waiting
    await api.merge_patch(MODELLINEAGES, namespace, "demo", {"spec": {"schedule": {"concurrencyPolicy": "Replace"}}})
    plan = await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=day2 + timedelta(seconds=6))
    assert plan is not None and plan.create == cycle_name("demo", day2) and plan.delete == [cycle_name("demo", day1)]
    names = {
        c["metadata"]["name"]
        for c in await api.list(SLEEPCYCLES, namespace)
        if not c["metadata"].get("deletionTimestamp")
    }
    assert names == {cycle_name("demo", day2)}


async def test_missed_deadline_sets_missed_schedule_condition(api: Kube, namespace: str) -> None:
    day1 = await make_scheduled_lineage(api, namespace, startingDeadlineSeconds=60)
    plan = await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=day1 + timedelta(minutes=10))
    assert plan is not None and plan.create is None and plan.missed == 1
    status = await lineage_status(api, namespace, "demo")
    missed = condition(status, "MissedSchedule")
    assert missed and missed["status"] == "True" and "startingDeadlineSeconds=60" in missed["message"]
    assert await api.list(SLEEPCYCLES, namespace) == []
    # The next run on time clears it.
    day2 = day1 + timedelta(days=1)
    await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=day2 + timedelta(seconds=30))
    missed = condition(await lineage_status(api, namespace, "demo"), "MissedSchedule")
    assert missed and (missed["status"], missed["reason"]) == ("False", "OnSchedule")


async def test_history_limits_delete_old_finished_cycles(api: Kube, namespace: str) -> None:
    day = await make_scheduled_lineage(api, namespace, successfulHistoryLimit=1, failedHistoryLimit=1)
    made: list[str] = []
    for i, phase in enumerate(["Succeeded", "Failed", "Succeeded", "Rejected"]):
        at = day + timedelta(days=i)
        plan = await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=at + timedelta(seconds=5))
        assert plan is not None and plan.create is not None
        made.append(plan.create)
        await finish(api, namespace, plan.create, phase, at + timedelta(hours=1))
    await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=day + timedelta(days=3, hours=2))
    live = {
        c["metadata"]["name"]
        for c in await api.list(SLEEPCYCLES, namespace)
        if not c["metadata"].get("deletionTimestamp")
    }
    assert live == {made[2], made[3]}


async def test_invalid_time_zone_is_reported(api: Kube, namespace: str) -> None:
    await api.create(
        MODELLINEAGES,
        namespace,
        lineage_manifest(
            "demo",
            namespace,
            schedule={"cron": "0 3 * * *", "timeZone": "Mars/Olympus", "template": cycle_template("demo")},
        ),
    )
    await lineage_handlers.run_schedule(api, namespace=namespace, name="demo", now=datetime.now(UTC))
    missed = condition(await lineage_status(api, namespace, "demo"), "MissedSchedule")
    assert missed and missed["reason"] == "InvalidSchedule" and "Mars/Olympus" in missed["message"]


async def test_operator_dying_between_promotion_and_serving_heals_on_restart_and_drift_is_undone(
    cluster: Any, api: Kube, namespace: str, monkeypatch: pytest.MonkeyPatch, inference_service_crd: str
) -> None:
    from reverie.controller import serving
    from reverie.core import lineage as rules

    await api.create(
        serving.INFERENCESERVICES,
        namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "chat"},
            "spec": {"predictor": {"model": {"storageUri": "builtin:tiny"}}},
        },
    )
    await api.create(
        MODELLINEAGES,
        namespace,
        lineage_manifest(
            "demo",
            namespace,
            servingTarget={"kind": "InferenceService", "name": "chat"},
        ),
    )
    await promotion.record_candidate(
        api,
        namespace=namespace,
        lineage="demo",
        cycle="c1",
        uri="file:///store/demo/c1",
        content_hash=None,
        parent="gen-0",
        scores={},
    )
    # The promotion write lands, then the operator dies before the serving hand-off.
    now = datetime.now(UTC).replace(microsecond=0)
    await update_lineage(
        api,
        namespace=namespace,
        lineage="demo",
        rule=lambda lin: rules.promote(lin.status, cycle="c1", now=now)[0],
    )
    isvc = await api.get(serving.INFERENCESERVICES, namespace, "chat")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "builtin:tiny"

    async def storage_uri_is(uri: str) -> bool:
        got = await api.get(serving.INFERENCESERVICES, namespace, "chat")
        return got["spec"]["predictor"]["model"]["storageUri"] == uri

    merged = "file:///store/demo/servable/gen-1/merged"
    with lineage_operator(cluster, namespace, monkeypatch, interval=0.3):
        # The restarted operator starts the champion's export; once it completes, serving gets the merged form.
        await finish_export(api, namespace, "demo-serve-gen-1-merged")
        assert await eventually(lambda: storage_uri_is(merged), what="serving healed after restart")
        # Someone points the InferenceService elsewhere by hand: the timer puts the champion back.
        await api.merge_patch(
            serving.INFERENCESERVICES,
            namespace,
            "chat",
            {"spec": {"predictor": {"model": {"storageUri": "s3://elsewhere"}}}},
        )
        assert await eventually(lambda: storage_uri_is(merged), what="drift undone")
    status = await lineage_status(api, namespace, "demo")
    synced = condition(status, "ServingSynced")
    assert synced and synced["status"] == "True" and status["servingUri"] == merged


@pytest.mark.parametrize(
    ("field", "schedule"),
    [
        ("spec.schedule.cron", {"cron": "61 * * * *"}),
        ("spec.schedule.timeZone", {"cron": "0 3 * * *", "timeZone": "Mars/Olympus"}),
    ],
)
async def test_an_invalid_schedule_sets_ready_false_and_posts_one_warning(
    api: Kube, namespace: str, field: str, schedule: dict[str, Any]
) -> None:
    await api.create(
        MODELLINEAGES,
        namespace,
        lineage_manifest("demo", namespace, schedule={**schedule, "template": cycle_template("demo")}),
    )
    for _ in range(2):  # a second reconcile posts no second Event
        await lineage_handlers.reconcile_lineage(api, namespace=namespace, name="demo")
    ready = condition(await lineage_status(api, namespace, "demo"), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "InvalidSchedule")
    assert field in ready["message"]
    warnings = [e for e in await api.list(EVENTS, namespace) if e["reason"] == "InvalidSchedule"]
    assert [e["type"] for e in warnings] == ["Warning"] and field in warnings[0]["message"]
