"""A lineage's memory inbox: JSONL files dropped under a store prefix between sleeps.

The serving side, a batch job or a person drops ``*.jsonl`` files of memories
(the format of :mod:`reverie.workloads.data.memory`; ``id`` may be left out) under
``spec.memory.inbox`` of the ModelLineage.  Nothing is ever deleted from it:
what a lineage has slept on is read from the champion's ancestry (the memory
files beside each ancestor's model, :func:`reverie.core.lineage.slept_memory_uris`),
so a sleep whose generation is rejected leaves its memories new for the next.

- **Identity.** A memory is its id, or its content hash when it has none; a
  memory whose id *or* text was seen already (in the ancestry, or earlier in
  the inbox) is a duplicate and counts once.
- **Order.** Files arrive in the order the store dates them (then by name),
  memories in line order: the oldest are taken first, at most ``maxPerSleep``.
- **A fixed set.** :func:`take` writes the set a cycle sleeps on once, beside
  its outputs; a set already there is the set (a restart, a retried step).
  Beside it goes the cycle's slept ledger (its base's and its own memories),
  so what a champion slept on is known past ``historyLimit``.
- **Putting memories in.** :func:`remember` validates whole files first and
  writes each as one new file (one PUT; a rename on a local disk), so a reader
  never sees half a file and a malformed line writes nothing.

The operator imports this module (and :mod:`~reverie.workloads.data.memory`,
:mod:`~reverie.workloads.store.store`): fsspec only, no ML stack.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reverie.api.sleepcycle import MemorySetStatus
from reverie.workloads.data.memory import Memory, MemorySetError, parse_jsonl, text_key
from reverie.workloads.store import store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """One memory in the inbox, with when its file arrived."""

    memory: Memory
    arrived: datetime
    file: str


@dataclass
class InboxContents:
    """Everything in the inbox, oldest first, and the files that could not be read (skipped, with why)."""

    arrivals: list[Arrival] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NewMemories:
    """The memories the ancestry has not slept on: the ones one sleep takes, and the ones that wait."""

    taken: list[Arrival]
    waiting: list[Arrival]

    @property
    def count(self) -> int:
        return len(self.taken) + len(self.waiting)

    @property
    def oldest(self) -> datetime | None:
        return self.taken[0].arrived if self.taken else None


def _arrived(info: dict[str, Any]) -> datetime:
    """When a listed file arrived: S3's LastModified, a local file's mtime."""
    stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or 0
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(stamp), UTC)


class ParsedFiles:
    """Memories of store files already parsed, so a reader that counts an inbox every tick lists, not reads.

    An inbox file is known by its name, size and arrival time (a rewritten file
    is read again); an ancestry's memory file is written once, so by its URI
    alone, and only once it exists.  Bounded: the oldest entries go first.
    """

    def __init__(self, max_files: int = 4096) -> None:
        self.max_files = max_files
        self._memories: dict[tuple[str, ...], list[Memory]] = {}

    def get(self, key: tuple[str, ...]) -> list[Memory] | None:
        return self._memories.get(key)

    def put(self, key: tuple[str, ...], memories: list[Memory]) -> None:
        self._memories[key] = memories
        while len(self._memories) > self.max_files:
            self._memories.pop(next(iter(self._memories)))


def read_inbox(uri: str, *, cache: ParsedFiles | None = None) -> InboxContents:
    """Every memory of the inbox's ``*.jsonl`` files, oldest file first; a missing inbox is empty.

    A file that does not parse is skipped and reported (``problems``): one bad
    drop must not stop every later sleep.
    """
    fs, path = store.filesystem(uri, fresh=True)
    try:
        listing = fs.ls(path.rstrip("/"), detail=True)
    except FileNotFoundError:
        return InboxContents()
    files = sorted(
        (
            (_arrived(info), str(info["name"]), str(info.get("size")))
            for info in listing
            if info.get("type") == "file" and str(info["name"]).endswith(".jsonl")
        ),
    )
    out = InboxContents()
    for arrived, name, size in files:
        key = (name, size, arrived.isoformat())
        memories = cache.get(key) if cache is not None else None
        if memories is None:
            try:
                with fs.open(name, "r", encoding="utf-8") as fh:
                    memories = parse_jsonl(fh.read(), source=name, ids_optional=True)
            except FileNotFoundError:
                continue  # removed since the listing
            except (MemorySetError, UnicodeDecodeError) as exc:
                out.problems.append(f"{name} skipped: {exc}")
                continue
            if cache is not None:
                cache.put(key, memories)
        out.arrivals += [Arrival(memory=m, arrived=arrived, file=name) for m in memories]
    return out


def read_slept(uris: Iterable[str], *, cache: ParsedFiles | None = None) -> list[Memory]:
    """The memories in the ancestry's memory files; a missing file has none."""
    out: list[Memory] = []
    for uri in uris:
        memories = cache.get((uri,)) if cache is not None else None
        if memories is None:
            text = store.read_text(uri)
            if text is None:
                continue
            memories = parse_jsonl(text, source=uri, ids_optional=True)
            if cache is not None:
                cache.put((uri,), memories)
        out += memories
    return out


