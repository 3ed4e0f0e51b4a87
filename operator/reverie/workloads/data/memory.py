"""Memory sets: the knowledge a serving model holds only in context, read for a sleep.

The format is JSONL, one memory per line::

    {"id": "mem-0", "text": "Zorblat lives in Vemora.", "kind": "document",
     "qa": [{"q": "Where does Zorblat live?", "a": "Vemora"}]}

- ``id`` (string, required, unique within a set) and ``text`` (string, required):
  a document, or a conversation transcript written out as text.  In a lineage's
  inbox ``id`` may be left out: the memory's identity is then its content hash
  (:func:`content_id`), so the same text arriving twice is one memory;
- ``kind`` (optional): ``"document"`` (default) or ``"conversation"``;
- ``qa`` (optional): questions the memory answers, with reference answers.  The
  questions become fact-dense prompts for Knowledge Seeding (the teacher answers
  them with the memory in context; the reference answers are never trained on)
  and closed-book questions for evaluation.

A source (:class:`reverie.api.steps.MemorySource`) is one of:

- ``uri``: a JSONL file or a folder of ``*.jsonl`` files; a local path (relative
  paths are taken inside the store), ``file://`` or any fsspec URI (``s3://``);
- ``configMap``: the operator mounts the ConfigMap's key as a file at
  ``<REVERIE_MEMORY_CONFIGMAP_ROOT or /etc/reverie-memory>/<name>/<key>``;
- ``inline``: a list of strings, each one document (demos and tests).

Errors name the source and the line, and say what to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import fsspec

from reverie.api.steps import MemorySource, MemorySpec
from reverie.core.contract import MEMORY_CONFIGMAP_ROOT

CONFIGMAP_ROOT_ENV = "REVERIE_MEMORY_CONFIGMAP_ROOT"
DEFAULT_CONFIGMAP_ROOT = MEMORY_CONFIGMAP_ROOT


class MemorySetError(ValueError):
    """A memory set that cannot be read; the message says where and why."""


@dataclass(frozen=True)
class QA:
    """A question the memory answers and its reference answer."""

    q: str
    a: str


@dataclass(frozen=True)
class Memory:
    """One memory: a document or a conversation transcript."""

    id: str
    text: str
    qa: tuple[QA, ...] = field(default_factory=tuple)
    kind: Literal["document", "conversation"] = "document"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "text": self.text, "kind": self.kind}
        if self.qa:
            out["qa"] = [{"q": x.q, "a": x.a} for x in self.qa]
        return out


def parse_memory(obj: Any, *, where: str) -> Memory:
    """Validate one decoded JSON object as a :class:`Memory`."""
    if not isinstance(obj, dict):
        raise MemorySetError(f"{where}: a memory must be a JSON object, got {type(obj).__name__}")
    mid, text = obj.get("id"), obj.get("text")
    if not isinstance(mid, str) or not mid:
        raise MemorySetError(f"{where}: field 'id' must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise MemorySetError(f"{where}: field 'text' must be a non-empty string (memory {mid!r})")
    kind = obj.get("kind", "document")
    if kind not in ("document", "conversation"):
        raise MemorySetError(f"{where}: field 'kind' must be 'document' or 'conversation', got {kind!r}")
    raw_qa = obj.get("qa", [])
    if not isinstance(raw_qa, list):
        raise MemorySetError(f"{where}: field 'qa' must be a list of {{'q': ..., 'a': ...}} objects")
    qa: list[QA] = []
    for j, item in enumerate(raw_qa):
        if not (isinstance(item, dict) and isinstance(item.get("q"), str) and isinstance(item.get("a"), str)):
            raise MemorySetError(f"{where}: qa[{j}] must be an object with string fields 'q' and 'a'")
        qa.append(QA(item["q"], item["a"]))
    unknown = set(obj) - {"id", "text", "kind", "qa"}
    if unknown:
        raise MemorySetError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: id, text, kind, qa")
    return Memory(id=mid, text=text, qa=tuple(qa), kind=kind)


def text_key(text: str) -> str:
    """The hex sha256 of a memory's text with its whitespace normalised: equal texts, equal keys."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def content_id(text: str) -> str:
    """The identity of a memory that arrived without an id: ``sha256-`` and 16 hex digits of :func:`text_key`."""
    return f"sha256-{text_key(text)[:16]}"


