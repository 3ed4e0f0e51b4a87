"""``reverie ask``: put questions to a lineage's champion, and with ``--compare``
to its base generation and to the memory-in-context teacher.

The three answer the way evaluation asks (greedy, :func:`question_prompt`), so
what a person sees here is what the gate scored:

* **champion** — the generation that serves now (base + every slot);
* **base** — the champion's root generation (``gen-0``), the model before any sleep;
* **teacher** — the base with a memory of the champion's sleeps in context: the
  upper bound consolidation distils from.  The teacher sees one memory per
  question (small chunks recall far better than the whole buffer), the one
  sharing the most words with the question.

:func:`ask_targets` reads which generations and memories those are from a
ModelLineage (a local run's or a cluster's); :func:`ask` loads and asks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reverie.api.lineage import ModelLineage
from reverie.core.lineage import ancestry, held_memory_uris
from reverie.workloads.data.memory import Memory, MemorySetError, load_memory_uris, question_prompt
from reverie.workloads.ml.sampling import HFBackend, SamplingBackend
from reverie.workloads.store.modelio import load_generation

_WORD = re.compile(r"[a-z0-9]+")
# Words that say nothing about which memory a question is about.
_STOP = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "at",
        "be",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "he",
        "her",
        "his",
        "how",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "she",
        "the",
        "their",
        "they",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "you",
        "your",
    }
)


class AskError(ValueError):
    """The lineage has nothing to ask, or a model or memory cannot be read; the message says why."""


@dataclass(frozen=True)
class AskTargets:
    """What ``reverie ask`` loads: (generation name, URI) pairs and the memories of the champion's sleeps."""

    champion: tuple[str, str]
    base: tuple[str, str]
    memory_uris: list[str] = field(default_factory=list)


def ask_targets(lineage: ModelLineage) -> AskTargets:
    """The champion, its root generation and the memories it holds (the base's known ones, then every sleep's)."""
    status = lineage.status
    if status.champion is None or status.champion_uri is None:
        raise AskError(f"lineage {lineage.metadata.name} has no champion yet; run a sleep first")
    chain = ancestry(status, status.champion)
    root = chain[0] if chain and chain[0].parent is None else None
    base = (root.name, root.uri) if root is not None else ("base", lineage.spec.base_model.uri)
    memories = held_memory_uris(lineage, status.champion)
    return AskTargets(champion=(status.champion, status.champion_uri), base=base, memory_uris=memories)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def pick_memory(question: str, memories: Sequence[Memory]) -> Memory | None:
    """The memory sharing the most words with ``question`` (the first on ties); None if none shares any."""
    words = _words(question)
    best, score = None, 0
    for memory in memories:
        overlap = len(words & _words(memory.text))
        if overlap > score:
            best, score = memory, overlap
    return best


def greedy_answers(
    backend: SamplingBackend,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    contexts: Sequence[str | None] | None = None,
    adapters: Sequence[str] | None = None,
    max_new_tokens: int = 48,
) -> list[str]:
    """Greedy answers to ``questions`` in the one prompt format every step uses, closed book unless ``contexts``.

    ``adapters`` picks the slots that answer (None: those active).  The one way
    the product asks a model a question: evaluation, consolidation's recall
    check, dreaming's self-quiz and ``reverie ask`` all come here.
    """
    if not questions:
        return []
    ctx = list(contexts) if contexts is not None else [None] * len(questions)
    prompts = [question_prompt(tokenizer, q, context=c) for q, c in zip(questions, ctx, strict=True)]
    out = backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, seed=0, adapters=adapters)
    return [t.strip() for t in out.texts]


def answers(
    uri: str, questions: Sequence[str], *, contexts: Sequence[str | None] | None = None, max_new_tokens: int = 48
) -> list[str]:
    """Greedy answers of the generation at ``uri`` (every slot active), as evaluation asks."""

    gen = load_generation(uri)
    backend = HFBackend(gen.model, gen.tokenizer)
    return greedy_answers(backend, gen.tokenizer, questions, contexts=contexts, max_new_tokens=max_new_tokens)


@dataclass
class Column:
    """One model's answers, for the table."""

    title: str
    answers: list[str]
    notes: list[str] = field(default_factory=list)


def ask(
    targets: AskTargets,
    questions: Sequence[str],
    *,
    compare: bool = False,
    max_new_tokens: int = 48,
    store_uri: str | None = None,
) -> list[Column]:
    """Ask the champion (and, with ``compare``, the base and the teacher) every question."""

    name, uri = targets.champion
    if compare and not targets.memory_uris:
        raise AskError(
            f"the champion {name} has had no sleep yet, so there are no memories to put in the teacher's "
            "context; ask without --compare"
        )
    columns = [Column(f"champion ({name})", answers(uri, questions, max_new_tokens=max_new_tokens))]
    if not compare:
        return columns
    base_name, base_uri = targets.base
    columns.append(Column(f"base ({base_name})", answers(base_uri, questions, max_new_tokens=max_new_tokens)))
    try:
        memories = load_memory_uris(targets.memory_uris, store_uri=store_uri)
    except MemorySetError as exc:
        raise AskError(f"the teacher needs the memories of the champion's sleeps: {exc}") from exc
    picked = [pick_memory(q, memories) for q in questions]
    teacher = answers(
        base_uri, questions, contexts=[m.text if m else None for m in picked], max_new_tokens=max_new_tokens
    )
    notes = [f"memory {m.id}" if m else "no memory shares a word with the question" for m in picked]
    columns.append(Column(f"teacher ({base_name} + memory in context)", teacher, notes))
    return columns
