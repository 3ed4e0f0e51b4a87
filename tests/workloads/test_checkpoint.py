"""Checkpoints: atomic writes, and a restarted attempt resumes with the same steps and data order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reverie.workloads.steps import consolidate
from reverie.workloads.steps.run_step import run_step
from reverie.workloads.store.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from reverie.workloads.store.modelio import stage_in


def test_save_is_atomic_keeps_two_and_points_latest(tmp_path: Path) -> None:
    for step in (3, 6, 9):
        save_checkpoint(
            tmp_path,
            step=step,
            slot="slot-0",
            slot_state={"w": torch.full((2,), float(step))},
            optimizer_state={"state": {}, "param_groups": []},
            meta={"seed": 1},
        )
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "latest",
        "step-00000006",
        "step-00000009",
    ]
    assert not list(tmp_path.glob(".tmp-*")), "no temporary folders are left behind"
    c = load_checkpoint(tmp_path)
    assert (c.step, c.slot, c.meta["seed"]) == (9, "slot-0", 1)
    assert torch.equal(c.slot_state["w"], torch.full((2,), 9.0))
    assert load_checkpoint(tmp_path / "step-00000006").step == 6


def test_a_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, step=3, slot="slot-0", slot_state={"w": torch.zeros(1)})
    (tmp_path / "step-00000006").mkdir()  # crashed before state.json was renamed into place
    (tmp_path / "latest").write_text("step-00000006")
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == "step-00000003"
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "empty-root")


def test_a_relaunch_resumes_from_the_newest_complete_checkpoint_and_never_from_a_half_written_one(
    tmp_path: Path,
) -> None:
    root = tmp_path / "checkpoints"
    assert resume_point(str(root)) is None
    save_checkpoint(root, step=3, slot="slot-0", slot_state={"w": torch.zeros(1)})
    (root / "step-00000006").mkdir()  # newer on disk, but crashed before state.json
    assert resume_point(str(root)) == str(root / "step-00000003")
    assert resume_point(f"file://{root}") == str(root / "step-00000003")


def slot_weights(result_path: Path) -> dict[str, torch.Tensor]:
    model_uri = json.loads(result_path.read_text())["outputUri"]
    # The generation is thin (its weights live in the lineage's object area): read it as a loader does.
    return load_file(str(stage_in(model_uri) / "slots" / "slot-0" / "adapter_model.safetensors"))


def test_restart_resumes_with_the_same_step_count_and_data_order(
    attempt_config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = attempt_config("ref.json", output="l/ref/consolidation", alpha=0.8)
    assert run_step("consolidation", str(reference)) == 0
    expected = slot_weights(tmp_path / "store/l/ref/consolidation/result.json")

    cfg = attempt_config("attempt1.json", alpha=0.8)
    real_step = consolidate.SelfStudyDistillation.step

    def crash_at_4(self, step: int):
        if step == 4:
            raise RuntimeError("node preempted")
        return real_step(self, step)

    monkeypatch.setattr(consolidate.SelfStudyDistillation, "step", crash_at_4)
    assert run_step("consolidation", str(cfg)) == 1
    out = tmp_path / "store/l/c1/consolidation"
    failed = json.loads((out / "result.json").read_text())
    assert failed["status"] == "Failed" and "node preempted" in failed["message"]
    assert latest_checkpoint(out / "checkpoints").name == "step-00000003"
    monkeypatch.setattr(consolidate.SelfStudyDistillation, "step", real_step)

    raw = json.loads(cfg.read_text())
    raw["attempt"], raw["resumeFrom"] = 2, str(out / "checkpoints")
    cfg.write_text(json.dumps(raw))
    capsys.readouterr()
    assert run_step("consolidation", str(cfg)) == 0
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {"event": "resumed", "step": 3}.items() <= next(x for x in logs if x["event"] == "resumed").items()
    assert next(x for x in logs if x["event"] == "selfstudy").get("reused") is True, (
        "the retry reuses the self-study set and teacher targets of the failed attempt"
    )
    result = json.loads((out / "result.json").read_text())
    assert (result["metrics"]["steps"], result["metrics"]["steps_this_attempt"]) == (6, 3)
    got = slot_weights(out / "result.json")
    assert got.keys() == expected.keys()
    for k in got:
        assert torch.allclose(got[k], expected[k], atol=1e-6), f"{k} differs after resume"
