"""``builtin:people``: each sleep of a lineage meets new fictional people, written once into the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reverie.local.builtin_people import PEOPLE_PER_SESSION, is_builtin_people, session_people
from reverie.workloads.data.memory import parse_memory


def _people(uri: str) -> list[dict]:
    return [json.loads(line) for line in Path(uri).read_text().splitlines()]


def test_each_session_has_new_people_with_held_out_questions(tmp_path: Path) -> None:
    first, second = session_people(str(tmp_path), "lin", 1), session_people(str(tmp_path), "lin", 2)
    assert first.endswith("lin/memories/people-1.jsonl") and second.endswith("people-2.jsonl")
    a, b = _people(first), _people(second)
    assert len(a) == len(b) == PEOPLE_PER_SESSION
    names = lambda rs: {r["text"].split(" was born")[0] for r in rs}  # noqa: E731
    assert not names(a) & names(b), "no person is met twice"
    for record in a:
        memory = parse_memory(record, where="t")
        assert len(memory.qa) == 12 and all(qa.q not in memory.text for qa in memory.qa)


def test_a_session_is_written_once_and_read_back_unchanged(tmp_path: Path) -> None:
    uri = session_people(str(tmp_path), "lin", 1)
    Path(uri).write_text(Path(uri).read_text().replace("born", "BORN"))  # what a person edited stays
    assert session_people(str(tmp_path), "lin", 1) == uri and "BORN" in Path(uri).read_text()
    assert not list(Path(uri).parent.glob(".*.tmp")), "no temporary file left behind"


def test_the_uri_and_session_numbers() -> None:
    assert (
        is_builtin_people(" builtin:people ") and not is_builtin_people("builtin:tiny") and not is_builtin_people(None)
    )
    with pytest.raises(ValueError, match="start at 1"):
        session_people("/tmp/x", "lin", 0)
