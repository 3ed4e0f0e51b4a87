"""The lineage rules: how generations are recorded, promoted, rejected, rolled
back and trimmed in a ModelLineage status.

Pure functions over :class:`ModelLineageStatus` (no I/O, no clock: the caller
passes ``now``).  Each returns a *new* status and leaves its input untouched, so
the controller can run it inside an optimistic-concurrency loop: read the
lineage, apply the rule, write with the read ``resourceVersion``; on 409 read
again and re-apply the same rule to the fresh state.  Every rule is therefore
idempotent: applied twice (a retry, an operator restart) it changes nothing the
second time.  MLflow's registry is the model: a generation is an immutable
version, ``champion`` is a mutable alias pointing at one of them.

The rules:

* **Generation 0** is ``spec.baseModel``, recorded as Champion when the lineage
  is first seen (:func:`ensure_base`).
* **Record** (:func:`record_candidate`): a cycle's candidate becomes
  ``gen-<status.nextGeneration>`` in state Candidate.  Keyed by the cycle name:
  recording the same cycle again returns the generation already recorded.
* **Promote** (:func:`promote`) is a compare-and-set on the champion: the
  candidate's parent (the generation the cycle trained from) must still be the
  champion.  If another cycle promoted in between, this candidate was trained
  from a superseded model and promoting it would silently discard the other
  cycle's learning, so it is refused (``StaleParent``) and the candidate is
  marked Rejected.  Hence two cycles trained from the same champion can never
  both promote: the first to write wins, the second sees fresh state and
  loses.  While ``spec.rollbackTo`` pins a generation nothing is promoted
  (``Pinned``).  The old champion becomes Retired.
* **Reject** (:func:`reject`): the candidate becomes Rejected.
* **Rollback** (:func:`rollback`): level-based; while ``spec.rollbackTo`` names a
  known Champion/Retired generation, that generation is the champion.
* **History** (:func:`trim_history`): at most ``historyLimit`` generations are
  kept; the oldest Retired/Rejected ones are dropped first and summarised in
  ``status.dropped``.  The champion, pending candidates and the rollback target
  are never dropped, so a lineage can exceed the limit only by those.

:func:`apply_lineage_action` is the one place where a planner action (claim,
release, record, promote, reject) becomes one of these rules with the
lineage's own spec (its ``rollbackTo`` and ``historyLimit``); the operator and
the local runner both call it, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from reverie.api.lineage import (
    BaseModelSpec,
    Generation,
    GenerationState,
    LineageCondition,
    ModelLineage,
    ModelLineageStatus,
)
from reverie.core.actions import (
    ClaimLineage,
    LineageAction,
    Promote,
    RecordCandidate,
    Reject,
    ReleaseLineage,
)
from reverie.core.conditions import get_condition, set_condition
from reverie.core.contract import consolidated_memories_uri, inbox_uri, slept_ledger_uri, taken_memories_uri

BASE_GENERATION = "gen-0"
_GEN_RE = re.compile(r"^gen-(\d+)$")


def generation_name(number: int) -> str:
    """``gen-<number>``."""
    return f"gen-{number}"


def generation_number(name: str | None) -> int | None:
    """N of ``gen-N``, or None for any other name."""
    m = _GEN_RE.match(name or "")
    return int(m.group(1)) if m else None


def find(status: ModelLineageStatus, name: str | None) -> Generation | None:
    """The kept generation called ``name``, or None."""
    return next((g for g in status.generations if g.name == name), None)


def find_by_cycle(status: ModelLineageStatus, cycle: str) -> Generation | None:
    """The kept generation produced by ``cycle``, or None."""
    return next((g for g in status.generations if g.cycle == cycle), None)


def ensure_base(status: ModelLineageStatus, base: BaseModelSpec, *, now: datetime) -> ModelLineageStatus:
    """Record generation 0 (the base model) as champion if the lineage has no history yet.

    A lineage that already has a champion, generations, or dropped history is
    returned unchanged, so this is safe to call on every reconcile.
    """
    if status.champion is not None or status.generations or status.dropped.count:
        return status
    new = status.model_copy(deep=True)
    new.generations.append(
        Generation(
            name=BASE_GENERATION,
            parent=None,
            cycle=None,
            uri=base.uri,
            state=GenerationState.CHAMPION,
            created_at=now,
            promoted_at=now,
        )
    )
    new.champion = BASE_GENERATION
    new.champion_uri = base.uri
    new.next_generation = max(new.next_generation, 1)
    return new


def record_candidate(
    status: ModelLineageStatus,
    *,
    cycle: str,
    uri: str,
    content_hash: str | None,
    parent: str | None,
    scores: Mapping[str, float],
    now: datetime,
    history_limit: int,
    keep: Iterable[str] = (),
) -> tuple[ModelLineageStatus, str]:
    """Record the candidate produced by ``cycle``; return (new status, generation name).

    Idempotent by cycle: if a generation of this cycle is already kept, the
    status is returned unchanged with that generation's name.
    """
    existing = find_by_cycle(status, cycle)
    if existing is not None:
        return status, existing.name
    new = status.model_copy(deep=True)
    name = generation_name(new.next_generation)
    new.next_generation += 1
    new.generations.append(
        Generation(
            name=name,
            parent=parent,
            cycle=cycle,
            uri=uri,
            content_hash=content_hash,
            scores=dict(scores),
            state=GenerationState.CANDIDATE,
            created_at=now,
        )
    )
    return trim_history(new, history_limit=history_limit, keep=keep), name


PromotionKind = Literal["Promoted", "AlreadyChampion", "StaleParent", "Pinned", "NotCandidate", "Unknown"]


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did.

    ``promoted`` is True for ``Promoted`` and ``AlreadyChampion`` (a retry after
    the write already landed): the cycle succeeded.  Otherwise ``kind`` is the
    CamelCase reason why not and ``message`` explains it to a human.
    """

    kind: PromotionKind
    generation: str | None
    previous: str | None
    message: str

    @property
    def promoted(self) -> bool:
        return self.kind in ("Promoted", "AlreadyChampion")

    @property
    def changed(self) -> bool:
        """Whether the champion changed by this call (serving must follow, metrics count it)."""
        return self.kind == "Promoted"


