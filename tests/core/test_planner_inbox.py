"""The planner and an inbox cycle: the memory set is taken once, after the lineage is claimed and the base
pinned; every attempt reads that set; an empty set or a lineage without an inbox ends the cycle."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.core.test_planner import STORE, T0, advance, job, make_cycle, make_lineage, one

from reverie.api.lineage import Generation, GenerationState, ModelLineage
from reverie.api.sleepcycle import MemorySetStatus, Phase, SleepCycle, Step
from reverie.core.conditions import get_condition
from reverie.core.observed import JobState
from reverie.core.planner import CreateJob, TakeMemories, plan

INBOX_CYCLE: dict[str, Any] = {"memory": {"sources": [{"inbox": True}], "chunkDocuments": 2}}


def inbox_lineage(**inbox: Any) -> ModelLineage:
    lin = make_lineage()
    return ModelLineage.model_validate(
        {**lin.model_dump(by_alias=True), "spec": {**lin.spec.wire(), "memory": {"inbox": inbox}}}
    )


def taken(cycle: SleepCycle, count: int = 3) -> SleepCycle:
    """The cycle as the executor leaves it after TakeMemories: the set recorded in status."""
    status = cycle.status.model_copy(
        update={"memory": MemorySetStatus(uri=f"{STORE}/lin/c1/inbox-memories.jsonl", count=count, waiting=1)}
    )
    return cycle.model_copy(update={"status": status})


def test_an_inbox_cycle_takes_its_memories_before_any_job() -> None:
    gens = [
        Generation(name="gen-0", uri="file:///base", state=GenerationState.RETIRED),
        Generation(name="gen-1", parent="gen-0", cycle="c-prev", uri=f"{STORE}/m", state=GenerationState.CHAMPION),
        Generation(name="gen-2", parent="gen-1", cycle="c-rej", uri=f"{STORE}/r", state=GenerationState.REJECTED),
    ]
    lin = inbox_lineage(maxPerSleep=5)
    lin.status.generations, lin.status.champion = gens, "gen-1"
    p = plan(make_cycle(**INBOX_CYCLE), observed=[], lineage=lin, now=T0)
    assert p.of(CreateJob) == []
    take = one(p, TakeMemories)
    assert take == TakeMemories(
        inbox_uri=f"{STORE}/lin/inbox",
        # What the champion's ancestry slept on; the rejected gen-2's memories stay new.
        slept_uris=(
            f"{STORE}/lin/c-prev/consolidation/memories.jsonl",
            f"{STORE}/lin/c-prev/inbox-memories.jsonl",
            f"{STORE}/lin/c-prev/inbox-slept.jsonl",
        ),
        limit=5,
        set_uri=f"{STORE}/lin/c1/inbox-memories.jsonl",
        ledger_uri=f"{STORE}/lin/c1/inbox-slept.jsonl",
    )
    assert p.status.phase == Phase.PENDING and p.status.base_generation == "gen-1"
    ready = get_condition(p.status.conditions, "Ready")
    assert ready is not None and ready.reason == "TakingMemories"


def test_an_inbox_prefix_relative_to_the_store_is_resolved_in_it() -> None:
    p = plan(make_cycle(**INBOX_CYCLE), observed=[], lineage=inbox_lineage(uri="shared/inbox/"), now=T0)
    assert one(p, TakeMemories).inbox_uri == f"{STORE}/shared/inbox"


def test_every_attempt_reads_the_set_taken_at_the_start() -> None:
    lin = inbox_lineage()
    cycle = taken(advance(make_cycle(**INBOX_CYCLE), plan(make_cycle(**INBOX_CYCLE), observed=[], lineage=lin, now=T0)))
    p = plan(cycle, observed=[], lineage=lin, now=T0)
    first = one(p, CreateJob)
    assert p.of(TakeMemories) == []
    assert [s.wire() for s in first.config.memory.sources] == [{"uri": f"{STORE}/lin/c1/inbox-memories.jsonl"}]
    assert first.config.memory.chunk_documents == 2
    assert "on 3 memories from the inbox (1 wait for later sleeps)" in p.status.message
    cycle = advance(cycle, p)
    failed = job(Step.CONSOLIDATION, 1, JobState.FAILED, reason="OOMKilled")
    cycle = advance(cycle, plan(cycle, observed=[failed], lineage=lin, now=T0 + timedelta(seconds=5)))
    retry = one(plan(cycle, observed=[failed], lineage=lin, now=T0 + timedelta(minutes=5)), CreateJob)
    assert retry.attempt == 2 and retry.config.memory == first.config.memory


def test_an_empty_set_ends_the_cycle_without_a_job() -> None:
    lin = inbox_lineage()
    cycle = taken(
        advance(make_cycle(**INBOX_CYCLE), plan(make_cycle(**INBOX_CYCLE), observed=[], lineage=lin, now=T0)), 0
    )
    p = plan(cycle, observed=[], lineage=lin, now=T0)
    assert p.of(CreateJob) == [] and p.status.phase == Phase.FAILED
    ready = get_condition(p.status.conditions, "Ready")
    assert ready is not None and ready.reason == "NothingToConsolidate" and "reverie remember" in ready.message


def test_an_inbox_source_without_an_inbox_on_the_lineage_fails_with_the_fix() -> None:
    p = plan(make_cycle(**INBOX_CYCLE), observed=[], lineage=make_lineage(), now=T0)
    assert p.of(TakeMemories) == [] and p.status.phase == Phase.FAILED
    assert "spec.memory.inbox" in p.status.message
