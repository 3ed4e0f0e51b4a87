"""The local state file: atomic writes, one runner per directory."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from reverie.api.lineage import ModelLineage
from reverie.local.state import (
    LocalState,
    StateLocked,
    load_state,
    save_state,
    state_lock,
)
from reverie.workloads.store.atomic import write_atomic


def _lineage() -> ModelLineage:
    return ModelLineage.model_validate(
        {
            "metadata": {"name": "lin"},
            "spec": {"baseModel": {"uri": "builtin:tiny"}, "store": {"uri": "/s"}},
        }
    )


def test_state_round_trips(tmp_path: Path) -> None:
    state = LocalState(lineage=_lineage())
    save_state(tmp_path, state)
    again = load_state(tmp_path)
    assert again is not None and again.wire() == state.wire()
    assert load_state(tmp_path / "fresh") is None


def test_a_state_written_before_knownmemories_keeps_what_the_base_was_pretrained_on(tmp_path: Path) -> None:
    """Older state files kept the tiny model's pretraining memories beside the lineage; they move into
    spec.baseModel.knownMemories, so the next sleep still replays them and retention still scores them."""
    wire = LocalState(lineage=_lineage()).wire()
    wire["knownMemoryUris"] = ["/s/lin/memories/old.jsonl"]
    write_atomic(tmp_path / "state.json", json.dumps(wire))
    state = load_state(tmp_path)
    assert state is not None
    assert state.lineage.spec.base_model.known_memories == ["/s/lin/memories/old.jsonl"]


def test_an_atomic_write_never_leaves_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, "old")

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C between writing the new file and renaming it

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new")
    assert target.read_text() == "old"


def _hold_lock(
    directory: str, ready: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event
) -> None:
    with state_lock(Path(directory)):
        ready.set()
        release.wait(30)


def test_a_second_runner_is_refused_while_the_first_holds_the_directory(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StateLocked, match="another `reverie sleep`"), state_lock(tmp_path):
            pass
    finally:
        release.set()
        holder.join(30)
    with state_lock(tmp_path):  # released when the holder ended
        pass
