"""What a sleep rehearses of earlier sleeps: a fixed budget of their stored items, chosen by what is being lost.

Every sleep keeps its self-study set beside the memories it consolidated
(``<consolidation output>/selfstudy``: ``items.jsonl`` with each answer's token
ids, and the teacher's top-k log-probs of every answer token).  Those targets
were computed once, when the item was made, by the teacher of *that* sleep with
the memory in view.  A later sleep replays them as they are: a replayed item
costs no teacher pass, only its row in a training batch.

A lineage on a nightly schedule would otherwise replay every earlier item, and
its sleeps would slow down with age.  So a sleep replays a fixed budget
(``ConsolidationSpec.replay.items``), drawn from the ancestry's stored items:

* ``forgotten`` (default) — before training, the champion (the model before this
  sleep) is scored on one stored item per earlier memory: its mean loss per
  token on the answer the teacher gave at that memory's own sleep, closed book,
  teacher-forced (one forward per memory, at most :data:`PROBE_LIMIT` memories).
  Memories get budget in proportion to that loss: what the model now gets wrong
  is rehearsed most;
* ``uniform`` — every stored item alike;
* ``all`` — every stored item (the budget is ignored: the cost grows with age).

The stored items are study prompts checked against every evaluation question
when they were made, and checked again here (:class:`~reverie.workloads.data.heldout.HeldOut`):
a probe is never an evaluation question.

The choice is written to ``replay.json`` in this sleep's own study folder
(which memories, their loss, how many of their items, and the rows taken from
each earlier study with that study's sha256).  This sleep's study files hold its
own rows only — the earlier rows are referenced, not copied — so the store grows
by one sleep's items per sleep.  A restarted or retried attempt reads the same
choice back and verifies every referenced file against its hash.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import load_file

from reverie.api.steps import ReplayChoice, ReplaySpec
from reverie.workloads.data.memory import question_prompt
from reverie.workloads.ml.lm import completion_nll, encode
from reverie.workloads.ml.sampling import active_adapters
from reverie.workloads.steps.selfstudy import ITEMS_FILE, STUDY_DIR, TARGETS_FILE, StudyItem, TeacherTargets
from reverie.workloads.store import store
from reverie.workloads.store.atomic import write_atomic
from reverie.workloads.store.manifest import file_sha256

REPLAY_FILE = "replay.json"
# Earlier memories the champion is probed on before a sleep (a seeded sample beyond it):
# the probe is one forward per memory, so its cost stays flat once a lineage holds more.
PROBE_LIMIT = 256


class ReplayError(ValueError):
    """A stored replay choice no longer matches the files it references."""


@dataclass(frozen=True)
class StoredItem:
    """One self-study item an earlier sleep made, with where its cached teacher targets are."""

    study: str  # the earlier sleep's self-study folder (a URI)
    row: int  # its row in that study's files
    item: StudyItem
    answer_ids: tuple[int, ...]


@dataclass
class Choice:
    """The replay of one sleep: the stored items taken, and why."""

    strategy: str
    budget: int
    items: list[StoredItem]
    memories: list[dict[str, Any]] = field(default_factory=list)
    studies: dict[str, str] = field(default_factory=dict)  # study URI → sha256 of its targets file
    probed: int = 0

    def to_json(self) -> dict[str, Any]:
        rows: dict[str, list[int]] = {}
        for s in self.items:
            rows.setdefault(s.study, []).append(s.row)
        return {
            "strategy": self.strategy,
            "budget": self.budget,
            "probed": self.probed,
            "memories": self.memories,
            "sources": [{"study": uri, "sha256": self.studies[uri], "rows": r} for uri, r in rows.items()],
        }


# ----------------------------------------------------------------------------- the ancestry's stored items


def study_folder_of(memory_uri: str) -> str:
    """The self-study folder kept beside a sleep's consolidated memories."""
    return memory_uri.rsplit("/", 1)[0] + "/" + STUDY_DIR


