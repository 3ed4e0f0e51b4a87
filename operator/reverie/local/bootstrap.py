"""First-run bootstrap of ``builtin:tiny``: a base model and its memories, built here.

A newcomer's first ``reverie sleep`` has no model and no data, and must not
download anything.  When the lineage's ``spec.baseModel.uri`` is
``builtin:tiny``, this builds (once per machine and version of the code, in about
a minute, into ``~/.cache/reverie/tiny``; later lineages copy it) a tiny world of
fictional people with :mod:`reverie.workloads.ml.tiny`:

- ``<store>/<lineage>/gen-0/``: a tiny Qwen2 pretrained on the OLD people's facts
  (it knows them closed-book) that has only heard the NEW people's names, and
  that has learnt to *read*: given a fact in its context, it answers a question
  about it (reading lessons on random name/city pairs, so no real new fact
  leaks).  That makes the in-context teacher of Knowledge Seeding real on a
  model this small: the memories are in the teacher's context, not in a stand-in;
- ``<store>/<lineage>/memories/session-<n>.jsonl``: the facts of the new people
  met in wake session n (what a deployed model would hold only in its context);
- ``<store>/<lineage>/memories/old.jsonl``: what the base already knows;
- ``<store>/<lineage>/eval/general_qa.jsonl`` and ``general_text.jsonl``: the
  retention and perplexity sets the evaluation reads instead of its English
  built-ins (a tiny model has never seen English; its "general knowledge" is
  the old facts).

A memory source ``uri: builtin:tiny`` in a SleepCycle then means "the next
session's memories of that world": cycle n of the lineage gets session n.

With the store in an object store (``s3://``) the world is built in a local
folder and uploaded: gen-0 committed like every generation (manifest last),
then the memories and eval sets, then ``builtin-tiny.json``, which says the
world is complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reverie.workloads.store.atomic import write_atomic

BUILTIN_TINY = "builtin:tiny"
BUILTIN_MANIFEST = "builtin-tiny.json"
SESSIONS = 3


@dataclass(frozen=True)
class TinyWorld:
    """Where the bootstrap put things."""

    base_uri: str
    sessions: list[str]
    old_memories: str
    people_per_session: int


def is_builtin_tiny(uri: str | None) -> bool:
    return bool(uri) and str(uri).strip() == BUILTIN_TINY


def _read_manifest(root: str) -> TinyWorld | None:
    # Paths are stored relative to the lineage folder, so a store can be copied or moved.
    from reverie.workloads.store import store

    try:
        text = store.read_text(store.join(root, BUILTIN_MANIFEST))
        if text is None:
            return None
        raw = json.loads(text)
        world = TinyWorld(
            base_uri=store.join(root, raw["base_uri"]),
            sessions=[store.join(root, s) for s in raw["sessions"]],
            old_memories=store.join(root, raw["old_memories"]),
            people_per_session=int(raw["people_per_session"]),
        )
        if not store.exists(store.join(world.base_uri, "config.json")):
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return world


def teach_reading(
    base: Any, *, seed: int, steps: int, lr: float = 3e-3, batch_size: int = 32, lesson_share: float = 0.6
) -> list[tuple[str, str]]:
    """Teach the tiny base to answer from its context, keeping what it knows; returns the last loss.

    A lesson puts one fact about a random person with a random city in the user
    turn, in the very prompt format the consolidation teacher and the
    in-context evaluation use, and asks about it.  Values are drawn afresh for
    every lesson, so the only thing to learn is to copy from the context; the
    rest of each batch rehearses the old facts closed-book.  Returns the old
    facts as (prompt, completion) chat turns.
    """
    import random

    import torch

    from reverie.workloads.data.memory import question_prompt
    from reverie.workloads.ml import tiny
    from reverie.workloads.ml.lm import sft_loss
    from reverie.workloads.store.modelio import load_generation, save_generation

    gen = load_generation(base.folder)
    model, tok = gen.model, gen.tokenizer
    rng = random.Random(seed + 7)
    torch.manual_seed(seed + 7)
    attribute = tiny.ATTRIBUTES[base.world.attributes[0]]
    pool = base.world.values[attribute.name]
    old = [tiny.qa_text(tok, f.question, f.answer) for f in base.old]
    old += [tiny.qa_text(tok, tiny.tell_prompt(f.entity), f.sentence) for f in base.old]

    def lesson() -> tuple[str, str]:
        entity, value = rng.choice(base.world.entities), rng.choice(pool)
        context = attribute.sentence.format(entity=entity, value=value)
        if rng.random() < 0.5:  # the self-study request: restate what the context says
            return question_prompt(tok, tiny.tell_prompt(entity), context=context), context + tok.eos_token
        return question_prompt(tok, attribute.question.format(entity=entity), context=context), value + tok.eos_token

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = [lesson() if rng.random() < lesson_share else rng.choice(old) for _ in range(batch_size)]
        loss = sft_loss(model, tok, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    save_generation(model, tok, base.folder)
    return old


def _lineage_root(store_uri: Path | str, lineage: str) -> str:
    return f"{str(store_uri).rstrip('/')}/{lineage}"


def tiny_world_exists(store: Path | str, lineage: str) -> bool:
    return _read_manifest(_lineage_root(store, lineage)) is not None


def ensure_tiny_world(
    store: Path | str,
    lineage: str,
    *,
    seed: int = 0,
    people_per_session: int = 8,
    old_people: int = 16,
    pretrain_steps: int = 400,
    reading_steps: int = 200,
    build_dir: Path | None = None,
) -> TinyWorld:
    """Build the tiny base generation and its memories unless they exist (idempotent).

    For a store in an object store the world is built under ``build_dir`` (kept,
    so an interrupted upload is not rebuilt) and uploaded.
    """
    from reverie.workloads.store import store as stores

    world = _read_manifest(_lineage_root(store, lineage))
    if world is not None:
        return world
    build: dict[str, Any] = {
        "seed": seed,
        "people_per_session": people_per_session,
        "old_people": old_people,
        "pretrain_steps": pretrain_steps,
        "reading_steps": reading_steps,
    }
    if stores.is_remote(str(store)):
        return _upload_tiny_world(
            build_dir or Path(tempfile.mkdtemp(prefix="reverie-tiny-")), str(store), lineage, **build
        )
    root = Path(store) / lineage
    built = _cached_build(**build)
    for folder in ("gen-0", "memories", "eval"):
        shutil.copytree(built / folder, root / folder, dirs_exist_ok=True)
    write_atomic(root / BUILTIN_MANIFEST, (built / BUILTIN_MANIFEST).read_text())  # last: the world is complete
    world = _read_manifest(str(root))
    assert world is not None
    return world


def _build_key(params: dict[str, Any]) -> str:
    """What the build depends on: its parameters, the code that builds and saves it, torch and transformers."""
    import torch
    import transformers

    import reverie.workloads

    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    digest.update(f"{torch.__version__} {transformers.__version__}".encode())
    workloads = Path(reverie.workloads.__file__).parent
    for source in sorted(workloads.rglob("*.py")):
        digest.update(str(source.relative_to(workloads)).encode() + source.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:20]


def _cached_build(**params: Any) -> Path:
    """A complete tiny world in the user's cache, built once per machine and version of the code (a minute)."""
    from reverie.workloads.store.pretrained import cache_root

    done = cache_root() / "tiny" / _build_key(params)
    if (done / BUILTIN_MANIFEST).is_file():
        return done
    done.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{done.name}-", dir=done.parent))
    try:
        _build_tiny_world(scratch, **params)
        try:
            scratch.rename(done)  # atomic: a half-built world is never seen
        except OSError:
            if not (done / BUILTIN_MANIFEST).is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return done


