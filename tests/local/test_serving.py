"""Local mode after a promotion: the champion's servable form, `reverie ask` and `reverie export` on a run.

The run is built by hand (tests/local/generations.py): an untrained tiny base as
gen-0 and a gen-1 with one slot whose B is non-zero, as a finished sleep leaves them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from tests.local.generations import build, status
from typer.testing import CliRunner

from reverie.api.lineage import ModelLineage
from reverie.local.serving import serve_champion
from reverie.local.state import LocalState, save_state

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def event(self, kind: str, reason: str, message: str) -> None:
        self.seen.append((kind, reason, message))


@pytest.fixture(scope="module")
def generations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(store, gen-0 folder, gen-1 folder)."""
    store = tmp_path_factory.mktemp("run") / ".reverie" / "store"
    g0, g1 = build(store)
    return store, g0, g1


def lineage(
    store: Path,
    g0: Path,
    g1: Path,
    *,
    champion: str = "gen-1",
    target: dict[str, Any] | None = None,
) -> ModelLineage:
    spec: dict[str, Any] = {"baseModel": {"uri": str(g0)}, "store": {"uri": str(store)}}
    if target:
        spec["servingTarget"] = target
    return ModelLineage.model_validate(
        {
            "metadata": {"name": "lin"},
            "spec": spec,
            "status": status(g0, g1, champion=champion),
        }
    )


def test_promotion_writes_the_merged_champion_and_hands_it_off(generations: tuple[Path, Path, Path]) -> None:
    from transformers import AutoModelForCausalLM

    store, g0, g1 = generations
    lin, events = lineage(store, g0, g1), Events()
    uri = serve_champion(lin, observer=events)
    assert uri == str(store / "lin" / "servable" / "gen-1" / "merged")
    assert lin.status.serving_uri == uri and lin.status.servable is not None and lin.status.servable.uri == uri
    assert not (Path(uri) / "slots").exists()
    AutoModelForCausalLM.from_pretrained(uri)  # plain transformers, no Reverie code
    assert [e[1] for e in events.seen] == ["Exporting", "Servable"]
    stamp = (Path(uri) / "model.safetensors").stat().st_mtime_ns
    assert serve_champion(lin, observer=events) == uri
    assert (Path(uri) / "model.safetensors").stat().st_mtime_ns == stamp, "written once per champion"


def test_adapter_form_names_generation_zero_as_its_base(generations: tuple[Path, Path, Path]) -> None:
    store, g0, g1 = generations
    lin = lineage(store, g0, g1, target={"kind": "ConfigMap", "name": "serving", "key": "model", "form": "adapter"})
    uri = serve_champion(lin, observer=Events())
    assert uri == str(store / "lin" / "servable" / "gen-1" / "adapter")
    cfg = json.loads((Path(uri) / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(g0) and cfg["r"] == 2


def test_generation_zero_is_served_as_is_and_older_forms_are_removed(generations: tuple[Path, Path, Path]) -> None:
    store, g0, g1 = generations
    serve_champion(lineage(store, g0, g1), observer=Events())
    lin = lineage(store, g0, g1, champion="gen-0")
    assert serve_champion(lin, observer=Events()) == str(g0)
    assert lin.status.serving_uri == str(g0)
    assert not (store / "lin" / "servable" / "gen-1").exists(), "only the champion's servable form is kept"


def run_dir(generations: tuple[Path, Path, Path]) -> Path:
    store, g0, g1 = generations
    state_dir = store.parent
    save_state(state_dir, LocalState(lineage=lineage(store, g0, g1)))
    return state_dir.parent


def test_reverie_ask_compares_champion_base_and_teacher(generations: tuple[Path, Path, Path]) -> None:
    from reverie.cli import app

    result = CliRunner().invoke(
        app,
        ["ask", str(run_dir(generations)), "Where does Zorblat live?", "--compare", "--max-new-tokens", "4"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for header in ("champion (gen-1)", "base (gen-0)", "teacher (gen-0 + memory in context)"):
        assert header in result.output
    assert "memory mem-0" in result.output, "the teacher sees the memory about Zorblat"


def test_reverie_ask_compare_before_any_sleep_says_there_is_no_teacher(generations: tuple[Path, Path, Path]) -> None:
    from reverie.cli import app

    store, g0, g1 = generations
    save_state(store.parent, LocalState(lineage=lineage(store, g0, g1, champion="gen-0")))
    result = CliRunner().invoke(app, ["ask", str(store.parent.parent), "Where?", "--compare"])
    assert result.exit_code == 1 and "no sleep yet" in result.output


def test_reverie_ask_without_a_run_says_what_to_do(tmp_path: Path) -> None:
    from reverie.cli import app

    result = CliRunner().invoke(app, ["ask", str(tmp_path), "Where?"])
    assert result.exit_code == 1 and "reverie sleep" in result.output


def test_reverie_export_writes_the_runs_champion(generations: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from reverie.cli import app

    out = tmp_path / "served"
    result = CliRunner().invoke(app, ["export", str(run_dir(generations)), str(out), "--form", "adapter"])
    assert result.exit_code == 0, result.output
    assert (out / "adapter_config.json").is_file() and "champion gen-1" in result.output
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(generations[1])
    bad = CliRunner().invoke(app, ["export", str(generations[2]), str(out), "--form", "gguf"])
    assert bad.exit_code == 1 and "merged or adapter" in bad.output


def test_the_local_runner_exports_on_promotion_and_only_then(generations: tuple[Path, Path, Path]) -> None:
    from datetime import UTC, datetime

    from reverie.api.sleepcycle import SleepCycle
    from reverie.core import lineage as rules
    from reverie.core import planner
    from reverie.local.runner import _apply

    store, g0, g1 = generations
    cycle = SleepCycle.model_validate(
        {"metadata": {"name": "c1"}, "spec": {"lineageRef": "lin", "memory": {"sources": [{"inline": ["x"]}]}}}
    )

    def with_candidate() -> LocalState:
        lin = lineage(store, g0, g1, champion="gen-0")
        lin.status.generations = lin.status.generations[:1]
        lin.status, _ = rules.record_candidate(
            lin.status,
            cycle="c1",
            uri=str(g1),
            content_hash=None,
            parent="gen-0",
            scores={},
            now=datetime.now(UTC),
            history_limit=10,
        )
        return LocalState(lineage=lin)

    rejected, promoted = with_candidate(), with_candidate()
    # No action below needs the executor.
    _apply(
        planner.Reject(lineage="lin", generation="gen-1", reason="gate"),
        state=rejected,
        cycle=cycle,
        executor=None,
        observer=Events(),
    )  # type: ignore[arg-type]
    assert rejected.lineage.status.servable is None, "a candidate that is not promoted gets no servable form"
    _apply(
        planner.Promote(lineage="lin", generation="gen-1", scores={}),
        state=promoted,
        cycle=cycle,
        executor=None,
        observer=Events(),
    )  # type: ignore[arg-type]
    status_ = promoted.lineage.status
    assert status_.champion == "gen-1" and status_.servable is not None
    assert status_.serving_uri == status_.servable.uri == str(store / "lin" / "servable" / "gen-1" / "merged")
