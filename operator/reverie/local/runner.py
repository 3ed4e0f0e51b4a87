"""The local control loop: observe the phase processes, ask the planner, act.

This is the operator's reconcile loop with the Kubernetes API replaced by the
state file and Jobs replaced by local processes.  The decisions come from the
same pure :func:`reverie.core.planner.plan`; the lineage changes from the same
pure rules in :mod:`reverie.core.lineage`; only the actions' *effects* are local:

============================  ====================================================
planner action                local effect
============================  ====================================================
CreateJob                     start ``reverie run-step <step> --config <file>``
DeleteJob                     kill that process, stop observing it
TakeMemories                  fix an inbox cycle's memories in the store, into
                              its status (the same function the operator calls)
Claim/ReleaseLineage,         :func:`~reverie.core.lineage.apply_lineage_action` on
RecordCandidate/Promote/      the local lineage (the same function the operator
Reject                        applies to a ModelLineage's status)
EmitEvent                     a line on the console
RequeueAfter                  sleep at most that long before planning again
============================  ====================================================

As the controller does, the planned status is saved *before* the actions are
applied, so an interruption between the two is repaired by the next pass.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from reverie import APPROVAL_ANNOTATION
from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import TERMINAL_PHASES, Phase, SleepCycle, SleepCycleStatus
from reverie.api.steps import MemorySource
from reverie.core import lineage as rules
from reverie.core import planner
from reverie.core.conditions import get_condition
from reverie.core.lineage import inbox_of, slept_memory_uris
from reverie.local.bootstrap import TinyWorld, ensure_tiny_world, is_builtin_tiny, tiny_world_exists
from reverie.local.builtin_people import is_builtin_people, session_people
from reverie.local.executor import LocalExecutor
from reverie.local.project import Project
from reverie.local.serving import serve_champion
from reverie.local.state import LocalState, load_state, save_state, state_lock
from reverie.workloads.data import inbox
from reverie.workloads.store.pretrained import (
    PretrainedError,
    is_builtin_pretrained,
    smollm2_folder,
    smollm2_folder_exists,
)

RUNS_DIR = "runs"
# Phases of a local run share one staging cache (generations read from an object store).
STAGING_DIR = "staging"
# With the store in an object store, the tiny world is built here, then uploaded.
TINY_BUILD_DIR = "tiny-build"
POLL_SECONDS = 0.25
# Planning passes when nothing happens: cheap, and they catch backoff deadlines.
IDLE_REPLAN_SECONDS = 2.0


class LocalRunError(RuntimeError):
    """A local run that cannot continue; the message says why and what to do."""


class NothingToConsolidate(Exception):
    """The lineage's inbox holds nothing the champion has not slept on: no sleep is started."""


class NotStarted(KeyboardInterrupt):
    """Ctrl-C arrived before the cycle started (while the tiny base model was being built)."""


@dataclass
class RunOutcome:
    """How ``reverie sleep`` ended."""

    state: LocalState
    cycle: SleepCycle
    interrupted: bool
    report: Path | None


class Observer:
    """What the runner tells the person watching (the CLI draws it with rich)."""

    def note(self, message: str) -> None: ...
    def event(self, kind: str, reason: str, message: str) -> None: ...
    def tick(self, executor: LocalExecutor, cycle: SleepCycle) -> None: ...
    def close(self) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def runs_dir(project: Project) -> Path:
    return project.state_dir / RUNS_DIR


def report_path(state_dir: Path, cycle: str) -> Path:
    return state_dir / RUNS_DIR / cycle / "report.html"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a stopped runner also stops its phases cleanly."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    # A runner started in the background of a script inherits SIGINT ignored;
    # Ctrl-C / kill -INT must still stop it cleanly.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


# --- preparing the state -------------------------------------------------------------
def _resolve_lineage(project: Project, world: TinyWorld | None) -> ModelLineage:
    lineage = project.lineage.model_copy(deep=True)
    # The local "API server" holds absolute paths, so phase processes need no cwd.
    lineage.spec.store.uri = project.store_uri
    if world is not None:
        lineage.spec.base_model.uri = world.base_uri
        if world.old_memories not in lineage.spec.base_model.known_memories:
            # What the tiny model was pretrained on: replayed by each sleep and scored by retention.
            lineage.spec.base_model.known_memories.append(world.old_memories)
    return lineage


def _resolve_memory(
    cycle: SleepCycle, *, world: TinyWorld | None, session: int, store: str, lineage: str
) -> SleepCycle:
    sources = []
    for source in cycle.spec.memory.sources:
        if is_builtin_people(source.uri):
            source = MemorySource(uri=session_people(store, lineage, session))
        elif is_builtin_tiny(source.uri):
            if world is None:
                raise LocalRunError(
                    "memory source 'builtin:tiny' needs the lineage's spec.baseModel.uri to be builtin:tiny too"
                )
            if session > len(world.sessions):
                raise LocalRunError(
                    f"the builtin tiny world has {len(world.sessions)} sessions of memories and this would be "
                    f"sleep {session}; delete the run's .reverie folder to start over"
                )
            source = MemorySource(uri=world.sessions[session - 1])
        sources.append(source)
    out = cycle.model_copy(deep=True)
    out.spec.memory = out.spec.memory.model_copy(update={"sources": sources})
    return out


