"""A memory's facts, what carries them, and self-study's top-up of the facts its items miss."""

from __future__ import annotations

from reverie.workloads.data.facts import carries, coverage, fact_items, facts
from reverie.workloads.data.memory import Memory
from reverie.workloads.steps.selfstudy import StudyItem, fact_coverage, top_up

TEXT = "Elspeth Hollinwick was born in Cork in 1972. She works as a clockmaker and plays the cello."
NAME = "Elspeth Hollinwick"


def memory(text: str = TEXT, mid: str = "m0") -> Memory:
    return Memory(id=mid, text=text)


def test_facts_are_clauses_restated_on_the_full_name() -> None:
    assert facts(TEXT, NAME) == [
        "Elspeth Hollinwick was born in Cork in 1972.",
        "Elspeth Hollinwick works as a clockmaker.",
        "Elspeth Hollinwick plays the cello.",
    ]


def test_an_answer_carries_a_fact_with_half_its_claims_and_all_its_numbers() -> None:
    born = "Elspeth Hollinwick was born in Cork in 1972."
    assert carries("She was born in Cork in 1972 and loves tea.", born, subject=NAME)
    assert not carries("She was born in Cork.", born, subject=NAME), "the year is missing"
    assert not carries("Elspeth Hollinwick is a talented musician.", born, subject=NAME)
    assert coverage(
        ["A clockmaker born in Cork in 1972.", "She plays the cello.", "Elspeth Hollinwick is kind."],
        facts(TEXT, NAME),
        subject=NAME,
    ) == [1, 1, 1]


def test_fact_items_state_the_fact_from_both_ends() -> None:
    (k1, p1, a1), (k2, p2, a2) = fact_items("Elspeth Hollinwick was born in Cork in 1972.", NAME)
    assert (k1, k2) == ("cloze", "reverse")
    assert p1.startswith("Fill in the rest: Elspeth Hollinwick") and "Cork" not in p1
    assert p2 == "Who was born in Cork in 1972?"
    assert a1 == a2 == "Elspeth Hollinwick was born in Cork in 1972."


def test_top_up_brings_every_fact_to_the_floor_and_respects_the_held_out_filter() -> None:
    kept = [StudyItem("m0", "summary", f"Who is {NAME}?", "Elspeth Hollinwick is a clockmaker who plays the cello.")]
    assert top_up(kept, [memory()], floor=0) == []
    added = top_up(kept, [memory()], floor=2)
    # The birth fact had no item: both kinds; job and cello had one: one more each.
    assert [(i.kind, i.answer) for i in added] == [
        ("cloze", "Elspeth Hollinwick was born in Cork in 1972."),
        ("reverse", "Elspeth Hollinwick was born in Cork in 1972."),
        ("cloze", "Elspeth Hollinwick works as a clockmaker."),
        ("cloze", "Elspeth Hollinwick plays the cello."),
    ]
    assert fact_coverage([*kept, *added], [memory()]) == [2, 2, 2]
    blocked = top_up(kept, [memory()], floor=2, keep=lambda p: not p.startswith("Who"))
    assert all(i.kind == "cloze" for i in blocked), "a prompt the held-out filter drops is not added"
    assert top_up([], [memory("no name here at all.")], floor=2) == [], "no subject: nothing to ask about"
