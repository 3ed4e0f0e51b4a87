"""Held-out evaluation: the questions a cycle is scored on never reach its training inputs.

A memory's ``qa`` pairs (or, without them, the cloze questions derived from its
text) are *evaluation probes*: the evaluation phase asks them closed-book
(``knowledge_incorporation``) and, for earlier generations' memories, as
``retention``.  Consolidation and dreaming learn from the memory text alone —
through prompts the teacher writes itself — and must never train on a probe:
a number scored on trained prompts measures recitation, not knowledge.

:class:`HeldOut` is the one check both use: it knows every probe of a memory set
(exactly the items :mod:`reverie.workloads.steps.evaluate` builds) and says whether a
training text contains one, as whole words after normalisation.  Consolidation
drops such prompts; the tests assemble every training input of a cycle and
assert :meth:`HeldOut.leaks` finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reverie.workloads.data.memory import Memory
from reverie.workloads.data.questions import Question, memory_questions, normalize_answer, question_text


def evaluation_probes(memories: Sequence[Memory], *, questions_per_memory: int) -> list[Question]:
    """The questions evaluation may ask about ``memories``: every ``qa`` pair, else their cloze questions.

    All ``qa`` pairs are held out, not only the first ``questions_per_memory``
    the evaluation samples: a user who raises the limit must not find trained probes.
    """
    return [q for m in memories for q in memory_questions(m, limit=max(questions_per_memory, len(m.qa)))]


def probe_forms(q: Question) -> list[str]:
    """The normalised texts whose presence in a training input leaks ``q``.

    The question as asked, and its answer-bearing form (the question followed by
    its answer, as a QA-formatted training text would carry it).
    """
    asked = normalize_answer(question_text(q))
    return [f for f in (asked, normalize_answer(f"{question_text(q)} {q.answer}")) if f]


@dataclass
class HeldOut:
    """The evaluation probes of a cycle, for filtering and checking training inputs."""

    probes: list[Question]

    @classmethod
    def of(cls, memories: Iterable[Memory], *, questions_per_memory: int) -> HeldOut:
        return cls(evaluation_probes(list(memories), questions_per_memory=questions_per_memory))

    def hits(self, text: str) -> list[Question]:
        """Probes whose question (or question + answer) occurs in ``text``."""
        padded = f" {normalize_answer(text)} "
        return [q for q in self.probes if any(f" {f} " in padded for f in probe_forms(q))]

    def allows(self, text: str) -> bool:
        return not self.hits(text)

    def leaks(self, texts: Iterable[str]) -> list[tuple[str, Question]]:
        """Every (training text, probe) pair where the text contains the probe."""
        return [(t, q) for t in texts for q in self.hits(t)]