def promote(
    status: ModelLineageStatus,
    *,
    cycle: str,
    now: datetime,
    rollback_to: str | None = None,
) -> tuple[ModelLineageStatus, Promotion]:
    """Make ``cycle``'s candidate the champion, if the lineage still allows it.

    Compare-and-set: refused (``StaleParent``, candidate marked Rejected) when
    the candidate's parent is no longer the champion; refused (``Pinned``,
    candidate marked Rejected) while ``spec.rollbackTo`` is set.  A generation
    that already is champion is ``AlreadyChampion`` (idempotent retry).
    """
    gen = find_by_cycle(status, cycle)
    if gen is None:
        return status, Promotion(
            "Unknown", None, status.champion, f"no generation of cycle {cycle} is recorded in the lineage"
        )
    if gen.state == GenerationState.CHAMPION or (gen.state == GenerationState.RETIRED and gen.promoted_at is not None):
        # Landed already (a restart between the write and the cycle's status update),
        # possibly superseded since; either way this cycle's promotion happened once.
        return status, Promotion("AlreadyChampion", gen.name, status.champion, f"{gen.name} was already promoted")
    if gen.state != GenerationState.CANDIDATE:
        return status, Promotion(
            "NotCandidate", gen.name, status.champion, f"{gen.name} is {gen.state}, not a Candidate"
        )
    previous = status.champion
    if rollback_to is not None:
        new = _set_state(status, gen.name, GenerationState.REJECTED, now=now, reason="Pinned")
        return new, Promotion(
            "Pinned",
            gen.name,
            previous,
            f"lineage is pinned to {rollback_to} by spec.rollbackTo; {gen.name} was not promoted (remove rollbackTo to resume promotion)",
        )
    if gen.parent != previous:
        new = _set_state(status, gen.name, GenerationState.REJECTED, now=now, reason="StaleParent")
        return new, Promotion(
            "StaleParent",
            gen.name,
            previous,
            f"{gen.name} was trained from {gen.parent} but the champion is now {previous}; "
            "promoting it would discard the newer champion, so it was rejected (run a new cycle from the champion)",
        )
    new = _make_champion(status, gen.name, now=now)
    return new, Promotion("Promoted", gen.name, previous, f"{gen.name} promoted to champion (was {previous})")


