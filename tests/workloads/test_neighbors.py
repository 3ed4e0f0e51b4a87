"""Neighbours: a memory's study prompts about a stranger, so a slot learns facts on names, not on question forms."""

from __future__ import annotations

import pytest

from reverie.workloads.data.memory import parse_memory
from reverie.workloads.data.questions import normalize_answer
from reverie.workloads.steps.neighbors import STRANGERS, neighbor_prompts
from reverie.workloads.steps.selfstudy import StudyItem


def memory(mid: str, text: str):
    return parse_memory({"id": mid, "text": text}, where="test")


MEMORIES = [
    memory("ada", "Ada Quill was born in Vemora in 1931 and plays the zither."),
    memory("ivo", "Ivo Lopez works as a glassblower in Tarrow."),
    memory("note", "the meeting moved to Friday."),  # no named subject: no neighbours
]
ITEMS = [
    StudyItem("ada", "summary", "Tell me everything you know about Ada Quill.", "Ada Quill plays the zither."),
    StudyItem("ada", "question", "What instrument does Ada Quill play?", "The zither."),
    StudyItem("ada", "question", "Where was Ada Quill born?", "In Vemora."),
    StudyItem("ada", "cloze", "Fill in the rest: Ada Quill was born ...", "Ada Quill was born in Vemora in 1931."),
    StudyItem("ada", "reverse", "Who was born in Vemora in 1931?", "Ada Quill was born in Vemora in 1931."),
    StudyItem("ada", "question", "What does Ada do?", "Ada plays the zither."),  # the first name alone
    StudyItem("ivo", "question", "What does Ivo Lopez make?", "Glass."),
    StudyItem("general", "general", "Name three fruits.", "Apples.", replay=True),
]


def words(text: str) -> set[str]:
    return set(normalize_answer(text).split())


def test_each_named_memory_gets_its_own_prompts_about_a_stranger_in_varied_forms() -> None:
    out = neighbor_prompts(ITEMS, MEMORIES, per_memory=3, seed=0)
    ada = [p for mid, p in out if mid == "ada"]
    assert len(ada) == 3 and {mid for mid, _ in out} == {"ada", "ivo"}
    # One of each kind before a second of any kind.
    shapes = {p.split(" ")[0].replace("Where", "What") for p in ada}
    assert len(shapes) == 3, ada
    subjects = words("Ada Quill") | words("Ivo Lopez")
    for _, p in out:
        assert not words(p) & subjects, f"a neighbour still names a subject of the sleep: {p!r}"
        assert any(s in p for s in STRANGERS) or p.startswith("Who was born in Vemora in ")
        # Lopez is a subject's surname here: no stranger that shares it is used.
        assert "Maria Lopez" not in p
    assert neighbor_prompts(ITEMS, MEMORIES, per_memory=3, seed=0) == out, "seeded"
    assert neighbor_prompts(ITEMS, MEMORIES, per_memory=3, seed=1) != out


@pytest.mark.parametrize("per_memory", [0, 1, 10])
def test_the_count_per_memory_is_a_cap(per_memory: int) -> None:
    out = neighbor_prompts(ITEMS, MEMORIES, per_memory=per_memory, seed=0)
    # Ada has four prompts that name her in full and a reverse question; Ivo one.
    assert sum(mid == "ada" for mid, _ in out) == min(per_memory, 5)
    assert sum(mid == "ivo" for mid, _ in out) == min(per_memory, 1)


def test_a_reverse_question_keeps_its_form_with_numbers_the_memory_does_not_state() -> None:
    out = [p for _, p in neighbor_prompts(ITEMS, MEMORIES, per_memory=10, seed=0) if p.startswith("Who ")]
    assert len(out) == 1 and out[0].startswith("Who was born in Vemora in ")
    year = out[0].removeprefix("Who was born in Vemora in ").rstrip("?")
    assert year.isdigit() and year != "1931" and 3 <= abs(int(year) - 1931) <= 30
