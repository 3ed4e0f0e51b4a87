"""A sleep's self-study set: this sleep's items, the replay of earlier sleeps, and the teacher's cached targets.

Built once per cycle and kept under ``<output_uri>/selfstudy``; every later
attempt of the step reuses it (:func:`open_study`), so a retried Job trains on
the same rows as the first.  The teacher's passes are split across ranks the
way the sampling backend splits generation (:mod:`reverie.workloads.ml.distributed`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reverie.api.steps import ConsolidationSpec, ReplayChoice
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import Memory, read_memory_uri, resolve_uri
from reverie.workloads.ml import distributed
from reverie.workloads.ml.distributed import World
from reverie.workloads.ml.sampling import SamplingBackend
from reverie.workloads.steps import replay
from reverie.workloads.steps.knowledge_seeding import Roles, teacher_prompt_of
from reverie.workloads.steps.selfstudy import (
    GENERAL_REPLAY_PROMPTS,
    STUDY_DIR,
    TARGETS_FILE,
    StudyItem,
    TeacherTargets,
    load_study,
    replay_items,
    save_study,
    sharded_teacher_targets,
    summary_prompts,
    synthesize,
)
from reverie.workloads.store import store


def prior_study_items(
    prior_memory_uris: Sequence[str], *, store_uri: str | None, limit: int = 400, seed: int = 0
) -> list[StudyItem]:
    """Replay prompts for earlier memories that have no stored self-study set: summary seeds of their subjects.

    A sleep keeps its items beside its consolidated memories and later sleeps replay
    those, with their cached targets (:mod:`reverie.workloads.steps.replay`); memories
    without them (a base model's own pretraining set, a generation from before
    self-study) are rehearsed through these prompts, answered by the model before
    this sleep.
    """

    out: list[StudyItem] = []
    for uri in prior_memory_uris:
        out += summary_prompts(read_memory_uri(resolve_uri(uri, store_uri=store_uri)))
    if len(out) > limit:
        out = random.Random(seed).sample(out, limit)
    return out


def build_study(
    model: Any,
    tokenizer: Any,
    backend: SamplingBackend,
    *,
    memories: Sequence[Memory],
    prior: Sequence[StudyItem],
    held_out: Any,
    roles: Roles,
    spec: ConsolidationSpec,
    in_context: bool = True,
    world: World | None = None,
    forwards: Callable[[], Any] | None = None,
    asked: Counter[str] | None = None,
) -> tuple[list[StudyItem], TeacherTargets]:
    """This sleep's self-study set (memory items + replay items) and the teacher's cached top-k on it.

    On N ranks ``backend`` splits the generation and the teacher's passes are split the same way
    (:mod:`reverie.workloads.ml.distributed`); every rank ends with the whole set.
    """
    with roles.reading():
        mem_items = synthesize(
            backend,
            tokenizer,
            memories,
            adapters=roles.memory_teacher,
            items_per_memory=spec.items_per_memory,
            seed=spec.seed,
            max_new_tokens=spec.max_new_tokens,
            in_context=in_context,
            fact_floor=spec.fact_floor,
            keep=held_out.allows,
            asked=asked,
        )
    # Earlier memories' prompts are the teacher's; the general prompts too, unless anchored (Roles.reads).
    general = GENERAL_REPLAY_PROMPTS[: spec.replay.general_prompts]
    rep_items = replay_items(
        backend,
        tokenizer,
        adapters=roles.teacher,
        max_new_tokens=spec.max_new_tokens,
        prior=[i for i in prior if held_out.allows(i.prompt)],
        general=() if roles.anchor_general else general,
    )
    if roles.anchor_general and general:
        adapters, weights = roles.of(True)
        with weights:
            rep_items += replay_items(
                backend, tokenizer, adapters=adapters, max_new_tokens=spec.max_new_tokens, prior=[], general=general
            )
    items = [i for i in [*mem_items, *rep_items] if held_out.allows(i.prompt) and held_out.allows(i.answer)]
    by_id = {m.id: m for m in memories}

    def targets_of(rows: list[StudyItem]) -> TeacherTargets:
        return sharded_teacher_targets(
            world or World(),
            model,
            tokenizer,
            rows,
            forwards=forwards or contextlib.nullcontext,
            teacher_prompts=[teacher_prompt_of(i, tokenizer, by_id, in_context=in_context) for i in rows],
            adapters_of=lambda i: roles.memory_teacher if roles.reads(i) else roles.teacher,
            k=spec.top_k,
            max_tokens=spec.max_new_tokens,
        )

    if roles.reading is contextlib.nullcontext:
        return items, targets_of(items)
    # The memory teacher reads with other weights: its rows in one pass inside them, then the rest.
    mine, rest = [i for i in items if roles.reads(i)], [i for i in items if not roles.reads(i)]
    with roles.reading():
        targets = targets_of(mine)
    return [*mine, *rest], replay.concat(targets, targets_of(rest)) if rest else targets


@dataclass
class StudySet:
    """What stage 1 trains on: this sleep's items, then the replayed ones, row for row with their targets."""

    items: list[StudyItem]
    targets: TeacherTargets
    choice: replay.Choice  # which earlier sleeps' stored items are replayed
    replay_bytes: int
    reused: bool  # an earlier attempt's set
    teacher_items: int  # items the teacher answered in this attempt (0 when reused)
    probe_seconds: float  # scoring earlier items to choose what to replay
    seconds: float
    asked: Counter[str] = field(default_factory=Counter)  # prompts asked per kind in this attempt

    @property
    def memory_items(self) -> int:
        return sum(not i.replay for i in self.items)


