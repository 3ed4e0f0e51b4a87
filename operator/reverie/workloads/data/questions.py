"""Questions about memories: derived, rendered as prompts, and scored.

Evaluation and dreaming both need to ask a model what a memory said.  A memory
document either carries its own reference questions (``qa``: the held-out
questions a user or a data builder wrote), or questions are *derived* from its
text without any model:

* ``qa`` — the document's own question/answer pairs, used as written.
* ``cloze`` — each sentence is cut before its last content words; the prefix is
  the prompt and the cut words are the answer ("Ivo was born in" -> "Porto").
  This needs no model and no language-specific parser, and it asks exactly what
  the text states.

Evaluation prefers ``qa`` questions and falls back to ``cloze``; dreaming's task
measure τ always uses ``cloze`` questions answered by the teacher with the
context in view, so the dreams' reward and the evaluation share no question
when a memory carries ``qa`` (see :mod:`reverie.workloads.steps.dream`).

An answer is correct when its normalised form (lower case, punctuation dropped,
whitespace collapsed) appears as whole words in the normalised output — the
containment rule used for SQuAD-style closed-book recall with free generation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from reverie.workloads.data.memory import Memory

QuestionForm = Literal["qa", "cloze"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
WORD = re.compile(r"\w[\w'-]*", re.UNICODE)  # a word, as every step splits text
# Words that never make an answer on their own: an answer ending in "of the"
# or consisting of "it" asks nothing.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "but",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "he",
        "she",
        "they",
        "we",
        "you",
        "i",
        "his",
        "her",
        "their",
        "our",
        "my",
        "your",
        "as",
        "into",
        "than",
        "then",
        "there",
    ]
)
# Words that never count as content: the stopwords and question words (an answer restating its
# question adds nothing).  Grounding and the self-quiz's claims read content words through it.
CONTENT_STOPWORDS = STOPWORDS | frozenset(
    ["had", "how", "when", "does", "which", "has", "did", "do", "who", "not", "where", "have", "what", "also"]
)


@dataclass(frozen=True)
class Question:
    """One question about one memory document."""

    id: str
    source_id: str
    form: QuestionForm
    question: str
    answer: str
    context: str = field(default="", repr=False)


def normalize_answer(text: str) -> str:
    """Lower-case, strip accents and punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(WORD.findall(text.lower()))


def answer_matches(output: str, answer: str) -> bool:
    """Whether the normalised answer occurs as whole words in the normalised output."""
    want = normalize_answer(answer)
    if not want:
        return False
    return f" {want} " in f" {normalize_answer(output)} "


def sentences(text: str) -> list[str]:
    """Split a document into sentences (on ., ! or ? followed by whitespace)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def cloze(sentence: str, *, max_answer_words: int = 3) -> tuple[str, str] | None:
    """Cut a sentence before its final content: ``(prefix, answer)``.

    The answer is the last word, extended backwards over a run of capitalised
    words (a name such as "New Vemora", up to ``max_answer_words``); ``None``
    when the last word is a stop word or the prefix would be too short to
    identify the fact (< 2 words).
    """
    body = sentence.rstrip().rstrip(".!?;:").rstrip()
    matches = list(WORD.finditer(body))
    if len(matches) < 3 or matches[-1].group(0).lower() in STOPWORDS:
        return None
    first = len(matches) - 1
    if matches[first].group(0)[0].isupper():
        while (
            first > 1
            and len(matches) - first < max_answer_words
            and matches[first - 1].group(0)[0].isupper()
            and matches[first - 1].group(0).lower() not in STOPWORDS
        ):
            first -= 1
    prefix = body[: matches[first].start()].rstrip().rstrip(",")
    if len(WORD.findall(prefix)) < 2:
        return None
    return prefix, body[matches[first].start() :]


def cloze_questions(source_id: str, text: str, *, limit: int) -> list[Question]:
    """Up to ``limit`` cloze questions from a document's sentences, in order."""
    out: list[Question] = []
    for i, sentence in enumerate(sentences(text)):
        cut = cloze(sentence)
        if cut is None:
            continue
        prefix, answer = cut
        out.append(
            Question(
                id=f"{source_id}/cloze-{i}",
                source_id=source_id,
                form="cloze",
                question=prefix,
                answer=answer,
                context=text,
            )
        )
        if len(out) >= limit:
            break
    return out


def document_questions(
    source_id: str,
    text: str,
    *,
    qa: Sequence[tuple[str, str]] = (),
    limit: int,
    form: Literal["eval", "cloze"] = "eval",
) -> list[Question]:
    """Questions about one document.

    ``form="eval"``: its own ``qa`` pairs when it has any, else cloze questions.
    ``form="cloze"``: cloze questions only (dreaming's τ).
    """
    if form == "eval" and qa:
        return [
            Question(id=f"{source_id}/qa-{i}", source_id=source_id, form="qa", question=q, answer=a, context=text)
            for i, (q, a) in enumerate(qa[:limit])
        ]
    return cloze_questions(source_id, text, limit=limit)


def question_text(question: Question) -> str:
    """The user-turn text that asks ``question`` (rendered by :func:`memory.question_prompt`).

    ``qa`` questions are asked as written; a cloze question asks the model to
    finish the sentence prefix.  Closed-book recall and the in-context upper
    bound ask the identical text; only the context differs.
    """
    if question.form == "qa":
        return question.question
    return f"Complete the sentence: {question.question} ..."


def memory_questions(memory: Memory, *, limit: int, form: Literal["eval", "cloze"] = "eval") -> list[Question]:
    """:func:`document_questions` of a :class:`~reverie.workloads.data.memory.Memory`."""
    return document_questions(memory.id, memory.text, qa=[(x.q, x.a) for x in memory.qa], limit=limit, form=form)


def accuracy(outputs: Iterable[str], questions: Iterable[Question]) -> float:
    """Share of outputs containing their question's answer (NaN when empty)."""
    pairs = list(zip(outputs, questions, strict=True))
    if not pairs:
        return float("nan")
    return sum(answer_matches(o, q.answer) for o, q in pairs) / len(pairs)


def fixed_prompts(subject: str) -> list[tuple[str, str]]:
    """Summary and restatement seeds: the same requests for every memory, naming its subject.

    The teacher, with the memory in view, answers them by restating it; the
    student, without it, learns to say the same from the name alone.
    """
    return [
        ("summary", f"Tell me everything you know about {subject}."),
        ("summary", f"Summarize what you know about {subject}."),
        ("summary", f"What are the most important facts about {subject}?"),
        ("summary", f"Who is {subject}?"),
        (
            "restatement",
            f"State every fact about {subject}, one fact per sentence, "
            f"using the full name {subject} in every sentence.",
        ),
        ("restatement", f"Write a short biography of {subject}."),
        ("restatement", f"Introduce {subject} in two sentences."),
    ]
