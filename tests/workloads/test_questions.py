"""Deriving questions from memories, and scoring answers by containment."""

from __future__ import annotations

import pytest

from reverie.workloads.data.memory import QA, Memory
from reverie.workloads.data.questions import (
    answer_matches,
    cloze,
    memory_questions,
    normalize_answer,
    question_text,
    sentences,
)


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Zorblat lives in Vemora.", ("Zorblat lives in", "Vemora")),
        ("Ivo Oddwyn was born in Porto in 1916.", ("Ivo Oddwyn was born in Porto in", "1916")),
        ("They moved to New Vemora", ("They moved to", "New Vemora")),
    ],
)
def test_cloze_cuts_the_trailing_content_words(sentence: str, expected: tuple[str, str]) -> None:
    assert cloze(sentence) == expected


@pytest.mark.parametrize("sentence", ["It is.", "Go home.", "It was in the"])
def test_cloze_refuses_sentences_that_ask_nothing(sentence: str) -> None:
    assert cloze(sentence) is None


def test_sentences_split_on_terminal_punctuation() -> None:
    assert sentences("A b c. D e f! G h?  ") == ["A b c.", "D e f!", "G h?"]


def test_answer_matches_whole_normalised_words_only() -> None:
    assert answer_matches("She lives in VEMORA, I think.", "Vemora")
    assert answer_matches("carbon  dioxide!", "Carbon dioxide")
    assert not answer_matches("Vemorabad", "Vemora")
    assert not answer_matches("anything", "")
    assert normalize_answer("Café  Noël!") == "cafe noel"


def test_memory_with_reference_questions_is_asked_those() -> None:
    mem = Memory(
        id="m0",
        text="Zorblat lives in Vemora. Zorblat has a pet named Rho.",
        qa=(QA("Where does Zorblat live?", "Vemora"), QA("Pet?", "Rho")),
    )
    qs = memory_questions(mem, limit=1)
    assert [(q.form, q.question, q.answer) for q in qs] == [("qa", "Where does Zorblat live?", "Vemora")]
    assert question_text(qs[0]) == "Where does Zorblat live?"
    assert qs[0].context == mem.text


def test_cloze_form_ignores_reference_questions_so_dreaming_never_sees_them() -> None:
    mem = Memory(
        id="m0",
        text="Zorblat lives in Vemora. Zorblat has a pet named Rho.",
        qa=(QA("Where does Zorblat live?", "Vemora"),),
    )
    qs = memory_questions(mem, limit=5, form="cloze")
    assert [(q.question, q.answer) for q in qs] == [("Zorblat lives in", "Vemora"), ("Zorblat has a pet named", "Rho")]
    assert all(q.form == "cloze" for q in qs)
    assert question_text(qs[0]).startswith("Complete the sentence: Zorblat lives in")


def test_memory_without_reference_questions_falls_back_to_cloze() -> None:
    qs = memory_questions(Memory(id="x", text="Quellia is ruled by Ormund. Ok."), limit=3)
    assert [(q.id, q.answer) for q in qs] == [("x/cloze-0", "Ormund")]
