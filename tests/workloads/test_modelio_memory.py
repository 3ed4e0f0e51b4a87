"""Memory sets: the JSONL format, sources (uri, ConfigMap mount, inline) and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from reverie.api.steps import ConfigMapKeyRef, MemorySource, MemorySpec
from reverie.workloads.data.memory import (
    CONFIGMAP_ROOT_ENV,
    MemorySetError,
    load_memories,
    parse_jsonl,
    question_prompt,
    read_memory_uri,
)
from reverie.workloads.ml.tiny import build_tokenizer, make_world, memory_records, write_memories_jsonl

LINE = {"id": "m1", "text": "Zorblat lives in Vemora.", "qa": [{"q": "Where does Zorblat live?", "a": "Vemora"}]}


def test_jsonl_round_trip_from_the_fact_generator(tmp_path: Path) -> None:
    world = make_world(3, seed=1)
    path = write_memories_jsonl(tmp_path / "m.jsonl", memory_records(world.facts))
    mems = read_memory_uri(str(path))
    assert [m.id for m in mems] == ["mem-0", "mem-1", "mem-2"]
    assert mems[0].qa[0].a in mems[0].text and mems[0].kind == "document"


def test_relative_uri_is_inside_the_store_and_folders_read_all_jsonl(tmp_path: Path) -> None:
    (tmp_path / "mem").mkdir()
    (tmp_path / "mem" / "a.jsonl").write_text(json.dumps(LINE) + "\n\n")
    (tmp_path / "mem" / "b.jsonl").write_text(json.dumps({**LINE, "id": "m2", "kind": "conversation"}) + "\n")
    (tmp_path / "mem" / "notes.txt").write_text("ignored")
    mems = load_memories(MemorySpec(sources=[MemorySource(uri="mem")]), store_uri=str(tmp_path))
    assert [(m.id, m.kind) for m in mems] == [("m1", "document"), ("m2", "conversation")]


def test_fsspec_uri_and_inline_and_configmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fsspec.open("memory://bucket/mem.jsonl", "w") as fh:
        fh.write(json.dumps(LINE) + "\n")
    (tmp_path / "cm" / "facts").mkdir(parents=True)
    (tmp_path / "cm" / "facts" / "memories.jsonl").write_text(json.dumps({**LINE, "id": "cm1"}) + "\n")
    monkeypatch.setenv(CONFIGMAP_ROOT_ENV, str(tmp_path / "cm"))
    spec = MemorySpec(
        sources=[
            MemorySource(uri="memory://bucket/mem.jsonl"),
            MemorySource(config_map=ConfigMapKeyRef(name="facts")),
            MemorySource(inline=["Remember the milk."]),
        ]
    )
    mems = load_memories(spec)
    assert [m.id for m in mems] == ["m1", "cm1", "inline-2-0"]
    assert mems[2].text == "Remember the milk." and mems[2].qa == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json}\n", r"m.jsonl:1: not valid JSON"),
        ('{"id": "x"}\n', r"field 'text' must be a non-empty string"),
        ('{"id": "x", "text": "t", "qa": [{"q": 1}]}\n', r"qa\[0\] must be an object"),
        ('{"id": "x", "text": "t", "kind": "email"}\n', r"'kind' must be"),
        ('{"id": "x", "text": "t", "extra": 1}\n', r"unknown field"),
        ('["x"]\n', r"must be a JSON object"),
    ],
)
def test_bad_lines_name_the_source_line_and_fix(text: str, message: str) -> None:
    with pytest.raises(MemorySetError, match=message):
        parse_jsonl(text, source="m.jsonl")


def test_missing_sources_and_duplicates_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MemorySetError, match="does not exist"):
        load_memories([MemorySource(uri=str(tmp_path / "nope.jsonl"))])
    monkeypatch.setenv(CONFIGMAP_ROOT_ENV, str(tmp_path))
    with pytest.raises(MemorySetError, match="not mounted"):
        load_memories([MemorySource(config_map=ConfigMapKeyRef(name="absent"))])
    (tmp_path / "d.jsonl").write_text((json.dumps(LINE) + "\n") * 2)
    with pytest.raises(MemorySetError, match="appears twice"):
        load_memories([MemorySource(uri=str(tmp_path / "d.jsonl"))])


def test_question_prompt_puts_the_memory_before_the_question() -> None:
    tok = build_tokenizer(["Zorblat lives in Vemora.", "Where does Zorblat live?"])
    closed = question_prompt(tok, "Where does Zorblat live?")
    opened = question_prompt(tok, "Where does Zorblat live?", context="Zorblat lives in Vemora.")
    assert closed == "<|im_start|>user\nWhere does Zorblat live?<|im_end|>\n<|im_start|>assistant\n"
    assert opened.index("Vemora") < opened.index("Where does")
