"""A memory's facts, and the items that state one fact each.

A *fact* is a clause of a memory's sentence, restated on the memory's subject:
"Ivo Oddwyn was born in Tarrow in 1951 and works as a glassblower." holds two,
"Ivo Oddwyn was born in Tarrow in 1951." and "Ivo Oddwyn works as a glassblower."
(a pronoun becomes the full name: a fact is stored on the name).  An answer
*carries* a fact when it states at least half of the fact's claims — its
numbers, names and content words, the subject left out — and every one of its
numbers (:func:`carries`).

Consolidation's self-study counts the items that carry each fact and tops up
the facts below a floor with items built from the fact itself
(:func:`fact_items`: the blank over it, the reverse direction); dreaming's
self-quiz builds the same kinds at the facts a slept model gets wrong.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from reverie.workloads.data.questions import STOPWORDS, normalize_answer, sentences

_PRONOUNS = ("he ", "she ", "they ", "it ")
_CLAUSE = re.compile(
    r",?\s+and\s+(?=(?:he|she|they|it|is|was|works|plays|lives|has|had|speaks|studied|owns|keeps|moved)\b)", re.I
)


def name_words(subject: str | None) -> set[str]:
    return set(normalize_answer(subject or "").split())


def claims(text: str, *, subject: str | None = None) -> set[str]:
    """The spans an answer commits to: numbers, names and content words, without the subject's name."""
    words = {w for w in normalize_answer(text).split() if (w.isdigit() or len(w) >= 3) and w not in STOPWORDS}
    return words - name_words(subject)


def _predicate(sentence: str, subject: str) -> str | None:
    """The sentence without its subject ("Ivo Oddwyn was born in Tarrow." → "was born in Tarrow"), if it starts so."""
    s = sentence.strip().rstrip(".!?").strip()
    low = s.lower()
    for head in (subject.lower() + " ", *_PRONOUNS):
        if low.startswith(head):
            rest = s[len(head) :].strip()
            return rest if len(rest.split()) >= 2 else None
    return None


def with_name(sentence: str, subject: str) -> str:
    """The sentence with a leading pronoun replaced by the full name (the fact is stored on the name)."""
    pred = _predicate(sentence, subject)
    return f"{subject} {pred}." if pred else sentence.strip()


def reverse_item(sentence: str, subject: str) -> tuple[str, str] | None:
    """The reverse direction: "Who was born in Tarrow in 1942?" → the sentence, with the full name."""
    pred = _predicate(sentence, subject)
    return (f"Who {pred}?", f"{subject} {pred}.") if pred else None


def cloze_item(sentence: str, subject: str) -> tuple[str, str] | None:
    """The blank over the fact's sentence: its first half to complete, the whole sentence as the answer."""
    full = with_name(sentence, subject)
    words = full.rstrip(".!?").split()
    if len(words) < 4:
        return None
    cut = max(len(subject.split()) + 1, len(words) // 2)
    return f"Fill in the rest: {' '.join(words[:cut])} ...", full


def facts(text: str, subject: str | None) -> list[str]:
    """The memory's facts: each sentence split into clauses, each clause on the subject's full name."""
    out: list[str] = []
    for sentence in sentences(text):
        parts = _CLAUSE.split(sentence.strip().rstrip(".!?"))
        for i, part in enumerate(p.strip() for p in parts):
            if not part:
                continue
            if subject and i > 0 and not part.lower().startswith((*_PRONOUNS, subject.lower())):
                part = f"{subject} {part}"
            out.append(with_name(part + ".", subject) if subject else part + ".")
    return out


def carries(answer: str, fact: str, *, subject: str | None = None) -> bool:
    """Whether ``answer`` states ``fact``: half its claims or more, and all of its numbers."""
    want = claims(fact, subject=subject)
    if not want:
        return False
    said = claims(answer, subject=subject)
    numbers = {w for w in want if w.isdigit()}
    return numbers <= said and 2 * len(want & said) >= len(want)


def coverage(answers: Sequence[str], fact_list: Sequence[str], *, subject: str | None = None) -> list[int]:
    """For each fact, how many of ``answers`` carry it."""
    return [sum(carries(a, f, subject=subject) for a in answers) for f in fact_list]


def fact_items(fact: str, subject: str) -> list[tuple[str, str, str]]:
    """``(kind, prompt, answer)`` items that state ``fact``: the blank over it, then the reverse direction."""
    out = []
    for kind, item in (("cloze", cloze_item(fact, subject)), ("reverse", reverse_item(fact, subject))):
        if item is not None:
            out.append((kind, *item))
    return out
