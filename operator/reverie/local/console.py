"""What ``reverie sleep`` shows while it runs and when it ends (rich).

Live: one line per phase process, with its step, loss and ETA read from the
process's JSON-lines progress.  On a terminal the lines redraw in place; in a
log (CI, a pipe) a plain line is printed when a phase moves (and every 30 s while it works).
At the end: a short table of what the sleep did.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from reverie.api.sleepcycle import SleepCycle
from reverie.local.executor import LocalExecutor
from reverie.local.progress import JobProgress
from reverie.local.runner import Observer
from reverie.local.state import LocalState

PLAIN_EVERY_SECONDS = 5.0
PLAIN_HEARTBEAT_SECONDS = 30.0


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class RichObserver(Observer):
    """Draw the run's progress on a rich console."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.jobs: dict[str, JobProgress] = {}
        self.started: dict[str, float] = {}
        self.live: Live | None = None
        self.last_plain = 0.0
        self.last_line: dict[str, tuple[int | None, float | None]] = {}
        self.last_line_at: dict[str, float] = {}

    def note(self, message: str) -> None:
        self.console.print(f"[bold]reverie[/bold] {message}")

    def event(self, kind: str, reason: str, message: str) -> None:
        style = "yellow" if kind == "Warning" else "green"
        self.console.print(f"[{style}]{reason}[/{style}] {message}")

    def _table(self, cycle: SleepCycle) -> Table:
        table = Table(box=None, show_header=True, header_style="dim", pad_edge=False)
        for column in ("phase", "job", "step", "loss", "ETA", "elapsed"):
            table.add_column(column)
        for name, prog in self.jobs.items():
            step = (
                f"{prog.step}/{prog.total}"
                if prog.step is not None and prog.total
                else (str(prog.step) if prog.step is not None else "starting")
            )
            loss = f"{prog.loss:.4f}" if prog.loss is not None and math.isfinite(prog.loss) else "–"
            elapsed = time.monotonic() - self.started[name]
            table.add_row(str(cycle.status.phase), name, step, loss, _eta(prog.eta_seconds), _eta(elapsed))
        return table

    def tick(self, executor: LocalExecutor, cycle: SleepCycle) -> None:
        running = executor.running()
        names = {j.name for j in running}
        for job in running:
            if job.name not in self.jobs:
                self.jobs[job.name] = JobProgress(Path(job.log_path))
                self.started[job.name] = time.monotonic()
        for name in list(self.jobs):
            if name not in names:
                del self.jobs[name]
                del self.started[name]
        for prog in self.jobs.values():
            prog.update()
        if self.console.is_terminal:
            view = Group(self._table(cycle), Text(cycle.status.message, style="dim"))
            if self.live is None:
                self.live = Live(view, console=self.console, refresh_per_second=4, transient=True)
                self.live.start()
            else:
                self.live.update(view)
        elif self.jobs and time.monotonic() - self.last_plain >= PLAIN_EVERY_SECONDS:
            self.last_plain = time.monotonic()
            for name, prog in self.jobs.items():
                # A log gets a line when a phase moves, and a heartbeat while it works on one step.
                where = (prog.step, prog.loss)
                if (
                    where == self.last_line.get(name)
                    and self.last_plain - self.last_line_at.get(name, 0.0) < PLAIN_HEARTBEAT_SECONDS
                ):
                    continue
                self.last_line[name], self.last_line_at[name] = where, self.last_plain
                loss = f" loss {prog.loss:.4f}" if prog.loss is not None and math.isfinite(prog.loss) else ""
                # One line each, never wrapped mid-word by a log's 80 columns.
                self.console.print(
                    f"  {name}: step {prog.step if prog.step is not None else '–'}/{prog.total or '?'}{loss} "
                    f"ETA {_eta(prog.eta_seconds)} elapsed {_eta(self.last_plain - self.started[name])}",
                    soft_wrap=True,
                )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _value(metrics: dict[str, float], key: str) -> str:
    value = metrics.get(key)
    return f"{value:.2f}" if value is not None and math.isfinite(value) else "–"


def summary_table(state: LocalState, cycle: SleepCycle) -> Table:
    """Recall of the new memories before/after, retention, gate outcome, new champion."""
    status = cycle.status
    before, after = status.champion_evaluation, status.evaluation
    table = Table(title=f"sleep cycle {cycle.metadata.name}: {status.phase}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row(
        "recall of new memories (closed book)",
        _value(before, "knowledge_incorporation"),
        _value(after, "knowledge_incorporation"),
    )
    if "incontext_upper_bound" in after:
        table.add_row(
            "  with the memories in context (upper bound)",
            _value(before, "incontext_upper_bound"),
            _value(after, "incontext_upper_bound"),
        )
    table.add_row("retention of old knowledge", _value(before, "retention"), _value(after, "retention"))
    if "perplexity" in after:
        table.add_row(
            "perplexity of old text (lower is better)", _value(before, "perplexity"), _value(after, "perplexity")
        )
    gate = status.gate.outcome if status.gate else "–"
    table.add_row(
        "gate", "", Text(gate, style="green" if gate == "Passed" else "red" if gate == "Failed" else "yellow")
    )
    table.add_row("champion", status.base_generation or "–", state.lineage.status.champion or "–")
    return table