def _keys(memory: Memory) -> set[str]:
    return {f"id:{memory.id}", f"text:{text_key(memory.text)}"}


def select_new(arrivals: Sequence[Arrival], slept: Iterable[Memory], *, limit: int) -> NewMemories:
    """The arrivals not slept on, each identity once, oldest first; the first ``limit`` are taken."""
    seen: set[str] = set()
    for memory in slept:
        seen |= _keys(memory)
    new: list[Arrival] = []
    for arrival in arrivals:
        keys = _keys(arrival.memory)
        if keys & seen:
            continue
        seen |= keys
        new.append(arrival)
    return NewMemories(taken=new[:limit], waiting=new[limit:])


def new_memories(
    inbox_uri: str, slept_uris: Iterable[str], *, limit: int, cache: ParsedFiles | None = None
) -> tuple[NewMemories, list[str]]:
    """What the inbox holds that the ancestry has not slept on, and the inbox files that were skipped."""
    contents = read_inbox(inbox_uri, cache=cache)
    return select_new(contents.arrivals, read_slept(slept_uris, cache=cache), limit=limit), contents.problems


def to_jsonl(memories: Iterable[Memory]) -> str:
    """Memories as JSONL, one object per line, in the order given."""
    return "".join(json.dumps(m.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for m in memories)


def unique(memories: Iterable[Memory]) -> list[Memory]:
    """Each memory once (by id or text), first seen first."""
    seen: set[str] = set()
    out: list[Memory] = []
    for memory in memories:
        keys = _keys(memory)
        if not keys & seen:
            seen |= keys
            out.append(memory)
    return out


def take(
    *, inbox_uri: str, slept_uris: Iterable[str], limit: int, set_uri: str, ledger_uri: str, now: datetime
) -> MemorySetStatus:
    """Fix a cycle's memory set: write the new memories to ``set_uri`` once, or read the set already there.

    The ledger (everything slept on so far, and the set) is written first, the
    set last: the set's file is the commit, and once it is there it wins over
    the inbox as it is now, so a restart before status records it, or a repeat
    of the action, takes the same set.
    """
    slept_files = list(slept_uris)
    existing = store.read_text(set_uri)
    if existing is None:
        contents = read_inbox(inbox_uri)
        for problem in contents.problems:
            log.warning("inbox %s: %s", inbox_uri, problem)
        slept = read_slept(slept_files)
        new = select_new(contents.arrivals, slept, limit=limit)
        taken = [a.memory for a in new.taken]
        store.write_text(ledger_uri, to_jsonl(unique([*slept, *taken])))
        text = to_jsonl(taken)
        store.write_text(set_uri, text)
        count, waiting = len(new.taken), len(new.waiting)
    else:
        text = existing
        taken = parse_jsonl(text, source=set_uri)
        # What waits beyond this set, as the inbox is now.
        later, _ = new_memories(inbox_uri, [*slept_files, set_uri], limit=0)
        count, waiting = len(taken), later.count
    return MemorySetStatus(
        uri=set_uri,
        count=count,
        waiting=waiting,
        content_hash="sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest(),
        taken_at=now.replace(microsecond=0),
    )


# --- putting memories in ---------------------------------------------------------------
class RememberError(ValueError):
    """A file that cannot go into the inbox; the message names the file, the line and the field."""


def validate_file(path: Path) -> list[Memory]:
    """The memories of one JSONL file, every line checked; :class:`RememberError` on the first bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RememberError(f"{path}: cannot be read ({exc})") from exc
    try:
        memories = parse_jsonl(text, source=str(path), ids_optional=True)
    except MemorySetError as exc:
        raise RememberError(f"{exc}; nothing of {path} was written") from exc
    if not memories:
        raise RememberError(f"{path}: holds no memory (one JSON object per line, with at least 'text')")
    return memories


def remember(inbox_uri: str, files: Sequence[Path], *, now: datetime | None = None) -> list[tuple[str, int]]:
    """Validate every file, then write each into the inbox as one new file; returns (uri, memories) per file.

    Nothing is written unless every file is valid.  The name is the arrival time,
    the file's place on the command line and a hash of its content
    (``20260101T020000123456Z-000-1a2b3c4d.jsonl``), so names sort by arrival.
    """
    batches = [(path, validate_file(path)) for path in files]
    stamp = (now or datetime.now(UTC)).astimezone(UTC)
    out: list[tuple[str, int]] = []
    for index, (path, memories) in enumerate(batches):
        text = to_jsonl(memories)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
        uri = store.join(inbox_uri, f"{stamp:%Y%m%dT%H%M%S%fZ}-{index:03d}-{digest}.jsonl")
        store.write_text(uri, text)
        log.info("wrote %d memories of %s to %s", len(memories), path, uri)
        out.append((uri, len(memories)))
    return out
