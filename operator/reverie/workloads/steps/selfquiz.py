"""The self-quiz: what a slept model still gets wrong about its memories, found with no label.

After consolidation the model is asked fresh questions about each memory — the
self-study kinds, written by the teacher with the memory in view, plus one
recital ("Tell me everything you know about X") — and answers them *closed
book* with the candidate slots.  The teacher (the model before this sleep,
reading the memory) answers the same questions.  The reward of an answer is its
agreement with the teacher's on the memory's grounded spans::

    claims(a)   = numbers, names and content words of a (normalised; stopwords
                  and the subject's own name left out)
    reward(c,t) = F1(claims(c), claims(t))       ∈ [0, 1]

No evaluation question is involved (the held-out filter drops any that a writer
happens to produce) and no label: the reference is the model's own reading.
An answer that names another memory's town or year scores low — the confusions
between the memories of one sleep that dominate a 135M model's errors — and so
does a blank.

A *fact* is a sentence of the memory.  The facts a wrong answer missed (they
hold a span of the teacher's answer the candidate did not state) are the
candidate's error pattern; the memory whose spans it stated instead is what it
confused the fact with.  :mod:`reverie.workloads.steps.dream` builds its
curriculum from these: other phrasings, the reverse direction, the blank over
the fact's sentence and a contrast with the confused memory
(:func:`reverse_item`, :func:`cloze_item`, :func:`contrast_item`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from reverie.workloads.data.facts import claims, name_words, with_name
from reverie.workloads.data.memory import Memory
from reverie.workloads.data.questions import fixed_prompts, normalize_answer, sentences
from reverie.workloads.ml.ask import greedy_answers
from reverie.workloads.ml.sampling import SamplingBackend
from reverie.workloads.steps.selfstudy import grounded, subject_of, written_questions

RECITAL = "recital"


@dataclass(frozen=True)
class QuizItem:
    """One self-quiz question about a memory and the teacher's answer to it (the reference)."""

    memory_id: str
    kind: str  # recital | question | use_case
    prompt: str
    reference: str
    replay: bool = False  # a memory of an earlier sleep (rehearsal)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> QuizItem:
        return cls(**raw)


def agreement(candidate: str, reference: str, *, subject: str | None = None) -> float:
    """The reward: F1 between the candidate's claims and the reference's (1.0 when the reference claims nothing)."""
    want, said = claims(reference, subject=subject), claims(candidate, subject=subject)
    if not want:
        return 1.0
    hit = len(want & said)
    if not hit:
        return 0.0
    precision, recall = hit / len(said), hit / len(want)
    return 2 * precision * recall / (precision + recall)


def missed_facts(candidate: str, reference: str, memory: Memory, *, subject: str | None = None) -> list[str]:
    """The memory's sentences holding a span of the reference the candidate did not state, most missed first."""
    missed = claims(reference, subject=subject) - claims(candidate, subject=subject)
    scored = [(len(missed & claims(s, subject=subject)), i, s) for i, s in enumerate(sentences(memory.text))]
    return [s for n, _, s in sorted(scored, key=lambda x: (-x[0], x[1])) if n]


def confused_with(candidate: str, memory: Memory, others: Sequence[Memory]) -> Memory | None:
    """The other memory whose spans the candidate stated instead of this one's (most such spans; None if none)."""
    own = claims(memory.text)
    stray = claims(candidate) - own
    best: tuple[int, Memory] | None = None
    for other in others:
        if other.id == memory.id:
            continue
        n = len(stray & claims(other.text, subject=subject_of(other.text)))
        if n and (best is None or n > best[0]):
            best = (n, other)
    return best[1] if best else None


# ----------------------------------------------------------------------------- curriculum items


def contrast_item(sentence: str, subject: str, other: Memory) -> tuple[str, str] | None:
    """A contrast with the memory the fact was confused with: both facts, each on its own name."""
    other_subject = subject_of(other.text)
    if not other_subject:
        return None
    # The other memory's sentence on the same attribute: the most words in common with this one.
    words = set(normalize_answer(sentence).split()) - name_words(subject)
    theirs = sorted(
        ((len(words & set(normalize_answer(s).split())), i, s) for i, s in enumerate(sentences(other.text))),
        key=lambda x: (-x[0], x[1]),
    )
    if not theirs:
        return None
    return (
        f"Do not mix up {subject} and {other_subject}. What is true of each?",
        f"{with_name(sentence, subject)} {with_name(theirs[0][2], other_subject)}",
    )


# ----------------------------------------------------------------------------- writing and answering


def write_quiz(
    backend: SamplingBackend,
    tokenizer: Any,
    memories: Sequence[Memory],
    *,
    replay_ids: frozenset[str] = frozenset(),
    teacher: Sequence[str],
    questions_per_memory: int,
    seed: int,
    max_new_tokens: int,
    keep: Callable[[str], bool] = lambda _p: True,
) -> list[QuizItem]:
    """The quiz: per memory a recital and up to ``questions_per_memory`` written questions, the teacher's answers.

    Questions are written by the teacher with the memory in view (sampled, on a
    seed stream of their own: not consolidation's self-study prompts) and
    answered by it greedily, memory in view; an answer that is not grounded in
    the memory is dropped, except the recital's, which falls back to the memory
    itself (a tiny model cannot read its context; a real one rarely needs this).
    ``keep(prompt)`` is the held-out filter.
    """
    subjects = {m.id: subject_of(m.text) for m in memories}
    named = [m for m in memories if subjects[m.id]]
    written = written_questions(
        backend,
        tokenizer,
        named,
        per_memory=questions_per_memory,
        seed=seed * 1_000_003 + 29,
        adapters=teacher,
    )
    asks = [(m, RECITAL, fixed_prompts(subjects[m.id] or "")[0][1]) for m in named]
    asks += [(m, kind, q) for m in named for kind, q in written[m.id]]
    seen: set[tuple[str, str]] = set()
    unique: list[tuple[Memory, str, str]] = []
    for m, kind, p in asks:
        key = (m.id, normalize_answer(p))
        if key not in seen and keep(p):
            seen.add(key)
            unique.append((m, kind, p))
    asks = unique
    answers = greedy_answers(
        backend,
        tokenizer,
        [p for _, _, p in asks],
        contexts=[m.text for m, _, _ in asks],
        adapters=teacher,
        max_new_tokens=max_new_tokens,
    )
    out: list[QuizItem] = []
    for (m, kind, p), a in zip(asks, answers, strict=True):
        if not grounded(a, m.text, subject=subjects[m.id]):
            if kind != RECITAL:
                continue
            a = m.text
        out.append(QuizItem(memory_id=m.id, kind=kind, prompt=p, reference=a, replay=m.id in replay_ids))
    return out