def _next_cycle_name(state: LocalState, base: str) -> str:
    names = {c.metadata.name for c in state.cycles}
    n = 2
    while f"{base}-{n}" in names:
        n += 1
    return f"{base}-{n}"


def prepare(project: Project, *, again: bool, observer: Observer) -> LocalState:
    """Load or create the state, build ``builtin:tiny`` on a first run, and pick the cycle to run."""
    state = load_state(project.state_dir)
    world: TinyWorld | None = None
    uses_tiny = is_builtin_tiny(project.lineage.spec.base_model.uri)
    if uses_tiny:
        store, name = project.store_uri, project.lineage.metadata.name
        fresh = not tiny_world_exists(store, name)
        if fresh:
            observer.note("first run: building the tiny base model and its memories (no downloads)…")
        started = time.monotonic()
        world = ensure_tiny_world(store, name, build_dir=project.state_dir / TINY_BUILD_DIR)
        if fresh:
            observer.note(f"tiny base model ready in {time.monotonic() - started:.0f} s: {world.base_uri}")
    elif is_builtin_pretrained(project.lineage.spec.base_model.uri):
        if not smollm2_folder_exists():
            observer.note(
                "first run: converting the packaged SmolLM2-135M-Instruct into a model folder (no downloads)…"
            )
        started = time.monotonic()
        try:
            folder = smollm2_folder()
        except PretrainedError as exc:
            raise LocalRunError(str(exc)) from exc
        if time.monotonic() - started > 1:
            observer.note(f"SmolLM2-135M-Instruct ready in {time.monotonic() - started:.0f} s: {folder}")
    if state is None:
        lineage = _resolve_lineage(project, world)
        lineage.metadata.namespace = project.cycle.metadata.namespace
        lineage.status = rules.ensure_base(lineage.status, lineage.spec.base_model, now=_now())
        state = LocalState(lineage=lineage)
    current = state.current
    name = project.cycle.metadata.name
    if current is not None and Phase(current.status.phase) not in TERMINAL_PHASES:
        if current.metadata.name != name:
            observer.note(f"resuming unfinished cycle {current.metadata.name} (started earlier in this directory)")
        return state
    if current is not None and not again and any(c.metadata.name == name for c in state.cycles):
        return state  # finished; the CLI shows the outcome and how to run another
    if again or any(c.metadata.name == name for c in state.cycles):
        name = _next_cycle_name(state, name)
    cycle = project.cycle.model_copy(deep=True)
    cycle.metadata.name = name
    cycle.metadata.generation = 1
    cycle.status = SleepCycleStatus()
    if (lineage_inbox := inbox_of(state.lineage)) is not None:
        # As a scheduled cycle does: sleep on what arrived since the champion's last sleep, if anything did.
        base = cycle.spec.base_generation or state.lineage.status.champion
        new, problems = inbox.new_memories(
            lineage_inbox.uri, slept_memory_uris(state.lineage, base), limit=lineage_inbox.max_per_sleep
        )
        for problem in problems:
            observer.note(f"inbox: {problem}")
        if new.count == 0:
            raise NothingToConsolidate(
                f"nothing new in the inbox {lineage_inbox.uri}: {base} has slept on every memory in it"
            )
        cycle.spec.memory = cycle.spec.memory.model_copy(update={"sources": [MemorySource(inbox=True)]})
    state.cycles.append(
        _resolve_memory(
            cycle,
            world=world,
            session=len(state.cycles) + 1,
            store=project.store_uri,
            lineage=project.lineage.metadata.name,
        )
    )
    return state


# --- applying the planner's actions ------------------------------------------------------
def _apply(
    action: planner.Action, *, state: LocalState, cycle: SleepCycle, executor: LocalExecutor, observer: Observer
) -> float | None:
    """Carry out one action locally; returns a requeue delay when the action asks for one."""
    lin = state.lineage
    now = _now()
    name = cycle.metadata.name
    if isinstance(action, planner.CreateJob):
        executor.launch(action.job_name, action.config)
    elif isinstance(action, planner.DeleteJob):
        executor.delete(action.job_name)
    elif isinstance(action, planner.EmitEvent):
        observer.event(action.type, action.reason, action.message)
    elif isinstance(action, planner.LineageAction):
        holder = lin.status.active_cycle
        # The local "API server" knows every cycle: a holder that finished or is gone lets go.
        finished = holder is None or all(
            c.metadata.name != holder or Phase(c.status.phase) in TERMINAL_PHASES for c in state.cycles
        )
        change = rules.apply_lineage_action(lin, action, cycle=name, now=now, holder_finished=finished)
        lin.status = change.status
        if change.promotion is not None:
            promotion = change.promotion
            observer.event("Normal" if promotion.promoted else "Warning", promotion.kind, promotion.message)
            if promotion.changed:
                serve_champion(lin, observer=observer)  # the servable form, for the champion only
    elif isinstance(action, planner.TakeMemories):
        taken = inbox.take(
            inbox_uri=action.inbox_uri,
            slept_uris=action.slept_uris,
            limit=action.limit,
            set_uri=action.set_uri,
            ledger_uri=action.ledger_uri,
            now=now,
        )
        state.replace_cycle(cycle.model_copy(update={"status": cycle.status.model_copy(update={"memory": taken})}))
        observer.note(f"{taken.count} new memories from the inbox ({taken.waiting} wait for later sleeps)")
    elif isinstance(action, planner.RequeueAfter):
        return action.seconds
    return None


