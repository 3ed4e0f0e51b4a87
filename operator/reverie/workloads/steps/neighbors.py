"""Neighbours: a memory's own study prompts asked about a stranger, answered as the model answered before.

A slot that only ever sees a memory's questions learns their form as well as their
subject.  After a sleep of twenty people SmolLM2 answered "What instrument has black
and white keys?" with the zither one of them plays, and "Who wrote Romeo and
Juliet?" with one of their names (bench/science/RESULTS.md).  Knowledge editing
measures the same failure as *locality* on neighbourhood prompts: the edited
relation asked of other subjects (ROME, MEMIT's CounterFact).

So consolidation replays neighbours beside its general requests: for each memory,
a few of its kept study prompts that name its subject, with a stranger's name in
the subject's place ("What instrument does Helka Morvdale play?" →
"What instrument does Maria Lopez play?"), and its reverse questions with other
numbers ("Who was born in Lucerne in 1906?" → "… in 1921?").  No memory is in view; they are
answered and targeted like the general requests (by the root when
``replay.anchorGeneral``), so the new slot learns each fact on its subject's
name and leaves the same question about anyone else as it was.

Strangers are ordinary names sharing no word with any subject of the sleep.
The prompts are replay rows of this sleep only: later sleeps replay memory
items, not these (:func:`reverie.workloads.steps.replay.stored_items`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from reverie.workloads.data.memory import Memory
from reverie.workloads.data.questions import normalize_answer
from reverie.workloads.steps.selfstudy import NEIGHBOR_KIND, StudyItem, subject_of

# Ordinary full names (none famous); a neighbour takes one that shares no word with the sleep's subjects.
STRANGERS = (
    "Maria Lopez",
    "David Chen",
    "Anna Novak",
    "James Miller",
    "Fatima Khan",
    "Lucas Moreau",
    "Sofia Rossi",
    "Kenji Tanaka",
    "Olga Petrova",
    "Samuel Okafor",
    "Emma Larsen",
    "Omar Haddad",
    "Grace Kim",
    "Pablo Ortega",
    "Nina Schulz",
    "Thomas Byrne",
    "Aisha Bello",
    "Marco Conti",
    "Hannah Weiss",
    "Ravi Sharma",
    "Elena Popescu",
    "Daniel Cohen",
    "Yuki Sato",
    "Peter Nowak",
)


_NUMBER = re.compile(r"\d+")


def _words(text: str) -> set[str]:
    return set(normalize_answer(text).split())


def neighbor_prompts(
    items: Sequence[StudyItem], memories: Sequence[Memory], *, per_memory: int, seed: int
) -> list[tuple[str, str]]:
    """(memory id, prompt) pairs: up to ``per_memory`` of each memory's kept prompts, asked of someone else.

    A prompt that names the subject gets a stranger in its place; a reverse question
    ("Who … in 1951?") other numbers (:func:`_elsewhere`).  Prompts are taken one kind
    at a time (a seeded order), so a memory's neighbours vary in form; a prompt that
    still holds a word of the subject after the swap (a first name alone, say) is skipped.
    """
    if per_memory <= 0:
        return []
    subjects = {m.id: subject_of(m.text) for m in memories}
    taken = set().union(*(_words(s) for s in subjects.values() if s))
    strangers = [s for s in STRANGERS if not (_words(s) & taken)]
    if not strangers:
        return []
    out: list[tuple[str, str]] = []
    for m in memories:
        subject = subjects[m.id]
        if subject is None:
            continue
        rng = random.Random(f"{seed}:{m.id}:neighbors")
        by_kind: dict[str, list[str]] = {}
        for i in items:
            named = subject in i.prompt
            if i.memory_id != m.id or i.replay or not (named or _asks_who(i.prompt)):
                continue
            if i.prompt not in by_kind.get(i.kind, []):
                by_kind.setdefault(i.kind, []).append(i.prompt)
        for prompts in by_kind.values():
            prompts.sort()
            rng.shuffle(prompts)
        kinds = sorted(by_kind)
        rng.shuffle(kinds)
        chosen: list[str] = []
        while len(chosen) < per_memory and any(by_kind[k] for k in kinds):
            for k in kinds:
                if by_kind[k] and len(chosen) < per_memory:
                    prompt = _elsewhere(by_kind[k].pop(), subject, m.text, rng, strangers)
                    if prompt is not None and not (_words(prompt) & _words(subject)):
                        chosen.append(prompt)
        out += [(m.id, p) for p in chosen]
    return out


def _asks_who(prompt: str) -> bool:
    """A reverse question ("Who was born in Tarrow in 1951?"): its answer is the subject, its prompt has a number."""
    return prompt.startswith("Who ") and bool(_NUMBER.search(prompt))


def _elsewhere(prompt: str, subject: str, text: str, rng: random.Random, strangers: Sequence[str]) -> str | None:
    """The prompt about someone the memory does not hold: a stranger for the subject, else other numbers.

    A reverse question keeps its form with every number moved (a year by 3–30) to one the
    memory does not state, so "Who was born in Tarrow in 1951?" becomes a question whose
    answer is not the subject.
    """
    if subject in prompt:
        return prompt.replace(subject, rng.choice(strangers))
    stated = set(_NUMBER.findall(text))

    def moved(match: re.Match[str]) -> str:
        n = int(match.group())
        for _ in range(20):
            new = str(n + rng.choice((-1, 1)) * rng.randint(3, 30))
            if new not in stated and int(new) > 0:
                return new
        return str(n + 1000)

    return _NUMBER.sub(moved, prompt)


__all__ = ["NEIGHBOR_KIND", "STRANGERS", "neighbor_prompts"]
