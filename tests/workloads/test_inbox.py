"""The memory inbox: identity and duplicates, what is new to the ancestry, the fixed set, `remember`'s validation."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reverie.workloads.data.inbox import ParsedFiles, RememberError, new_memories, read_inbox, remember, take
from reverie.workloads.data.memory import content_id

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def drop(inbox: Path, name: str, records: list[dict[str, object]], *, mtime: float) -> Path:
    """A file dropped into the inbox by anything, arrived at ``mtime``."""
    inbox.mkdir(parents=True, exist_ok=True)
    path = inbox / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.utime(path, (mtime, mtime))
    return path


def slept_file(tmp_path: Path, records: list[dict[str, object]]) -> str:
    path = tmp_path / "ancestry" / "memories.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_the_same_text_arriving_twice_without_ids_is_one_memory(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop(inbox, "a.jsonl", [{"text": "Mira   Okafor lives in Cork."}], mtime=1000)
    drop(inbox, "b.jsonl", [{"text": "Mira Okafor lives in Cork."}, {"text": "Ilse Brand keeps bees."}], mtime=2000)
    new, problems = new_memories(str(inbox), [], limit=10)
    assert problems == []
    assert [a.memory.text for a in new.taken] == ["Mira   Okafor lives in Cork.", "Ilse Brand keeps bees."]
    assert new.taken[1].memory.id == content_id("Ilse Brand keeps bees.")


def test_an_id_seen_before_is_a_duplicate_even_with_other_text(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop(inbox, "a.jsonl", [{"id": "m1", "text": "first"}], mtime=1000)
    drop(inbox, "b.jsonl", [{"id": "m1", "text": "second"}], mtime=2000)
    new, _ = new_memories(str(inbox), [], limit=10)
    assert [a.memory.text for a in new.taken] == ["first"]


def test_what_the_ancestry_slept_on_is_not_new_by_id_or_by_text(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop(
        inbox,
        "a.jsonl",
        [{"id": "old-1", "text": "x"}, {"text": "Already consolidated text."}, {"text": "Fresh."}],
        mtime=1000,
    )
    slept = slept_file(tmp_path, [{"id": "old-1", "text": "x"}, {"id": "other", "text": "Already consolidated text."}])
    new, _ = new_memories(str(inbox), [slept, str(tmp_path / "missing.jsonl")], limit=10)
    assert [a.memory.text for a in new.taken] == ["Fresh."]


def test_oldest_files_are_taken_first_up_to_the_limit(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    # Arrival time, not the name, decides the order.
    drop(inbox, "z-early.jsonl", [{"text": "one"}, {"text": "two"}], mtime=1000)
    drop(inbox, "a-late.jsonl", [{"text": "three"}], mtime=3000)
    new, _ = new_memories(str(inbox), [], limit=2)
    assert [a.memory.text for a in new.taken] == ["one", "two"]
    assert [a.memory.text for a in new.waiting] == ["three"] and new.count == 3
    assert new.oldest == datetime.fromtimestamp(1000, UTC)


def test_a_missing_inbox_is_empty(tmp_path: Path) -> None:
    new, problems = new_memories(str(tmp_path / "nowhere"), [], limit=5)
    assert new.count == 0 and new.oldest is None and problems == []


def test_a_malformed_file_dropped_by_hand_is_skipped_and_reported(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop(inbox, "good.jsonl", [{"text": "ok"}], mtime=1000)
    (inbox / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    contents = read_inbox(str(inbox))
    assert [a.memory.text for a in contents.arrivals] == ["ok"]
    assert len(contents.problems) == 1 and "bad.jsonl:2" in contents.problems[0]


def test_a_taken_set_is_fixed_once_written(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    set_uri = str(tmp_path / "lin" / "c1" / "inbox-memories.jsonl")
    ledger = str(tmp_path / "lin" / "c1" / "inbox-slept.jsonl")
    drop(inbox, "a.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "three"}], mtime=1000)
    first = take(inbox_uri=str(inbox), slept_uris=[], limit=2, set_uri=set_uri, ledger_uri=ledger, now=T0)
    assert (first.count, first.waiting, first.uri) == (2, 1, set_uri)
    drop(inbox, "b.jsonl", [{"text": "four"}], mtime=500)  # an even older file arrives later
    again = take(inbox_uri=str(inbox), slept_uris=[], limit=2, set_uri=set_uri, ledger_uri=ledger, now=T0)
    assert (again.count, again.content_hash) == (2, first.content_hash)
    assert again.waiting == 2  # three, and four
    texts = [json.loads(line)["text"] for line in Path(set_uri).read_text().splitlines()]
    assert texts == ["one", "two"]


def test_the_slept_ledger_remembers_past_the_ancestry_in_status(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"

    def sleep(cycle: str, slept: list[str]) -> list[str]:
        set_uri, ledger = (str(tmp_path / cycle / name) for name in ("inbox-memories.jsonl", "inbox-slept.jsonl"))
        take(inbox_uri=str(inbox), slept_uris=slept, limit=10, set_uri=set_uri, ledger_uri=ledger, now=T0)
        return [json.loads(line)["text"] for line in Path(set_uri).read_text().splitlines()]

    drop(inbox, "1.jsonl", [{"text": "one"}], mtime=1000)
    assert sleep("c1", []) == ["one"]
    drop(inbox, "2.jsonl", [{"text": "two"}], mtime=2000)
    assert sleep("c2", [str(tmp_path / "c1" / "inbox-slept.jsonl")]) == ["two"]
    drop(inbox, "3.jsonl", [{"text": "three"}], mtime=3000)
    # c1's generation has left status.generations: only c2's ledger is named, and it still knows "one".
    assert sleep("c3", [str(tmp_path / "c2" / "inbox-slept.jsonl")]) == ["three"]


def test_remember_writes_each_file_whole_into_the_inbox(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    a = tmp_path / "a.jsonl"
    a.write_text('{"text": "Mira keeps goats."}\n\n{"id": "q1", "text": "Ilse", "qa": [{"q": "Who?", "a": "Ilse"}]}\n')
    b = tmp_path / "b.jsonl"
    b.write_text('{"text": "Tomas sails."}\n')
    written = remember(str(inbox), [a, b], now=T0)
    assert [count for _, count in written] == [2, 1]
    names = sorted(p.name for p in inbox.iterdir())
    assert [Path(uri).name for uri, _ in written] == names and names[0].startswith("20261201T020000000000Z-000-")
    contents = read_inbox(str(inbox))
    assert [m.memory.id for m in contents.arrivals] == [
        content_id("Mira keeps goats."),
        "q1",
        content_id("Tomas sails."),
    ]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"id": "x"}', "bad.jsonl:2: field 'text' must be a non-empty string"),
        ("{not json", "bad.jsonl:2: not valid JSON"),
        ('{"text": "t", "kind": "poem"}', "bad.jsonl:2: field 'kind' must be"),
        ('{"text": "t", "qa": [{"q": "only a question"}]}', "bad.jsonl:2: qa[0] must be an object"),
    ],
)
def test_remember_refuses_a_malformed_line_and_writes_nothing(tmp_path: Path, line: str, fragment: str) -> None:
    inbox = tmp_path / "inbox"
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "valid"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "valid too"}\n' + line + "\n")
    with pytest.raises(RememberError) as err:
        remember(str(inbox), [good, bad], now=T0)
    assert fragment in str(err.value) and "nothing of" in str(err.value)
    assert not inbox.exists()


def test_a_counter_reads_each_file_once_and_a_rewritten_file_again(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop(inbox, "a.jsonl", [{"text": "one"}], mtime=1000)
    cache = ParsedFiles()
    assert [a.memory.text for a in read_inbox(str(inbox), cache=cache).arrivals] == ["one"]
    # Same name, size and time: the file is taken as read already (a fresh read would say "ONE").
    drop(inbox, "a.jsonl", [{"text": "ONE"}], mtime=1000)
    assert [a.memory.text for a in read_inbox(str(inbox), cache=cache).arrivals] == ["one"]
    assert [a.memory.text for a in read_inbox(str(inbox)).arrivals] == ["ONE"]
    drop(inbox, "a.jsonl", [{"text": "one"}, {"text": "two"}], mtime=2000)
    assert [a.memory.text for a in read_inbox(str(inbox), cache=cache).arrivals] == ["one", "two"]