def run_cycle(
    project: Project,
    *,
    observer: Observer,
    again: bool = False,
    approve: str | None = None,
    python: str | None = None,
    on_report: Callable[[LocalState, str], Path | None] | None = None,
) -> RunOutcome:
    """Run (or resume) the current cycle of ``project`` until it ends, waits for a human, or is interrupted."""
    with state_lock(project.state_dir), sigterm_as_interrupt():
        # This process uploads the tiny world; phases get the same store settings (LocalExecutor),
        # and the generations it uploads enter the run's staging cache, not ~/.cache.
        if project.lineage.spec.store.endpoint:
            os.environ.setdefault("AWS_ENDPOINT_URL_S3", project.lineage.spec.store.endpoint)
        os.environ.setdefault("REVERIE_STAGING_CACHE", str(project.state_dir / STAGING_DIR))
        try:
            state = prepare(project, again=again, observer=observer)
        except KeyboardInterrupt:
            # Nothing ran yet; the bootstrap writes its manifest last, so a rerun rebuilds cleanly.
            observer.note("interrupted before the cycle started. Run the same command again to start it.")
            raise NotStarted from None
        cycle = state.current
        assert cycle is not None
        name = cycle.metadata.name
        if approve is not None:
            cycle.metadata.annotations[APPROVAL_ANNOTATION] = approve
        save_state(project.state_dir, state)
        executor = LocalExecutor(
            state,
            runs_dir=runs_dir(project),
            python=python or sys.executable,
            staging_cache=project.state_dir / STAGING_DIR,
        )
        interrupted = False
        try:
            for job in executor.recover():
                where = job.resumed_from[-1] or "the start (no checkpoint was written yet)"
                observer.note(f"resuming {job.name} from {where}")
            if Phase(cycle.status.phase) in TERMINAL_PHASES:
                pass
            else:
                cycle = _loop(project, state, executor, observer)
        except KeyboardInterrupt:
            interrupted = True
            stopped = executor.interrupt()
            cycle = state.cycle(name)
            observer.note(
                "interrupted"
                + (f"; stopped {', '.join(j.name for j in stopped)}" if stopped else "")
                + ". Run the same command again to resume."
            )
        finally:
            save_state(project.state_dir, state)
            observer.close()
        report = on_report(state, name) if on_report is not None else None
        return RunOutcome(state=state, cycle=state.cycle(name), interrupted=interrupted, report=report)


def _loop(project: Project, state: LocalState, executor: LocalExecutor, observer: Observer) -> SleepCycle:
    name = state.current.metadata.name  # type: ignore[union-attr]
    next_plan = 0.0
    while True:
        cycle = state.cycle(name)
        changed = executor.poll()
        now_mono = time.monotonic()
        if changed or now_mono >= next_plan:
            observed = executor.observe(cycle=name)
            result = planner.plan(cycle, observed=observed, lineage=state.lineage, now=_now())
            cycle = cycle.model_copy(update={"status": result.status})
            state.replace_cycle(cycle)
            save_state(project.state_dir, state)  # intent first, then actions
            delay: float | None = None
            replan = False
            for action in result.actions:
                wait = _apply(action, state=state, cycle=cycle, executor=executor, observer=observer)
                if wait is not None:
                    delay = wait if delay is None else min(delay, wait)
                replan = replan or isinstance(
                    action, (*planner.LINEAGE_ACTIONS, planner.CreateJob, planner.TakeMemories)
                )
            save_state(project.state_dir, state)
            phase = Phase(cycle.status.phase)
            if phase in TERMINAL_PHASES and not replan:
                return cycle
            if phase == Phase.AWAITING_APPROVAL:
                return cycle
            ready = get_condition(cycle.status.conditions, "Ready")
            if ready is not None and ready.reason == "LineagePinned" and not cycle.status.records:
                return cycle  # nothing runs until a person unpins the lineage
            if replan:
                next_plan = now_mono
                continue
            next_plan = now_mono + min(IDLE_REPLAN_SECONDS, delay if delay is not None else IDLE_REPLAN_SECONDS)
        observer.tick(executor, cycle)
        time.sleep(POLL_SECONDS)