def reject(status: ModelLineageStatus, *, cycle: str, now: datetime, reason: str | None = None) -> ModelLineageStatus:
    """Mark ``cycle``'s candidate Rejected (with ``reason``); no-op if there is none or it is not a Candidate."""
    gen = find_by_cycle(status, cycle)
    if gen is None or gen.state != GenerationState.CANDIDATE:
        return status
    return _set_state(status, gen.name, GenerationState.REJECTED, now=now, reason=reason)


@dataclass(frozen=True)
class Rollback:
    """What :func:`rollback` did: ``kind`` is the RolledBack condition's reason."""

    kind: Literal["RolledBack", "AlreadyChampion", "UnknownGeneration", "NotPromotable"]
    generation: str
    previous: str | None
    message: str

    @property
    def changed(self) -> bool:
        return self.kind == "RolledBack"

    @property
    def ok(self) -> bool:
        return self.kind in ("RolledBack", "AlreadyChampion")


def rollback(status: ModelLineageStatus, *, target: str, now: datetime) -> tuple[ModelLineageStatus, Rollback]:
    """Make ``target`` the champion again (``spec.rollbackTo``); level-based and idempotent.

    Only a generation that has been champion (Champion or Retired) can be
    restored; Candidate and Rejected generations never passed their gate.
    """
    gen = find(status, target)
    previous = status.champion
    if gen is None:
        known = ", ".join(
            g.name for g in status.generations if g.state in (GenerationState.CHAMPION, GenerationState.RETIRED)
        )
        dropped = ""
        num = generation_number(target)
        if num is not None and status.dropped.count and num < status.next_generation:
            dropped = f" ({target} may have been dropped by historyLimit)"
        return status, Rollback(
            "UnknownGeneration",
            target,
            previous,
            f"spec.rollbackTo: generation {target!r} is not in status.generations{dropped}; known: {known or 'none'}",
        )
    if gen.state == GenerationState.CHAMPION:
        return status, Rollback("AlreadyChampion", target, previous, f"{target} is the champion")
    if gen.state != GenerationState.RETIRED:
        return status, Rollback(
            "NotPromotable",
            target,
            previous,
            f"spec.rollbackTo: {target} is {gen.state}; only a generation that was champion (Retired) can be restored",
        )
    new = _make_champion(status, target, now=now)
    return new, Rollback("RolledBack", target, previous, f"{target} is champion again (was {previous})")


def trim_history(status: ModelLineageStatus, *, history_limit: int, keep: Iterable[str] = ()) -> ModelLineageStatus:
    """Drop the oldest Retired/Rejected generations beyond ``history_limit``, summarised in ``dropped``."""
    protected = set(keep)
    if status.champion:
        protected.add(status.champion)
    excess = len(status.generations) - history_limit
    if excess <= 0:
        return status
    new = status.model_copy(deep=True)
    kept: list[Generation] = []
    for g in new.generations:
        droppable = g.state in (GenerationState.RETIRED, GenerationState.REJECTED) and g.name not in protected
        if excess > 0 and droppable:
            excess -= 1
            new.dropped.count += 1
            new.dropped.oldest = new.dropped.oldest or g.name
            new.dropped.newest = g.name
            continue
        kept.append(g)
    new.generations = kept
    return new


def _set_state(
    status: ModelLineageStatus,
    name: str,
    state: GenerationState,
    *,
    now: datetime,
    reason: str | None = None,
) -> ModelLineageStatus:
    new = status.model_copy(deep=True)
    for g in new.generations:
        if g.name == name:
            g.state = state
            g.reason = reason
            if state == GenerationState.RETIRED:
                g.retired_at = now
    return new