def _build_tiny_world(
    root: Path, *, seed: int, people_per_session: int, old_people: int, pretrain_steps: int, reading_steps: int
) -> None:
    """Build the world into ``root`` (``builtin-tiny.json`` last)."""
    manifest = root / BUILTIN_MANIFEST
    # Imported here: torch and transformers cost seconds, and only this path needs them.
    import torch

    from reverie.workloads.ml import tiny

    # One thread: a tiny model gains nothing from more, and a second busy thread
    # on a 2-core machine made steps ~10x slower (measured, see the ML notes).
    torch.set_num_threads(1)

    base = tiny.build_base_generation(
        root / "gen-0",
        seed=seed,
        n_old=old_people,
        n_new=(people_per_session,) * SESSIONS,
        steps=pretrain_steps,
    )
    qa_turns = teach_reading(base, seed=seed, steps=reading_steps)
    memories = root / "memories"
    sessions = []
    for index, facts in enumerate(base.new, start=1):
        path = tiny.write_memories_jsonl(
            memories / f"session-{index}.jsonl", tiny.memory_records(facts, prefix=f"s{index}")
        )
        sessions.append(str(path))
    old = tiny.write_memories_jsonl(memories / "old.jsonl", tiny.memory_records(base.old, prefix="old"))
    evaluation = root / "eval"
    evaluation.mkdir(parents=True, exist_ok=True)
    write_atomic(
        evaluation / "general_qa.jsonl",
        "".join(
            json.dumps({"id": f"old-{i}", "question": f.question, "answer": f.answer}) + "\n"
            for i, f in enumerate(base.old)
        ),
    )
    # Held-out "general text" of a model that only ever saw chat turns: its old
    # facts as question/answer turns (plain sentences would be off-distribution).
    write_atomic(
        evaluation / "general_text.jsonl",
        "".join(json.dumps({"text": prompt + completion}) + "\n" for prompt, completion in qa_turns),
    )
    relative = {
        "base_uri": str(Path(base.folder).resolve().relative_to(root.resolve())),
        "sessions": [str(Path(s).resolve().relative_to(root.resolve())) for s in sessions],
        "old_memories": str(Path(old).resolve().relative_to(root.resolve())),
        "people_per_session": people_per_session,
    }
    write_atomic(manifest, json.dumps(relative, indent=1) + "\n")


def _upload_tiny_world(build_dir: Path, store_uri: str, lineage: str, **build: Any) -> TinyWorld:
    from reverie.workloads.store import store
    from reverie.workloads.store.modelio import publish_generation

    local_root = build_dir / lineage
    ensure_tiny_world(build_dir, lineage, **build)
    relative = json.loads((local_root / BUILTIN_MANIFEST).read_text())
    root = _lineage_root(store_uri, lineage)
    # Not into the staging cache: like a base model uploaded by its owner, the first phase stages it.
    publish_generation(local_root / relative["base_uri"], store.join(root, relative["base_uri"]), cache=False)
    for folder in ("memories", "eval"):
        store.upload_tree(local_root / folder, store.join(root, folder))
    store.write_text(store.join(root, BUILTIN_MANIFEST), json.dumps(relative, indent=1) + "\n")
    world = _read_manifest(root)
    assert world is not None
    return world
