"""The lineage rules as a specification: generation 0, record, promote (compare-
and-set on the champion), reject, rollback, history cap, and idempotence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from reverie.api.lineage import BaseModelSpec, GenerationState, ModelLineage, ModelLineageStatus
from reverie.core import lineage as L
from reverie.core.conditions import get_condition

T0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
BASE = BaseModelSpec(uri="builtin:tiny")


def fresh() -> ModelLineageStatus:
    return L.ensure_base(ModelLineageStatus(), BASE, now=T0)


def cycle_promoted(
    status: ModelLineageStatus, cycle: str, *, now: datetime = T0, limit: int = 20
) -> ModelLineageStatus:
    status, _ = L.record_candidate(
        status,
        cycle=cycle,
        uri=f"s3://store/{cycle}",
        content_hash="h",
        parent=status.champion,
        scores={"retention": 0.9},
        now=now,
        history_limit=limit,
    )
    status, result = L.promote(status, cycle=cycle, now=now)
    assert result.promoted, result.message
    return status


def states(status: ModelLineageStatus) -> dict[str, str]:
    return {g.name: str(g.state) for g in status.generations}


def test_generation_zero_is_the_base_model_and_champion() -> None:
    s = fresh()
    assert s.champion == "gen-0" and s.champion_uri == "builtin:tiny"
    assert states(s) == {"gen-0": "Champion"}
    assert s.next_generation == 1
    assert L.ensure_base(s, BaseModelSpec(uri="other"), now=T0) is s


def test_record_candidate_names_from_next_generation_and_is_idempotent_by_cycle() -> None:
    s = fresh()
    s1, name = L.record_candidate(
        s,
        cycle="c1",
        uri="u1",
        content_hash="abc",
        parent="gen-0",
        scores={"a": 1.0},
        now=T0,
        history_limit=20,
    )
    assert name == "gen-1" and s1.next_generation == 2
    g = L.find(s1, "gen-1")
    assert g is not None and (g.parent, g.cycle, g.uri, g.content_hash, g.state) == (
        "gen-0",
        "c1",
        "u1",
        "abc",
        "Candidate",
    )
    s2, again = L.record_candidate(
        s1,
        cycle="c1",
        uri="other",
        content_hash="x",
        parent="gen-0",
        scores={},
        now=T0,
        history_limit=20,
    )
    assert again == "gen-1" and s2 == s1
    assert s == fresh()  # input untouched


def test_promote_moves_champion_and_retires_the_old_one() -> None:
    s, _ = L.record_candidate(
        fresh(), cycle="c1", uri="u1", content_hash=None, parent="gen-0", scores={}, now=T0, history_limit=20
    )
    later = T0 + timedelta(minutes=5)
    s2, result = L.promote(s, cycle="c1", now=later)
    assert result.kind == "Promoted" and result.changed and (result.generation, result.previous) == ("gen-1", "gen-0")
    assert states(s2) == {"gen-0": "Retired", "gen-1": "Champion"}
    assert s2.champion == "gen-1" and s2.champion_uri == "u1" and s2.last_promotion_time == later
    g0 = L.find(s2, "gen-0")
    assert g0 is not None and g0.retired_at == later


def test_promote_twice_is_already_champion_and_changes_nothing() -> None:
    s = cycle_promoted(fresh(), "c1")
    s2, result = L.promote(s, cycle="c1", now=T0)
    assert result.kind == "AlreadyChampion" and result.promoted and not result.changed
    assert s2 == s


def test_two_cycles_from_the_same_champion_cannot_both_promote() -> None:
    s = fresh()
    s, _ = L.record_candidate(
        s, cycle="a", uri="ua", content_hash=None, parent="gen-0", scores={}, now=T0, history_limit=20
    )
    s, _ = L.record_candidate(
        s, cycle="b", uri="ub", content_hash=None, parent="gen-0", scores={}, now=T0, history_limit=20
    )
    s, first = L.promote(s, cycle="a", now=T0)
    s, second = L.promote(s, cycle="b", now=T0)
    assert first.kind == "Promoted"
    assert second.kind == "StaleParent" and not second.promoted
    assert "champion is now gen-1" in second.message
    assert states(s) == {"gen-0": "Retired", "gen-1": "Champion", "gen-2": "Rejected"}


def test_promotion_is_refused_while_pinned_by_rollback() -> None:
    s, _ = L.record_candidate(
        fresh(), cycle="c1", uri="u", content_hash=None, parent="gen-0", scores={}, now=T0, history_limit=20
    )
    s2, result = L.promote(s, cycle="c1", now=T0, rollback_to="gen-0")
    assert result.kind == "Pinned" and "rollbackTo" in result.message
    assert s2.champion == "gen-0" and states(s2)["gen-1"] == "Rejected"


def test_promote_unknown_cycle_is_refused() -> None:
    s, result = L.promote(fresh(), cycle="nope", now=T0)
    assert result.kind == "Unknown" and s.champion == "gen-0"


def test_reject_marks_candidate_and_is_idempotent() -> None:
    s, _ = L.record_candidate(
        fresh(), cycle="c1", uri="u", content_hash=None, parent="gen-0", scores={}, now=T0, history_limit=20
    )
    s2 = L.reject(s, cycle="c1", now=T0)
    assert states(s2)["gen-1"] == "Rejected"
    assert L.reject(s2, cycle="c1", now=T0) == s2
    assert L.reject(s2, cycle="never-recorded", now=T0) == s2


def test_rollback_restores_a_retired_generation() -> None:
    s = cycle_promoted(cycle_promoted(fresh(), "c1"), "c2")
    s2, rb = L.rollback(s, target="gen-1", now=T0)
    assert rb.kind == "RolledBack" and rb.previous == "gen-2"
    assert states(s2) == {"gen-0": "Retired", "gen-1": "Champion", "gen-2": "Retired"}
    assert s2.champion_uri == "s3://store/c1"
    s3, again = L.rollback(s2, target="gen-1", now=T0)
    assert again.kind == "AlreadyChampion" and s3 == s2


def test_rollback_to_unknown_generation_says_which_exist() -> None:
    s = cycle_promoted(fresh(), "c1")
    s2, rb = L.rollback(s, target="gen-9", now=T0)
    assert rb.kind == "UnknownGeneration" and not rb.ok and s2 == s
    assert "'gen-9' is not in status.generations" in rb.message and "gen-0, gen-1" in rb.message


def test_rollback_to_rejected_generation_is_refused() -> None:
    s, _ = L.record_candidate(
        fresh(), cycle="c1", uri="u", content_hash=None, parent="gen-0", scores={}, now=T0, history_limit=20
    )
    s = L.reject(s, cycle="c1", now=T0)
    _, rb = L.rollback(s, target="gen-1", now=T0)
    assert rb.kind == "NotPromotable" and "Rejected" in rb.message


def test_history_cap_drops_oldest_finished_never_the_champion_and_summarises() -> None:
    s = fresh()
    for i in range(1, 8):
        s = cycle_promoted(s, f"c{i}", limit=3)
    assert [g.name for g in s.generations] == ["gen-5", "gen-6", "gen-7"]
    assert s.champion == "gen-7"
    assert (s.dropped.count, s.dropped.oldest, s.dropped.newest) == (5, "gen-0", "gen-4")


def test_history_cap_keeps_candidates_and_the_rollback_target() -> None:
    s = fresh()
    s = cycle_promoted(s, "c1", limit=2)
    s, _ = L.record_candidate(
        s, cycle="c2", uri="u", content_hash=None, parent="gen-1", scores={}, now=T0, history_limit=2, keep=["gen-0"]
    )
    # gen-0 is protected by keep (a rollback target), gen-1 is champion, gen-2 a pending candidate.
    assert [g.name for g in s.generations] == ["gen-0", "gen-1", "gen-2"]


def test_two_hundred_promotions_keep_the_status_small() -> None:
    s = fresh()
    scores = {
        m: 0.123456789
        for m in ("knowledge_incorporation", "retention", "fewshot", "perplexity", "incontext_upper_bound")
    }
    for i in range(1, 201):
        s, _ = L.record_candidate(
            s,
            cycle=f"lineage-2026112503{i:04d}",
            uri=f"s3://bucket/models/lineage/lineage-2026112503{i:04d}/dreaming",
            content_hash="sha256:" + "f" * 64,
            parent=s.champion,
            scores=scores,
            now=T0,
            history_limit=20,
        )
        s, _ = L.promote(s, cycle=f"lineage-2026112503{i:04d}", now=T0)
    size = len(json.dumps(s.wire()))
    assert s.champion == "gen-200" and len(s.generations) == 20 and s.dropped.count == 181
    assert size < 20_000, size
    # Even at the largest allowed historyLimit the object stays far below etcd's 1 MiB.
    big = fresh()
    for i in range(1, 201):
        big = cycle_promoted(big, f"c{i:04d}", limit=200)
    assert len(json.dumps(big.wire())) < 150_000


_ops = st.lists(
    st.tuples(st.sampled_from(["record", "promote", "reject", "rollback"]), st.integers(min_value=0, max_value=6)),
    max_size=40,
)


@given(_ops, st.integers(min_value=2, max_value=6))
@settings(max_examples=150)
def test_any_sequence_keeps_exactly_one_champion_and_never_loses_it(ops: list[tuple[str, int]], limit: int) -> None:
    s = fresh()
    for op, i in ops:
        cycle = f"c{i}"
        if op == "record":
            s, _ = L.record_candidate(
                s, cycle=cycle, uri=cycle, content_hash=None, parent=s.champion, scores={}, now=T0, history_limit=limit
            )
        elif op == "promote":
            s, _ = L.promote(s, cycle=cycle, now=T0)
        elif op == "reject":
            s = L.reject(s, cycle=cycle, now=T0)
        else:
            s, _ = L.rollback(s, target=f"gen-{i}", now=T0)
        champions = [g.name for g in s.generations if g.state == GenerationState.CHAMPION]
        assert champions == [s.champion]
        names = [g.name for g in s.generations]
        assert len(names) == len(set(names))
        # Every number ever handed out is either kept or counted as dropped.
        assert len(s.generations) + s.dropped.count == s.next_generation
        # Re-applying any rule is a no-op: idempotent under retries and restarts.
        if op == "promote":
            again, _ = L.promote(s, cycle=cycle, now=T0)
            assert again == s


def lineage_with(status: ModelLineageStatus, **spec: object) -> ModelLineage:
    return ModelLineage.model_validate(
        {
            "metadata": {"name": "demo", "generation": 3},
            "spec": {"baseModel": {"uri": "builtin:tiny"}, "store": {"uri": "file:///s"}, **spec},
            "status": status.wire(),
        }
    )


def test_reconcile_records_generation_zero_and_ready() -> None:
    s, result = L.reconcile(lineage_with(ModelLineageStatus()), now=T0)
    assert result is None and s.champion == "gen-0" and s.observed_generation == 3
    ready = get_condition(s.conditions, "Ready")
    assert ready is not None and ready.status == "True"
    again, _ = L.reconcile(lineage_with(s), now=T0 + timedelta(hours=1))
    assert again == s


def test_reconcile_enforces_the_rollback_pin_then_unpins() -> None:
    s = cycle_promoted(cycle_promoted(fresh(), "c1"), "c2")
    pinned, result = L.reconcile(lineage_with(s, rollbackTo="gen-1"), now=T0)
    assert result is not None and result.kind == "RolledBack" and pinned.champion == "gen-1"
    cond = get_condition(pinned.conditions, "RolledBack")
    assert cond is not None and (cond.status, cond.reason) == ("True", "RolledBack")
    unknown, result = L.reconcile(lineage_with(pinned, rollbackTo="gen-7"), now=T0)
    assert result is not None and not result.ok and unknown.champion == "gen-1"
    cond, ready = get_condition(unknown.conditions, "RolledBack"), get_condition(unknown.conditions, "Ready")
    assert cond is not None and (cond.status, cond.reason) == ("False", "UnknownGeneration")
    assert ready is not None and ready.status == "False" and "gen-7" in ready.message
    unpinned, _ = L.reconcile(lineage_with(unknown), now=T0)
    cond = get_condition(unpinned.conditions, "RolledBack")
    assert cond is not None and (cond.status, cond.reason) == ("False", "Unpinned")
    assert unpinned.champion == "gen-1"  # removing the pin does not undo the rollback


def test_an_invalid_schedule_makes_the_lineage_not_ready_with_the_problem() -> None:
    problem = "spec.schedule.cron '61 * * * *' is not a valid cron expression (e.g. '0 3 * * *' or @daily)"
    s, _ = L.reconcile(lineage_with(ModelLineageStatus()), now=T0, schedule_problem=problem)
    ready = get_condition(s.conditions, "Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "InvalidSchedule")
    assert "spec.schedule.cron" in ready.message
    fixed, _ = L.reconcile(lineage_with(s), now=T0 + timedelta(minutes=1))
    assert get_condition(fixed.conditions, "Ready").status == "True"  # type: ignore[union-attr]