def _make_champion(status: ModelLineageStatus, name: str, *, now: datetime) -> ModelLineageStatus:
    new = status.model_copy(deep=True)
    for g in new.generations:
        if g.name == name:
            g.state = GenerationState.CHAMPION
            g.promoted_at = now
            g.retired_at = None
            new.champion = g.name
            new.champion_uri = g.uri
        elif g.state == GenerationState.CHAMPION:
            g.state = GenerationState.RETIRED
            g.retired_at = now
    new.last_promotion_time = now
    return new


def reconcile(
    lineage: ModelLineage,
    *,
    now: datetime,
    schedule_problem: str | None = None,
) -> tuple[ModelLineageStatus, Rollback | None]:
    """The level-based part of a lineage's own reconcile: generation 0, the rollback pin, conditions.

    Returns the new status and what the rollback pin did (None without
    ``spec.rollbackTo``).  Conditions: ``RolledBack`` (True while a pin holds,
    False with ``UnknownGeneration``/``NotPromotable`` and a message saying
    what to fix, False ``Unpinned`` once the pin is removed) and ``Ready``
    (False ``RollbackFailed`` for a broken pin, False ``InvalidSchedule`` with
    ``schedule_problem``, the caller's verdict on ``spec.schedule``).
    """
    spec = lineage.spec
    status = ensure_base(lineage.status, spec.base_model, now=now)
    observed = lineage.metadata.generation
    result: Rollback | None = None
    conditions = status.conditions
    if spec.rollback_to:
        status, result = rollback(status, target=spec.rollback_to, now=now)
        conditions = set_condition(
            status.conditions,
            LineageCondition.ROLLED_BACK,
            result.ok,
            reason="RolledBack" if result.ok else result.kind,
            message=(
                f"pinned to {spec.rollback_to} by spec.rollbackTo; promotion paused" if result.ok else result.message
            ),
            now=now,
            observed_generation=observed,
        )
    elif (pin := get_condition(conditions, LineageCondition.ROLLED_BACK)) is not None and pin.reason != "Unpinned":
        conditions = set_condition(
            conditions,
            LineageCondition.ROLLED_BACK,
            False,
            reason="Unpinned",
            message=f"spec.rollbackTo removed; promotion resumed from champion {status.champion}",
            now=now,
            observed_generation=observed,
        )
    if result is not None and not result.ok:
        ready, reason, message = False, "RollbackFailed", result.message
    elif schedule_problem:
        ready, reason, message = (
            False,
            "InvalidSchedule",
            f"{schedule_problem}; no SleepCycle is scheduled until it is fixed",
        )
    else:
        ready, reason, message = True, "ChampionServing", f"champion {status.champion} ({status.champion_uri})"
    conditions = set_condition(
        conditions, LineageCondition.READY, ready, reason=reason, message=message, now=now, observed_generation=observed
    )
    if conditions != status.conditions or status.observed_generation != observed:
        status = status.model_copy(deep=True)
        status.conditions = conditions
        status.observed_generation = observed
    return status, result


def may_claim(active_cycle: str | None, *, cycle: str, holder_finished: bool) -> bool:
    """A cycle may take the lineage if it is free, already ours, or held by a finished/deleted cycle."""
    return active_cycle is None or active_cycle == cycle or holder_finished


@dataclass(frozen=True)
class LineageChange:
    """What :func:`apply_lineage_action` made of a lineage's status."""

    status: ModelLineageStatus
    generation: str | None = None  # RecordCandidate: the generation recorded for the cycle
    promotion: Promotion | None = None  # Promote: what the compare-and-set decided