@dataclass
class StudyContext:
    """Everything building the set needs from the consolidation step."""

    model: Any
    tokenizer: Any
    backend: SamplingBackend
    roles: Roles
    spec: ConsolidationSpec
    world: World
    forwards: Callable[[], Any]
    memories: Sequence[Memory]
    held_out: HeldOut
    prior_memory_uris: Sequence[str]
    store_uri: str


def open_study(ctx: StudyContext, *, folder: Path, uri: str) -> StudySet:
    """The cycle's self-study set: an earlier attempt's (local, else downloaded from ``uri``), or built now.

    A new set is written under ``folder`` (rank 0) and uploaded to ``uri`` when that
    is remote, its targets file last: both files are there or the set counts as absent.
    """
    started = time.perf_counter()
    if store.is_remote(uri) and load_study(folder) is None:
        store.download_tree(uri, folder)  # an earlier attempt's set, if it uploaded one
    study = load_study(folder)
    if study is not None:
        own_items, own_targets = study
        # A stored choice whose files changed since raises replay.ReplayError (the message says which).
        choice, expect = replay.load_choice(folder) or (replay.choose([], spec=ctx.spec.replay, seed=ctx.spec.seed), {})
        replay_targets = replay.load_targets(choice, expect=expect)
        return _joined(own_items, own_targets, choice, replay_targets, reused=True, started=started)
    # Replay: a fixed budget of the ancestry's stored items, their teacher targets cached.
    spec = ctx.spec
    prior_uris = [resolve_uri(u, store_uri=ctx.store_uri) for u in ctx.prior_memory_uris]
    stored, missing = replay.stored_items([replay.study_folder_of(u) for u in prior_uris], allows=ctx.held_out.allows)
    fallback = prior_study_items(
        [u for u in prior_uris if replay.study_folder_of(u) in missing], store_uri=None, seed=spec.seed
    )
    probe_started = time.perf_counter()
    losses: dict[str, float] = {}
    if spec.replay.choose == ReplayChoice.FORGOTTEN and len(stored) > spec.replay.items:
        with ctx.forwards():  # every rank scores the same probes: the same choice everywhere
            losses = replay.probe_losses(ctx.model, ctx.tokenizer, stored, adapters=ctx.roles.teacher, seed=spec.seed)
    probe_seconds = time.perf_counter() - probe_started
    choice = replay.choose(stored, spec=spec.replay, seed=spec.seed, losses=losses)
    replay_targets = replay.load_targets(choice)
    asked: Counter[str] = Counter()
    own_items, own_targets = build_study(
        ctx.model,
        ctx.tokenizer,
        ctx.backend,
        memories=ctx.memories,
        prior=fallback,
        held_out=ctx.held_out,
        roles=ctx.roles,
        spec=spec,
        world=ctx.world,
        forwards=ctx.forwards,
        asked=asked,
    )

    def write_study() -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        replay.save_choice(folder, choice)  # before the targets file, which marks the set complete
        save_study(folder, own_items, own_targets)
        if store.is_remote(uri):
            store.upload_tree(folder, uri, commit_last=(TARGETS_FILE,))
        return folder

    distributed.on_main(ctx.world, write_study)
    return _joined(
        own_items,
        own_targets,
        choice,
        replay_targets,
        reused=False,
        started=started,
        teacher_items=len(own_items),
        probe_seconds=probe_seconds,
        asked=asked,
    )


def _joined(
    own_items: list[StudyItem],
    own_targets: TeacherTargets,
    choice: replay.Choice,
    replay_targets: TeacherTargets,
    *,
    reused: bool,
    started: float,
    teacher_items: int = 0,
    probe_seconds: float = 0.0,
    asked: Counter[str] | None = None,
) -> StudySet:
    return StudySet(
        items=[*own_items, *replay.replayed(choice)],
        targets=replay.concat(own_targets, replay_targets),
        choice=choice,
        replay_bytes=replay.nbytes(replay_targets),
        reused=reused,
        teacher_items=teacher_items,
        probe_seconds=probe_seconds,
        seconds=time.perf_counter() - started,
        asked=asked if asked is not None else Counter(),
    )


__all__ = ["STUDY_DIR", "StudyContext", "StudySet", "build_study", "open_study", "prior_study_items"]
