"""The one skeleton every step of a sleep fills in: inputs → resume → work → write → metrics.

A step is a :class:`Phase` subclass; ``run(config)`` of its module is
``run_step(TheStep(config))``.  The skeleton owns what the steps share:

* **inputs** — the memory set and the earlier sleeps' memories, read once, and
  the held-out rule over both (:class:`StepInputs`); a bad memory URI fails
  the step with a message that names ``memory``;
* **resume** — the step loads what an earlier attempt left (a checkpoint, a
  cached self-study set) before any work;
* **work** — the step's own training or scoring;
* **write** — the new generation (thin: only what the lineage's object area
  lacks), its ledger entry and the files beside it, by rank 0 alone, each file
  whole or not at all (:func:`write_generation`);
* **metrics** — non-finite values dropped (``AttemptResult`` rejects them).

A step that stops on purpose before its end (a test's preemption) raises
:class:`Stopped`; the result is ``Failed`` and names the checkpoint to resume from.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from reverie.api.sleepcycle import Step
from reverie.core.contract import AttemptConfig, AttemptResult
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import Memory, MemorySetError, load_memories, load_memory_uris
from reverie.workloads.ml import distributed
from reverie.workloads.store import objects, store
from reverie.workloads.store.modelio import content_hash, save_generation


class StepInputError(ValueError):
    """An input of the step (a memory set, the base generation) cannot be read: the step fails, nothing written."""


class Stopped(Exception):
    """The step ended early on purpose, after writing the checkpoint ``checkpoint_uri``."""

    def __init__(self, message: str, *, checkpoint_uri: str) -> None:
        super().__init__(message)
        self.checkpoint_uri = checkpoint_uri


@dataclass(frozen=True)
class StepInputs:
    """What every step reads first: this sleep's memories, the earlier sleeps', and what may not be trained on."""

    memories: list[Memory]
    prior: list[Memory]
    held_out: HeldOut


def read_inputs(config: AttemptConfig) -> StepInputs:
    """The memory sets of ``config``; every question evaluation will ask about either is held out."""
    try:
        memories = load_memories(config.memory, store_uri=config.store_uri)
        prior = load_memory_uris(config.prior_memory_uris, store_uri=config.store_uri)
    except MemorySetError as exc:
        raise StepInputError(f"memory: {exc}") from exc
    held_out = HeldOut.of([*memories, *prior], questions_per_memory=config.evaluation.questions_per_memory)
    return StepInputs(memories=memories, prior=prior, held_out=held_out)


@dataclass(frozen=True)
class Written:
    """What a step wrote: the URI its result names and that output's content hash."""

    uri: str
    content_hash: str


def model_uri(config: AttemptConfig) -> str:
    """Where a step writes its generation: ``<output_uri>/model``."""
    return store.join(config.output_uri, "model")


def work_dir(config: AttemptConfig) -> Path:
    """Where the step assembles its files: the output folder itself when local, else a fresh local folder."""
    return store.local_workdir(config.output_uri, prefix=f"reverie-{Step(config.step).value}-")


def write_generation(
    config: AttemptConfig,
    model: Any,
    tokenizer: Any,
    *,
    slots: list[str],
    ledger: Mapping[str, Any],
    slot_note: Mapping[str, Any],
    files: Mapping[str, str] | None = None,
) -> Written:
    """Save the step's generation (rank 0 only) with ``slot_note`` appended to the ledger's slots.

    The generation is thin: only what the lineage's object area lacks (the new
    slot, the small files) is written.  ``files`` are written beside the model
    folder under ``output_uri``, each whole or not at all.  Every rank must call
    this (under ZeRO-3 each takes part in gathering the weights first).
    """
    entry = {**ledger, "slots": [*ledger.get("slots", []), dict(slot_note)]}
    uri = model_uri(config)

    def write() -> str:
        folder = save_generation(
            model, tokenizer, uri, slots=slots, ledger=entry, objects_uri=objects.area(config.store_uri, config.lineage)
        )
        digest = content_hash(folder)
        for name, text in (files or {}).items():
            store.write_text(store.join(config.output_uri, name), text)
        return digest

    return Written(uri=uri, content_hash=distributed.on_main(distributed.world_from_env(), write))


class Workload(ABC):
    """One step of a sleep: the skeleton calls ``open``, ``resume``, ``work``, ``write``, ``metrics`` in order."""

    step: ClassVar[Step]
    # AttemptResult takes non-finite metrics from evaluation only (a suite with nothing to ask is NaN).
    finite_metrics: ClassVar[bool] = True

    def __init__(self, config: AttemptConfig) -> None:
        self.config = config
        self.slot: str | None = None  # the slot the step added, if any
        self.checkpoint_uri: str | None = None  # where its checkpoints live, if any

    @abstractmethod
    def open(self, inputs: StepInputs) -> None:
        """Check the settings and load the model the step works on."""

    def resume(self) -> None:  # noqa: B027 - a step without state to resume has nothing to do
        """Load what an earlier attempt left (checkpoint, cached data sets)."""

    @abstractmethod
    def work(self) -> None:
        """The step's training or scoring."""

    @abstractmethod
    def write(self) -> Written:
        """Write the step's output (a generation, a report); every rank calls it."""

    @abstractmethod
    def metrics(self) -> dict[str, float]:
        """The result's metrics; non-finite ones are dropped."""

    @abstractmethod
    def message(self) -> str:
        """One line for the result."""

    def baseline(self) -> dict[str, float]:
        """Evaluation only: the champion's metrics."""
        return {}


def finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` without the non-finite values (a metric that does not apply to this run)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def run_workload(phase: Workload) -> AttemptResult:
    """The skeleton: inputs → resume → work → write → metrics; a :class:`Stopped` step fails resumably."""
    phase.open(read_inputs(phase.config))
    phase.resume()
    try:
        phase.work()
    except Stopped as stop:
        return AttemptResult(step=phase.step, status="Failed", message=str(stop), checkpoint_uri=stop.checkpoint_uri)
    written = phase.write()
    return AttemptResult(
        step=phase.step,
        status="Succeeded",
        message=phase.message(),
        metrics=finite(phase.metrics()) if phase.finite_metrics else phase.metrics(),
        baseline=phase.baseline(),
        output_uri=written.uri,
        content_hash=written.content_hash,
        slot=phase.slot,
        checkpoint_uri=phase.checkpoint_uri,
    )
