"""The workloads' JSON-lines progress, read back for people.

A phase process prints one :class:`~reverie.core.contract.ProgressEvent` per
line among its ordinary log lines, e.g.
``{"event": "progress", "step": 40, "totalSteps": 120, "loss": 1.83}``; the live
display (phase, step, loss, ETA) and the report's loss curves read every phase
through it.  A loss is ``loss`` or any ``*_loss`` / ``*Loss`` value, plus the
parts consolidation logs under their own names.  Non-JSON lines are ordinary
logs and are skipped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from reverie.core.contract import ProgressEvent

# Written into a job's log by the executor when it starts the job again after an interruption.
RELAUNCHED: Final = "relaunched"
# Loss parts some phases log under their own names (consolidation: distill, imitation).
_LOSS_PARTS = ("distill", "imitation")


def parse_line(line: str) -> dict[str, Any] | None:
    """The JSON object on a log line, or None for an ordinary line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def step_of(obj: dict[str, Any]) -> int | None:
    return ProgressEvent.from_json(obj).step


def total_of(obj: dict[str, Any]) -> int | None:
    return ProgressEvent.from_json(obj).total_steps


def losses_of(obj: dict[str, Any]) -> dict[str, float]:
    """``loss`` and every ``*_loss`` / ``*Loss`` scalar of a progress line."""
    out: dict[str, float] = {}
    for key, value in ProgressEvent.from_json(obj).values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if (key == "loss" or key.lower().endswith("loss") or key in _LOSS_PARTS) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def checkpoint_of(obj: dict[str, Any]) -> str | None:
    """The checkpoint a line announces."""
    return ProgressEvent.from_json(obj).checkpoint


def read_events(log_path: Path) -> list[dict[str, Any]]:
    """Every JSON object a phase printed, in order."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [obj for obj in (parse_line(line) for line in text.splitlines()) if obj is not None]


def loss_series(log_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Loss curves of one job: name -> [(step, value)], across relaunches (resumed steps overwrite)."""
    series: dict[str, dict[int, float]] = {}
    for obj in read_events(log_path):
        step = step_of(obj)
        if step is None:
            continue
        for name, value in losses_of(obj).items():
            series.setdefault(name, {})[step] = value
    return {name: sorted(points.items()) for name, points in series.items()}


def last_checkpoint_in_log(log_path: Path) -> str | None:
    found: str | None = None
    for obj in read_events(log_path):
        found = checkpoint_of(obj) or found
    return found


def first_step_per_launch(log_path: Path) -> list[int | None]:
    """The first progress step of each launch of a job (a resumed launch starts late)."""
    firsts: list[int | None] = [None]
    for obj in read_events(log_path):
        if obj.get("event") == RELAUNCHED:
            firsts.append(None)
            continue
        if obj.get("event", "progress") != "progress":
            continue  # "resumed"/"checkpoint" events name a step that was done before
        step = step_of(obj)
        if step is not None and firsts[-1] is None:
            firsts[-1] = step
    return firsts


@dataclass
class JobProgress:
    """Live progress of one job, fed with new log text as it arrives."""

    log_path: Path
    offset: int = 0
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    message: str = ""
    _rate_anchor: tuple[float, int] | None = None
    _rate: float | None = None
    _partial: str = field(default="", repr=False)
    _step_at: float | None = field(default=None, repr=False)  # when the last step arrived

    def update(self) -> bool:
        """Read what the job wrote since the last call; True when something new arrived."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return False
        if not chunk:
            return False
        self.offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            obj = parse_line(line)
            if obj is None:
                if line.strip():
                    self.message = line.strip()[:120]
                continue
            if obj.get("event") == RELAUNCHED:
                self._rate_anchor = None
                continue
            self._take(obj)
        return True

    def _take(self, obj: dict[str, Any]) -> None:
        total = total_of(obj)
        if total:
            self.total = total
        if obj.get("event") == "start":
            # Training starts here: the first measured step already gives a rate (and an ETA).
            start = ProgressEvent.from_json(obj).values.get("resume_step", 0)
            self._rate_anchor = (time.monotonic(), int(start) if isinstance(start, int | float) else 0)
            return
        losses = losses_of(obj)
        if "loss" in losses:
            self.loss = losses["loss"]
        elif losses:
            self.loss = next(iter(losses.values()))
        if isinstance(obj.get("message"), str):
            self.message = obj["message"][:120]
        step = step_of(obj)
        if step is None:
            return
        self.step = step
        now = time.monotonic()
        self._step_at = now
        if self._rate_anchor is None:
            self._rate_anchor = (now, step)
        else:
            t0, s0 = self._rate_anchor
            if step > s0 and now > t0:
                self._rate = (step - s0) / (now - t0)

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the measured rate, counting down between progress lines (a step can take a while)."""
        if self._rate is None or self.step is None or not self.total or self._rate <= 0:
            return None
        since = time.monotonic() - self._step_at if self._step_at is not None else 0.0
        return max(0.0, (self.total - self.step) / self._rate - since)