def apply_lineage_action(
    lineage: ModelLineage,
    action: LineageAction,
    *,
    cycle: str,
    now: datetime,
    holder_finished: bool = False,
) -> LineageChange:
    """Apply one planner action of ``cycle`` to ``lineage``; the input is left untouched.

    Every executor goes through here, reading the lineage's spec the same way:
    a recorded candidate never trims the ``spec.rollbackTo`` generation, a
    promotion is refused while the lineage is pinned, a rejection keeps its
    reason.  ``holder_finished`` says whether the cycle now holding the lineage
    has finished or gone (only the executor can know; a claim needs it).
    Generation 0 is ensured first, so the rules always see a champion.
    """
    spec = lineage.spec
    status = ensure_base(lineage.status, spec.base_model, now=now)
    if isinstance(action, ClaimLineage):
        if status.active_cycle == cycle or not may_claim(
            status.active_cycle, cycle=cycle, holder_finished=holder_finished
        ):
            return LineageChange(status)
        new = status.model_copy(deep=True)
        new.active_cycle = cycle
        return LineageChange(new)
    if isinstance(action, ReleaseLineage):
        if status.active_cycle != cycle:
            return LineageChange(status)
        new = status.model_copy(deep=True)
        new.active_cycle = None
        return LineageChange(new)
    if isinstance(action, RecordCandidate):
        new, name = record_candidate(
            status,
            cycle=cycle,
            uri=action.uri,
            content_hash=action.content_hash,
            parent=action.parent,
            scores=action.scores,
            now=now,
            history_limit=spec.history_limit,
            keep=[spec.rollback_to] if spec.rollback_to else [],
        )
        return LineageChange(new, generation=name)
    if isinstance(action, Promote):
        new, promotion = promote(status, cycle=cycle, now=now, rollback_to=spec.rollback_to)
        return LineageChange(new, generation=promotion.generation, promotion=promotion)
    if isinstance(action, Reject):
        return LineageChange(reject(status, cycle=cycle, now=now, reason=action.reason))
    raise TypeError(f"{type(action).__name__} is not a lineage action")


def ancestry(status: ModelLineageStatus, generation: str | None) -> list[Generation]:
    """``generation`` and its recorded ancestors, oldest first.

    Generations dropped by ``historyLimit`` end the walk: their memories are no
    longer replayed, which is the price of a bounded status.
    """
    by_name = {g.name: g for g in status.generations}
    chain: list[Generation] = []
    current = by_name.get(generation) if generation else None
    while current is not None and current not in chain:
        chain.append(current)
        current = by_name.get(current.parent) if current.parent else None
    return chain[::-1]


def held_memory_uris(lineage: ModelLineage, generation: str | None) -> list[str]:
    """What ``generation`` is expected to know: its base model's ``knownMemories``, then each
    recorded ancestor sleep's consolidated memories, oldest first (replayed by a sleep, scored by retention)."""
    store, name = lineage.spec.store.uri, lineage.metadata.name
    consolidated = [
        consolidated_memories_uri(store, name, g.cycle) for g in ancestry(lineage.status, generation) if g.cycle
    ]
    return [*lineage.spec.base_model.known_memories, *consolidated]


@dataclass(frozen=True)
class Inbox:
    """Where a lineage's new memories arrive, and how many one sleep takes."""

    uri: str
    max_per_sleep: int


def inbox_of(lineage: ModelLineage) -> Inbox | None:
    """The lineage's inbox (``spec.memory.inbox``, its prefix resolved in the store), or None."""
    spec = lineage.spec.memory.inbox if lineage.spec.memory is not None else None
    if spec is None:
        return None
    return Inbox(inbox_uri(lineage.spec.store.uri, lineage.metadata.name, spec.uri), spec.max_per_sleep)


def slept_memory_uris(lineage: ModelLineage, generation: str | None) -> list[str]:
    """The memory files of ``generation``'s ancestry: what it has slept on.

    What each recorded ancestor's consolidation learned and the inbox set its
    cycle took (the same memories; either may be missing, e.g. for a cycle
    written before the inbox existed), and the slept ledger of ``generation``'s
    own cycle, which also covers ancestors dropped by ``historyLimit``.  Only
    promoted generations and their parents are a champion's ancestry, so a
    rejected sleep's memories stay new.
    """
    store, name = lineage.spec.store.uri, lineage.metadata.name
    chain = ancestry(lineage.status, generation)
    out: list[str] = []
    for gen in chain:
        if gen.cycle:
            out += [consolidated_memories_uri(store, name, gen.cycle), taken_memories_uri(store, name, gen.cycle)]
    if chain and chain[-1].cycle:
        out.append(slept_ledger_uri(store, name, chain[-1].cycle))
    return out
