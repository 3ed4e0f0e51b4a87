"""First-run bootstrap of ``builtin:tiny``: a base model and its memories, built here.

A newcomer's first ``reverie sleep`` has no model and no data, and must not
download anything.  When the lineage's ``spec.baseModel.uri`` is
``builtin:tiny``, this builds (once, in a few seconds) a tiny world of fictional
people with :mod:`reverie.workloads.tiny`:

- ``<store>/<lineage>/gen-0/``: a tiny Qwen2 pretrained on the OLD people's facts
  (it knows them closed-book) that has only heard the NEW people's names;
- ``<store>/<lineage>/memories/session-<n>.jsonl``: the facts of the new people
  met in wake session n (what a deployed model would hold only in its context);
- ``<store>/<lineage>/memories/old.jsonl``: what the base already knows;
- ``<store>/<lineage>/eval/general_qa.jsonl`` and ``general_text.jsonl``: the
  retention and perplexity sets the evaluation reads instead of its English
  built-ins (a tiny model has never seen English; its "general knowledge" is
  the old facts).

A memory source ``uri: builtin:tiny`` in a SleepCycle then means "the next
session's memories of that world": cycle n of the lineage gets session n.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reverie.local.state import write_atomic

BUILTIN_TINY = "builtin:tiny"
MANIFEST = "builtin-tiny.json"
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


def _read_manifest(path: Path) -> TinyWorld | None:
    # Paths are stored relative to the lineage folder, so a store can be copied or moved.
    root = path.parent
    try:
        raw = json.loads(path.read_text())
        world = TinyWorld(
            base_uri=str(root / raw["base_uri"]), sessions=[str(root / s) for s in raw["sessions"]],
            old_memories=str(root / raw["old_memories"]), people_per_session=int(raw["people_per_session"]),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not (Path(world.base_uri) / "config.json").exists():
        return None
    return world


def tiny_world_exists(store: Path, lineage: str) -> bool:
    return _read_manifest(store / lineage / MANIFEST) is not None


def ensure_tiny_world(store: Path, lineage: str, *, seed: int = 0, people_per_session: int = 8,
                      old_people: int = 16, pretrain_steps: int = 400) -> TinyWorld:
    """Build the tiny base generation and its memories unless they exist (idempotent)."""
    root = store / lineage
    manifest = root / MANIFEST
    world = _read_manifest(manifest)
    if world is not None:
        return world
    # Imported here: torch and transformers cost seconds, and only this path needs them.
    from reverie.workloads import tiny

    base = tiny.build_base_generation(
        root / "gen-0", seed=seed, n_old=old_people, n_new=(people_per_session,) * SESSIONS,
        steps=pretrain_steps,
    )
    memories = root / "memories"
    sessions = []
    for index, facts in enumerate(base.new, start=1):
        path = tiny.write_memories_jsonl(memories / f"session-{index}.jsonl", tiny.memory_records(facts, prefix=f"s{index}"))
        sessions.append(str(path))
    old = tiny.write_memories_jsonl(memories / "old.jsonl", tiny.memory_records(base.old, prefix="old"))
    evaluation = root / "eval"
    evaluation.mkdir(parents=True, exist_ok=True)
    write_atomic(evaluation / "general_qa.jsonl", "".join(
        json.dumps({"id": f"old-{i}", "question": f.question, "answer": f.answer}) + "\n" for i, f in enumerate(base.old)
    ))
    write_atomic(evaluation / "general_text.jsonl", "".join(
        json.dumps({"text": f.sentence}) + "\n" for f in base.old
    ))
    relative = {
        "base_uri": str(Path(base.folder).resolve().relative_to(root.resolve())),
        "sessions": [str(Path(s).resolve().relative_to(root.resolve())) for s in sessions],
        "old_memories": str(Path(old).resolve().relative_to(root.resolve())),
        "people_per_session": people_per_session,
    }
    write_atomic(manifest, json.dumps(relative, indent=1) + "\n")
    world = _read_manifest(manifest)
    assert world is not None
    return world
