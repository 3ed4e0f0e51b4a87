"""Reading the phases' JSON-lines progress back: live display, loss curves, resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reverie.core.contract import ProgressEvent, emit_progress
from reverie.local.progress import (
    JobProgress,
    first_step_per_launch,
    last_checkpoint_in_log,
    loss_series,
    parse_line,
)


def _write(path: Path, *objs: object) -> None:
    with path.open("a") as handle:
        for obj in objs:
            handle.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")


def test_only_json_objects_are_progress() -> None:
    assert parse_line('{"step": 1}') == {"step": 1}
    assert parse_line("Loading weights {not json") is None
    assert parse_line("[1, 2]") is None


def test_loss_curves_keep_every_loss_part_and_a_resume_overwrites_repeated_steps(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    _write(
        log,
        {"event": "progress", "step": 1, "totalSteps": 4, "loss": 3.0, "distill_loss": 2.0},
        "a warning line",
        {"event": "progress", "step": 2, "loss": 2.0},
        {"event": "checkpoint", "step": 2, "checkpoint": "/s/ckpt-2"},
        {"event": "relaunched", "launch": 2, "resumeFrom": "/s/ckpt-2"},
        {"event": "resumed", "step": 2},
        {"event": "progress", "step": 2, "loss": 1.9},
        {"event": "progress", "step": 3, "loss": 1.5, "imitation": -0.1},
    )
    series = loss_series(log)
    assert series["loss"] == [(1, 3.0), (2, 1.9), (3, 1.5)]
    assert series["distill_loss"] == [(1, 2.0)]
    assert series["imitation"] == [(3, -0.1)]
    assert last_checkpoint_in_log(log) == "/s/ckpt-2"
    assert first_step_per_launch(log) == [1, 2]


def test_live_progress_reads_only_new_text_and_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    prog = JobProgress(log)
    assert not prog.update()
    _write(log, {"event": "progress", "step": 5, "totalSteps": 50, "loss": 1.25})
    with log.open("a") as handle:
        handle.write('{"event": "progress", "st')  # the process is mid-write
    assert prog.update()
    assert (prog.step, prog.total, prog.loss) == (5, 50, 1.25)
    with log.open("a") as handle:
        handle.write('ep": 10, "loss": 1.0}\n')
    prog.update()
    assert (prog.step, prog.loss) == (10, 1.0)
    assert prog.eta_seconds is not None and prog.eta_seconds >= 0


def test_the_eta_comes_with_the_first_measured_step(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    prog = JobProgress(log)
    _write(log, {"event": "start", "totalSteps": 120, "resume_step": 0})
    prog.update()
    assert prog.eta_seconds is None, "no step measured yet"
    _write(log, {"event": "progress", "step": 10, "totalSteps": 120, "loss": 2.0})
    prog.update()
    assert prog.eta_seconds is not None and prog.eta_seconds >= 0


def test_the_eta_counts_down_between_progress_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("reverie.local.progress.time.monotonic", lambda: clock[0])
    log = tmp_path / "job.log"
    prog = JobProgress(log)
    _write(log, {"event": "start", "totalSteps": 30, "resume_step": 0})
    prog.update()
    clock[0] = 110.0  # 10 steps in 10 s: 20 s to go
    _write(log, {"event": "progress", "step": 10, "totalSteps": 30, "loss": 2.0})
    prog.update()
    assert prog.eta_seconds == pytest.approx(20.0)
    clock[0] = 117.0  # no new line for 7 s: the estimate moves on, the printed line differs
    assert prog.eta_seconds == pytest.approx(13.0)
    clock[0] = 150.0
    assert prog.eta_seconds == 0.0


def test_what_a_phase_emits_is_what_the_reader_reads(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    event = ProgressEvent(phase="dreaming", step=3, total_steps=9, checkpoint="/s/ckpt-3", values={"loss": 0.5})
    with log.open("w") as handle:
        emit_progress(event, stream=handle)
    (line,) = log.read_text().splitlines()
    assert ProgressEvent.from_json(json.loads(line)) == event
    prog = JobProgress(log)
    prog.update()
    assert (prog.step, prog.total, prog.loss) == (3, 9, 0.5)
    assert last_checkpoint_in_log(log) == "/s/ckpt-3"


def test_total_has_one_spelling() -> None:
    assert ProgressEvent.from_json({"step": 1, "totalSteps": 4}).total_steps == 4
    for other in ("total", "steps", "total_steps", "maxSteps"):
        assert ProgressEvent.from_json({"step": 1, other: 4}).total_steps is None