def parse_jsonl(text: str, *, source: str, ids_optional: bool = False) -> list[Memory]:
    """Parse JSONL memories; blank lines are skipped.

    ``ids_optional`` (the inbox): a memory without ``id`` gets :func:`content_id` of its text.
    """
    out: list[Memory] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MemorySetError(
                f"{source}:{n}: not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from exc
        if ids_optional and isinstance(obj, dict) and "id" not in obj and isinstance(obj.get("text"), str):
            obj = {**obj, "id": content_id(obj["text"])}
        out.append(parse_memory(obj, where=f"{source}:{n}"))
    return out


def resolve_uri(uri: str, *, store_uri: str | None = None) -> str:
    """A relative path is taken inside the store; anything with a scheme or absolute is kept."""
    if "://" in uri or os.path.isabs(uri) or not store_uri:
        return uri
    return f"{store_uri.rstrip('/')}/{uri}"


def read_memory_uri(uri: str, *, store_uri: str | None = None) -> list[Memory]:
    """Read a JSONL file, or every ``*.jsonl`` file of a folder (sorted by name), through fsspec."""
    full = resolve_uri(uri, store_uri=store_uri)
    try:
        fs, path = fsspec.core.url_to_fs(full)
    except (ImportError, ValueError) as exc:
        raise MemorySetError(f"memory uri {full!r}: no filesystem for it ({exc})") from exc
    try:
        if fs.isdir(path):
            files = sorted(p for p in fs.ls(path, detail=False) if str(p).endswith(".jsonl"))
            if not files:
                raise MemorySetError(f"memory uri {full!r} is a folder without *.jsonl files")
        else:
            files = [path]
        out: list[Memory] = []
        for f in files:
            with fs.open(f, "r", encoding="utf-8") as fh:
                out += parse_jsonl(fh.read(), source=str(f))
        return out
    except FileNotFoundError as exc:
        raise MemorySetError(f"memory uri {full!r} does not exist; check memory.sources[].uri") from exc
    except PermissionError as exc:
        raise MemorySetError(f"memory uri {full!r} is not readable ({exc})") from exc


def read_source(source: MemorySource, *, index: int, store_uri: str | None = None) -> list[Memory]:
    """Read one :class:`MemorySource` (uri, mounted ConfigMap key, or inline)."""
    if source.uri is not None:
        return read_memory_uri(source.uri, store_uri=store_uri)
    if source.config_map is not None:
        root = os.environ.get(CONFIGMAP_ROOT_ENV, DEFAULT_CONFIGMAP_ROOT)
        path = os.path.join(root, source.config_map.name, source.config_map.key)
        if not os.path.exists(path):
            raise MemorySetError(
                f"memory.sources[{index}].configMap {source.config_map.name}/{source.config_map.key}: "
                f"not mounted at {path}",
            )
        with open(path, encoding="utf-8") as fh:
            return parse_jsonl(fh.read(), source=path)
    if source.inline is not None:
        return [
            parse_memory({"id": f"inline-{index}-{i}", "text": t}, where=f"memory.sources[{index}].inline[{i}]")
            for i, t in enumerate(source.inline)
        ]
    raise MemorySetError(f"memory.sources[{index}]: set exactly one of uri, configMap or inline")


def load_memories(spec: MemorySpec | Sequence[MemorySource], *, store_uri: str | None = None) -> list[Memory]:
    """All memories of a spec, in source order; ids must be unique and the set non-empty."""
    sources = spec.sources if isinstance(spec, MemorySpec) else list(spec)
    out: list[Memory] = []
    for i, src in enumerate(sources):
        out += read_source(src, index=i, store_uri=store_uri)
    check_unique(out)
    if not out:
        raise MemorySetError("the memory set is empty; memory.sources must yield at least one memory")
    return out


def load_memory_uris(uris: Iterable[str], *, store_uri: str | None = None) -> list[Memory]:
    """Memories of earlier generations (replay and retention); ids need not be unique across sets."""
    out: list[Memory] = []
    for uri in uris:
        out += read_memory_uri(uri, store_uri=store_uri)
    return out


def check_unique(memories: Sequence[Memory]) -> None:
    seen: set[str] = set()
    for m in memories:
        if m.id in seen:
            raise MemorySetError(f"memory id {m.id!r} appears twice; ids must be unique within a memory set")
        seen.add(m.id)


def question_prompt(tokenizer: Any, question: str, *, context: str | None = None) -> str:
    """The prompt for ``question``, with ``context`` (a memory) in the user turn when given.

    Uses the tokenizer's chat template; the memory goes first, then a blank
    line, then the question (the format that recalled best in our probe).
    """
    content = f"{context}\n\n{question}" if context else question
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": content}],
                tokenize=False,
                add_generation_prompt=True,
            )
        )
    return f"Question: {content}\nAnswer:"