def read_rows(study: str) -> list[dict[str, Any]] | None:
    """The raw rows of a stored study's items file, or None when the folder holds no complete study."""

    if not store.exists(study.rstrip("/") + "/" + TARGETS_FILE):
        return None
    try:
        with fsspec.open(study.rstrip("/") + "/" + ITEMS_FILE, "r", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return None


def stored_items(studies: Sequence[str], *, allows: Any = None) -> tuple[list[StoredItem], list[str]]:
    """(every memory item the given studies made, the studies that hold none).

    Replay rows inside a study (its general prompts, or an older sleep's copied rows) are
    not taken: each item is replayed from the study that made it.  ``allows`` (a
    :class:`HeldOut`'s ``allows``) drops any item that contains an evaluation question.
    """
    out: list[StoredItem] = []
    missing: list[str] = []
    for study in studies:
        rows = read_rows(study)
        if rows is None:
            missing.append(study)
            continue
        for n, raw in enumerate(rows):
            item = StudyItem.from_json(raw)
            if item.replay or "answer_ids" not in raw:
                continue
            if allows is not None and not (allows(item.prompt) and allows(item.answer)):
                continue
            out.append(StoredItem(study=study, row=n, item=item, answer_ids=tuple(raw["answer_ids"])))
    return out, missing


# ----------------------------------------------------------------------------- the probe


@torch.no_grad()
def probe_losses(
    model: Any,
    tokenizer: Any,
    items: Sequence[StoredItem],
    *,
    adapters: Sequence[str],
    seed: int,
    limit: int = PROBE_LIMIT,
    batch_size: int = 16,
) -> dict[str, float]:
    """Memory id → the model's mean loss per token on one stored answer of that memory, closed book.

    The probe of a memory is its first stored item: made from the memory text at its own
    sleep, answered there by the teacher with the memory in view.  Beyond ``limit``
    memories a seeded sample is probed.
    """
    first: dict[str, StoredItem] = {}
    for s in items:
        first.setdefault(s.item.memory_id, s)
    probes = sorted(first.values(), key=lambda s: (s.study, s.row))
    if len(probes) > limit:
        probes = sorted(random.Random(seed).sample(probes, limit), key=lambda s: (s.study, s.row))
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    with active_adapters(model, list(adapters)):
        for start in range(0, len(probes), batch_size):
            chunk = probes[start : start + batch_size]
            nll = completion_nll(
                model,
                tokenizer,
                [encode(tokenizer, question_prompt(tokenizer, s.item.prompt)) for s in chunk],
                [list(s.answer_ids) for s in chunk],
            )
            for s, (total, n) in zip(chunk, nll, strict=True):
                out[s.item.memory_id] = total / max(1, n)
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- the choice


def _shares(weights: dict[str, float], available: dict[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` over memories in proportion to ``weights`` (largest remainder), capped by what each holds."""
    take = dict.fromkeys(weights, 0)
    left = min(budget, sum(available.values()))
    open_ = {m for m in weights if available[m] > 0}
    while left > 0 and open_:
        total = sum(weights[m] for m in open_) or float(len(open_))
        exact = {m: left * (weights[m] / total if total else 1.0 / len(open_)) for m in open_}
        give = {m: min(int(exact[m]), available[m] - take[m]) for m in open_}
        rest = left - sum(give.values())
        # The remainder, one item each, to the largest fractional parts (ties: memory id).
        for m in sorted(open_, key=lambda m: (-(exact[m] - int(exact[m])), m)):
            if rest <= 0:
                break
            if take[m] + give[m] < available[m]:
                give[m] += 1
                rest -= 1
        if sum(give.values()) == 0:
            break
        for m, g in give.items():
            take[m] += g
        left -= sum(give.values())
        open_ = {m for m in open_ if take[m] < available[m]}
    return take


def choose(
    items: Sequence[StoredItem],
    *,
    spec: ReplaySpec,
    seed: int,
    losses: dict[str, float] | None = None,
) -> Choice:
    """The stored items this sleep replays (deterministic in ``seed`` and ``losses``)."""
    strategy = ReplayChoice(spec.choose)
    by_memory: dict[str, list[StoredItem]] = {}
    for s in items:
        by_memory.setdefault(s.item.memory_id, []).append(s)
    if strategy == ReplayChoice.ALL or len(items) <= spec.items:
        chosen = list(items)
    elif strategy == ReplayChoice.UNIFORM:
        chosen = random.Random(seed).sample(list(items), spec.items)
    else:
        losses = losses or {}
        known = [v for v in losses.values() if v == v]
        fill = sum(known) / len(known) if known else 1.0  # memories beyond the probe: the mean loss
        weights = {m: max(losses.get(m, fill), 1e-6) for m in by_memory}
        shares = _shares(weights, {m: len(v) for m, v in by_memory.items()}, spec.items)
        chosen = []
        for m in sorted(by_memory):
            if shares[m]:
                chosen += random.Random(f"{seed}:{m}").sample(by_memory[m], shares[m])
    chosen.sort(key=lambda s: (s.study, s.row))
    taken: dict[str, int] = {}
    for s in chosen:
        taken[s.item.memory_id] = taken.get(s.item.memory_id, 0) + 1
    memories = [
        {
            "id": m,
            "loss": round(losses[m], 4) if losses and m in losses else None,
            "items": taken.get(m, 0),
            "stored": len(v),
            "study": v[0].study,
        }
        for m, v in sorted(by_memory.items())
    ]
    return Choice(strategy=strategy.value, budget=spec.items, items=chosen, memories=memories, probed=len(losses or {}))


# ----------------------------------------------------------------------------- cached targets


def _local_file(uri: str, scratch: Path) -> Path:
    if not store.is_remote(uri):
        return store.local_path(uri)
    target = scratch / hashlib.sha256(uri.encode()).hexdigest()
    store.download_file(uri, target)
    return target


def load_targets(choice: Choice, *, expect: dict[str, str] | None = None) -> TeacherTargets:
    """The cached teacher targets of the chosen items, in their order; fills ``choice.studies`` with hashes.

    ``expect`` (study → sha256, from a stored choice) must match the files read, or
    :class:`ReplayError` says which study changed.
    """

    if not choice.items:
        return TeacherTargets(
            answer_ids=[],
            topk_ids=torch.zeros(0, 1, 1, dtype=torch.long),
            topk_logprobs=torch.full((0, 1, 1), float("-inf")),
        )
    rows: dict[str, list[int]] = {}
    for s in choice.items:
        rows.setdefault(s.study, []).append(s.row)
    ids: list[torch.Tensor] = []
    lps: list[torch.Tensor] = []
    with tempfile.TemporaryDirectory(prefix="reverie-replay-") as scratch:
        tables: dict[str, dict[str, torch.Tensor]] = {}
        for study in rows:
            path = _local_file(study.rstrip("/") + "/" + TARGETS_FILE, Path(scratch))
            digest = file_sha256(path)
            if expect is not None and expect.get(study) != digest:
                raise ReplayError(
                    f"replay: the stored study {study} changed since this sleep chose from it "
                    f"(sha256 {digest}, recorded {expect.get(study)}); delete this sleep's selfstudy folder to choose again"
                )
            choice.studies[study] = digest
            tables[study] = load_file(str(path))
        for s in choice.items:
            ids.append(tables[s.study]["topk_ids"][s.row])
            lps.append(tables[s.study]["topk_logprobs"][s.row])
    return TeacherTargets(
        answer_ids=[list(s.answer_ids) for s in choice.items],
        topk_ids=_stack(ids, fill=0),
        topk_logprobs=_stack(lps, fill=float("-inf")),
    )


def _stack(rows: Sequence[torch.Tensor], *, fill: float) -> torch.Tensor:
    """Stack L × k tables of different shapes, padding both dimensions with ``fill``."""
    width = max(r.shape[0] for r in rows)
    k = max(r.shape[1] for r in rows)
    out = torch.full((len(rows), width, k), fill, dtype=rows[0].dtype)
    for n, r in enumerate(rows):
        out[n, : r.shape[0], : r.shape[1]] = r
    return out


def concat(a: TeacherTargets, b: TeacherTargets) -> TeacherTargets:
    """The targets of ``a``'s items followed by ``b``'s (padded to the wider and the larger top-k)."""
    if len(b) == 0:
        return a
    if len(a) == 0:
        return b
    ids = _stack([*a.topk_ids, *b.topk_ids], fill=0)
    lps = _stack([*a.topk_logprobs, *b.topk_logprobs], fill=float("-inf"))
    return TeacherTargets(answer_ids=[*a.answer_ids, *b.answer_ids], topk_ids=ids, topk_logprobs=lps)


def nbytes(targets: TeacherTargets) -> int:
    """Bytes of the cached targets (what replay adds to a training set's memory)."""
    return int(targets.topk_ids.numel() * targets.topk_ids.element_size()) + int(
        targets.topk_logprobs.numel() * targets.topk_logprobs.element_size()
    )


# ----------------------------------------------------------------------------- the stored choice


def replayed(choice: Choice) -> list[StudyItem]:
    """The chosen items as this sleep's replay rows."""
    return [replace(s.item, replay=True) for s in choice.items]


def save_choice(folder: Path, choice: Choice) -> None:

    write_atomic(folder / REPLAY_FILE, json.dumps(choice.to_json(), indent=1) + "\n")


def load_choice(folder: Path) -> tuple[Choice, dict[str, str]] | None:
    """A stored choice with its items resolved again from the referenced studies (and their hashes)."""
    path = folder / REPLAY_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    items: list[StoredItem] = []
    expect: dict[str, str] = {}
    for src in raw["sources"]:
        study, wanted = src["study"], src["rows"]
        expect[study] = src["sha256"]
        rows = read_rows(study)
        if rows is None or max(wanted, default=-1) >= len(rows):
            raise ReplayError(f"replay: the stored study {study} that this sleep replays is gone or shorter")
        for n in wanted:
            items.append(
                StoredItem(
                    study=study, row=n, item=StudyItem.from_json(rows[n]), answer_ids=tuple(rows[n]["answer_ids"])
                )
            )
    choice = Choice(
        strategy=raw["strategy"], budget=int(raw["budget"]), items=items, memories=raw["memories"], probed=raw["probed"]
    )
    return choice, expect
