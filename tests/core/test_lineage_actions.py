"""One lineage applier: every planner action that changes a lineage means the same
thing to the operator and to the local runner (core.lineage.apply_lineage_action)."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from reverie.api.lineage import Generation, GenerationState, ModelLineage
from reverie.api.sleepcycle import SleepCycle
from reverie.controller import lineage_status, promotion
from reverie.core import lineage as L
from reverie.core.actions import (
    ClaimLineage,
    LineageAction,
    Promote,
    RecordCandidate,
    Reject,
    ReleaseLineage,
)
from reverie.local import runner
from reverie.local.state import LocalState

T0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def lineage(*, rollback_to: str | None = None, history_limit: int = 20, generations: int = 0) -> ModelLineage:
    """A lineage whose gen-1..gen-<generations> were each champion once (gen-<n> is the champion)."""
    lin = ModelLineage.model_validate(
        {
            "metadata": {"name": "lin", "namespace": "ns", "generation": 1},
            "spec": {
                "baseModel": {"uri": "file:///base"},
                "store": {"uri": "file:///store"},
                "historyLimit": history_limit,
                **({"rollbackTo": rollback_to} if rollback_to else {}),
            },
        }
    )
    lin.status = L.ensure_base(lin.status, lin.spec.base_model, now=T0)
    for i in range(1, generations + 1):
        lin.status, _ = L.record_candidate(
            lin.status,
            cycle=f"old-{i}",
            uri=f"u{i}",
            content_hash=None,
            parent=lin.status.champion,
            scores={},
            now=T0,
            history_limit=200,
        )
        lin.status, _ = L.promote(lin.status, cycle=f"old-{i}", now=T0)
    return lin


def record(parent: str = "gen-0") -> RecordCandidate:
    return RecordCandidate(
        lineage="lin",
        parent=parent,
        uri="file:///store/lin/c1/dreaming/model",
        content_hash="sha256:x",
        scores={"retention": 0.9},
    )


def apply(lin: ModelLineage, action: LineageAction, **kw: Any) -> L.LineageChange:
    return L.apply_lineage_action(lin, action, cycle="c1", now=T0, **kw)


def with_status(lin: ModelLineage, change: L.LineageChange) -> ModelLineage:
    return lin.model_copy(update={"status": change.status})


# --- the table -------------------------------------------------------------------------
def test_claim_takes_a_free_lineage() -> None:
    assert apply(lineage(), ClaimLineage("lin")).status.active_cycle == "c1"


def test_claim_of_a_lineage_held_by_a_running_cycle_changes_nothing() -> None:
    lin = lineage()
    lin.status.active_cycle = "other"
    assert apply(lin, ClaimLineage("lin")).status.active_cycle == "other"


def test_claim_of_a_lineage_held_by_a_finished_cycle_takes_it() -> None:
    lin = lineage()
    lin.status.active_cycle = "other"
    assert apply(lin, ClaimLineage("lin"), holder_finished=True).status.active_cycle == "c1"


def test_release_lets_go_only_of_our_own_claim() -> None:
    lin = lineage()
    lin.status.active_cycle = "c1"
    assert apply(lin, ReleaseLineage("lin")).status.active_cycle is None
    lin.status.active_cycle = "other"
    assert apply(lin, ReleaseLineage("lin")).status.active_cycle == "other"


def test_record_candidate_names_the_next_generation_once() -> None:
    first = apply(lineage(), record())
    assert first.generation == "gen-1"
    again = apply(with_status(lineage(), first), record())
    assert again.generation == "gen-1" and again.status == first.status


def test_record_candidate_never_trims_the_rollback_target() -> None:
    lin = lineage(generations=3, history_limit=3)  # gen-0..gen-3 kept (cap met by the walk above)
    lin.spec.rollback_to = "gen-1"
    lin.status = L.rollback(lin.status, target="gen-1", now=T0)[0]
    change = apply(lin, record(parent="gen-1"))
    names = [g.name for g in change.status.generations]
    assert "gen-1" in names and change.generation in names
    assert len(names) == 3


def test_promote_is_refused_while_pinned_with_the_reason_on_the_generation() -> None:
    lin = lineage(rollback_to="gen-0")
    lin = with_status(lin, apply(lin, record()))
    change = apply(lin, Promote("lin", "gen-1", {}))
    assert change.promotion is not None and change.promotion.kind == "Pinned"
    gen = L.find(change.status, "gen-1")
    assert gen is not None and gen.state == GenerationState.REJECTED and gen.reason == "Pinned"


def test_promote_of_a_stale_candidate_is_refused_as_stale_parent() -> None:
    lin = lineage(generations=1)  # champion gen-1
    lin = with_status(lin, apply(lin, record(parent="gen-0")))
    change = apply(lin, Promote("lin", "gen-2", {}))
    assert change.promotion is not None and change.promotion.kind == "StaleParent"
    assert L.find_by_cycle(change.status, "c1").reason == "StaleParent"  # type: ignore[union-attr]


def test_promote_makes_the_candidate_champion() -> None:
    lin = lineage()
    lin = with_status(lin, apply(lin, record()))
    change = apply(lin, Promote("lin", "gen-1", {}))
    assert change.promotion is not None and change.promotion.changed
    assert change.status.champion == "gen-1" and change.status.last_promotion_time == T0


def test_reject_keeps_its_reason() -> None:
    lin = lineage()
    lin = with_status(lin, apply(lin, record()))
    gen = L.find(apply(lin, Reject("lin", "gen-1", "GateFailed")).status, "gen-1")
    assert gen is not None and gen.state == GenerationState.REJECTED and gen.reason == "GateFailed"


def test_apply_leaves_its_input_alone() -> None:
    lin = lineage()
    before = lin.model_copy(deep=True)
    apply(lin, record())
    apply(lin, ClaimLineage("lin"))
    assert lin == before


# --- both executors, one meaning ----------------------------------------------------------
class FakeKube:
    """The three calls promotion.py makes, on one stored ModelLineage (optimistic concurrency included)."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj

    async def get_or_none(self, res: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        return (
            copy.deepcopy(self.obj) if res.plural == "modellineages" and name == self.obj["metadata"]["name"] else None
        )

    async def replace_status(self, res: Any, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        assert body["metadata"]["resourceVersion"] == self.obj["metadata"]["resourceVersion"]
        self.obj["status"] = copy.deepcopy(body["status"])
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)

    async def create(self, res: Any, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return body  # Events


class Quiet(runner.Observer):
    pass


def _operator_applies(lin: ModelLineage, actions: list[LineageAction]) -> ModelLineage:
    obj = {**lin.model_dump(by_alias=True, mode="json", exclude_none=True)}
    obj["metadata"] = {**obj["metadata"], "resourceVersion": "1"}
    kube = FakeKube(obj)

    async def go() -> None:
        for action in actions:
            if isinstance(action, RecordCandidate):
                await promotion.record_candidate(
                    kube,
                    namespace="ns",
                    lineage="lin",
                    cycle="c1",
                    uri=action.uri,  # type: ignore[arg-type]
                    content_hash=action.content_hash,
                    parent=action.parent,
                    scores=action.scores,
                )
            elif isinstance(action, Reject):
                await promotion.reject(kube, namespace="ns", lineage="lin", cycle="c1", reason=action.reason)  # type: ignore[arg-type]
            elif isinstance(action, Promote):
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr("reverie.controller.serving.sync_serving", _no_serving)
                    await promotion.promote(kube, namespace="ns", lineage="lin", cycle="c1")  # type: ignore[arg-type]
            else:
                await promotion.apply_action(kube, namespace="ns", cycle="c1", action=action)  # type: ignore[arg-type]

    asyncio.run(go())
    return lineage_status.parse_lineage(kube.obj)


async def _no_serving(*_: Any, **__: Any) -> None:
    return None


def _local_applies(lin: ModelLineage, actions: list[LineageAction]) -> ModelLineage:
    cycle = SleepCycle.model_validate(
        {
            "metadata": {"name": "c1", "namespace": "ns"},
            "spec": {"lineageRef": "lin", "memory": {"sources": [{"inline": ["x"]}]}},
        }
    )
    state = LocalState(lineage=lin.model_copy(deep=True), cycles=[cycle])
    for action in actions:
        runner._apply(action, state=state, cycle=cycle, executor=None, observer=Quiet())  # type: ignore[arg-type]
    return state.lineage


def _comparable(lin: ModelLineage) -> list[tuple[str, str, str | None]]:
    return [(g.name, str(g.state), g.reason) for g in lin.status.generations] + [
        ("champion", str(lin.status.champion), lin.status.active_cycle),
        ("dropped", str(lin.status.dropped.count), lin.status.dropped.newest),
    ]


@pytest.mark.parametrize("sequence", ["pinned-at-history-limit", "gate-rejected", "promoted"])
def test_the_operator_and_the_local_runner_leave_the_same_lineage(sequence: str) -> None:
    # The drift this guards against: local RecordCandidate trimmed history without keeping the
    # spec.rollbackTo generation, so a pinned lineage at its historyLimit lost its pin in local mode.
    if sequence == "pinned-at-history-limit":
        lin = lineage(generations=3, history_limit=3)
        lin.status = L.trim_history(lin.status, history_limit=3)
        lin.spec.rollback_to = lin.status.generations[0].name
        actions: list[LineageAction] = [
            ClaimLineage("lin"),
            record(parent=lin.status.champion or "gen-0"),
            Promote("lin", "", {}),
            ReleaseLineage("lin"),
        ]
    elif sequence == "gate-rejected":
        lin = lineage(generations=1)
        actions = [ClaimLineage("lin"), record(parent="gen-1"), Reject("lin", "", "GateFailed"), ReleaseLineage("lin")]
    else:
        lin = lineage()
        actions = [ClaimLineage("lin"), record(), Promote("lin", "", {}), ReleaseLineage("lin")]
    on_cluster, local = _operator_applies(lin, actions), _local_applies(lin, actions)
    assert _comparable(on_cluster) == _comparable(local)
    if lin.spec.rollback_to:
        assert L.find(local.status, lin.spec.rollback_to) is not None, "local mode dropped the pinned generation"


def test_a_pinned_generation_survives_a_local_candidate_at_the_history_limit() -> None:
    lin = lineage(generations=3, history_limit=3)
    lin.status = L.trim_history(lin.status, history_limit=3)
    pinned = lin.status.generations[0].name
    lin.spec.rollback_to = pinned
    assert isinstance(lin.status.generations[0], Generation)
    local = _local_applies(lin, [record(parent=lin.status.champion or "gen-0")])
    assert pinned in [g.name for g in local.status.generations]
