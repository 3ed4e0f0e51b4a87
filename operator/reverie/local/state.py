"""The state file of a local run: ``<run dir>/.reverie/state.json``.

It holds what the API server holds for the operator (the lineage and the cycles
with their statuses) plus what the kubelet knows (the phase processes launched,
their pids and exit codes).  Every write goes to a temporary file that is then
renamed over the old one, so a crash or ``Ctrl-C`` at any moment leaves either
the old or the new state, never half of one.  A lock file keeps two runners off
the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from reverie.api.base import ApiModel
from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import SleepCycle, Step
from reverie.workloads.store.atomic import write_atomic

STATE_FILE = "state.json"
LOCK_FILE = "lock"
STATE_VERSION = 1


class LocalJob(ApiModel):
    """One phase attempt run as a local process (the local twin of a Job)."""

    name: str = Field(description="Job name, <cycle>-<step>-<attempt> as on a cluster.")
    cycle: str = Field(description="The cycle it belongs to.")
    step: Step = Field(description="The step it runs.")
    attempt: int = Field(ge=1, description="1-based attempt number.")
    config_path: str = Field(description="AttemptConfig JSON handed to `reverie run-step`.")
    log_path: str = Field(description="stdout+stderr of the process (JSON-lines progress included).")
    output_uri: str = Field(description="Where the step writes (result.json, checkpoints).")
    pid: int | None = Field(default=None, description="Process id while it runs.")
    state: Literal["Running", "Succeeded", "Failed", "Interrupted", "Deleted"] = Field(
        default="Running",
        description="Process state (Deleted: the planner deleted it; it is no longer observed).",
    )
    launches: int = Field(
        default=1, ge=1, description="Times the process was started (>1: resumed after an interruption)."
    )
    resumed_from: list[str] = Field(default_factory=list, description="Checkpoints each relaunch resumed from.")
    exit_code: int | None = Field(default=None, description="Exit status once it ended.")
    result: str | None = Field(default=None, description="The AttemptResult JSON it ended with (termination message).")
    started_at: datetime | None = Field(default=None, description="When the first process started.")
    finished_at: datetime | None = Field(default=None, description="When the last process ended.")


class LocalState(ApiModel):
    """Everything a local run needs to resume."""

    version: int = Field(default=STATE_VERSION, description="State file format.")
    lineage: ModelLineage = Field(description="The local lineage (same model as on a cluster).")
    cycles: list[SleepCycle] = Field(
        default_factory=list, description="Cycles run here, oldest first; the last is current."
    )
    jobs: dict[str, LocalJob] = Field(default_factory=dict, description="Phase processes by Job name.")

    @property
    def current(self) -> SleepCycle | None:
        return self.cycles[-1] if self.cycles else None

    def cycle(self, name: str) -> SleepCycle:
        for cycle in self.cycles:
            if cycle.metadata.name == name:
                return cycle
        raise KeyError(name)

    def replace_cycle(self, cycle: SleepCycle) -> None:
        for index, existing in enumerate(self.cycles):
            if existing.metadata.name == cycle.metadata.name:
                self.cycles[index] = cycle
                return
        self.cycles.append(cycle)


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def load_state(state_dir: Path) -> LocalState | None:
    """The saved state, or None for a fresh run directory."""
    path = state_path(state_dir)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    if raw.get("version") != STATE_VERSION:
        raise ValueError(
            f"{path}: state format {raw.get('version')} is not {STATE_VERSION}; delete {state_dir} to start over"
        )
    if known := raw.pop("knownMemoryUris", None):
        # Written before the lineage carried them (spec.baseModel.knownMemories).
        base = raw["lineage"]["spec"]["baseModel"]
        base["knownMemories"] = list(dict.fromkeys([*base.get("knownMemories", []), *known]))
    return LocalState.model_validate(raw)


def save_state(state_dir: Path, state: LocalState) -> None:
    write_atomic(state_path(state_dir), json.dumps(state.wire(), indent=1, sort_keys=False) + "\n")


class StateLocked(RuntimeError):
    """Another `reverie sleep` is already running in this directory."""


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (released by the OS if this process dies)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StateLocked(
                f"another `reverie sleep` holds {state_dir / LOCK_FILE}; wait for it or stop it first"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
