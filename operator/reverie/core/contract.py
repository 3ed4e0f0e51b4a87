"""The Job contract between the operator (or the local runner) and a phase workload.

A phase Job runs ``reverie run-step <step> --config /etc/reverie/attempt.json``.
The config (a :class:`AttemptConfig`) is rendered from the SleepCycle by the
operator into a ConfigMap.  The workload reads inputs from the store, writes its
outputs under ``output_uri`` (``<store>/<lineage>/<cycle>/<step>/``), checkpoints
under ``<output_uri>/checkpoints/``, and ends by writing a small JSON
:class:`AttemptResult` to ``<output_uri>/result.json`` and to the termination-message
path.  While it runs it prints :class:`ProgressEvent` lines among its ordinary
logs.  Phase Jobs need no Kubernetes API access.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from pydantic import Field, ValidationError

from reverie.api.base import ApiModel
from reverie.api.sleepcycle import Step
from reverie.api.steps import ConsolidationSpec, DreamingSpec, EvaluationSpec, MemorySpec

CONFIG_MOUNT_PATH = "/etc/reverie/attempt.json"
# Memory ConfigMaps (spec.memory.sources[].configMap) are mounted at <root>/<name>/; not under
# /etc/reverie, which is itself a (read-only) ConfigMap volume where no mount point can be made.
MEMORY_CONFIGMAP_ROOT = "/etc/reverie-memory"
TERMINATION_LOG = "/dev/termination-log"
# Kubernetes truncates termination messages at 4096 bytes; results must fit.
MAX_RESULT_BYTES = 4096


def step_output_uri(store_uri: str, lineage: str, cycle: str, step: Step | str) -> str:
    """Where a step writes: ``<store>/<lineage>/<cycle>/<step>`` (shared by all attempts)."""
    return f"{store_uri.rstrip('/')}/{lineage}/{cycle}/{Step(step).value}"


CHECKPOINTS_FOLDER = "checkpoints"


def checkpoint_root(output_uri: str) -> str:
    """Where a step's attempts keep their checkpoints: ``<output_uri>/checkpoints``, shared by all attempts.

    The root is all a caller that cannot look (the planner) names; which
    checkpoint under it is the newest complete one is decided by
    :func:`reverie.workloads.store.checkpoint.latest_checkpoint`, which reads it.
    """
    return f"{output_uri.rstrip('/')}/{CHECKPOINTS_FOLDER}"


CONSOLIDATED_MEMORIES = "memories.jsonl"


def consolidated_memories_uri(store_uri: str, lineage: str, cycle: str) -> str:
    """The memory set a cycle's consolidation learned, kept beside its model.

    Later cycles replay these (consolidation, dreaming) and score retention on them
    (evaluation): they are what the generations of a lineage know.
    """
    return f"{step_output_uri(store_uri, lineage, cycle, Step.CONSOLIDATION)}/{CONSOLIDATED_MEMORIES}"


INBOX_FOLDER = "inbox"
TAKEN_MEMORIES = "inbox-memories.jsonl"
SLEPT_LEDGER = "inbox-slept.jsonl"


def inbox_uri(store_uri: str, lineage: str, uri: str | None = None) -> str:
    """A lineage's inbox prefix: ``uri`` (a relative path is taken inside the store), else ``<store>/<lineage>/inbox``."""
    if uri is None:
        return f"{store_uri.rstrip('/')}/{lineage}/{INBOX_FOLDER}"
    if "://" in uri or uri.startswith("/"):
        return uri.rstrip("/")
    return f"{store_uri.rstrip('/')}/{uri.strip('/')}"


def taken_memories_uri(store_uri: str, lineage: str, cycle: str) -> str:
    """The memories an inbox cycle took, fixed when it started: beside its step folders, written once."""
    return f"{store_uri.rstrip('/')}/{lineage}/{cycle}/{TAKEN_MEMORIES}"


def slept_ledger_uri(store_uri: str, lineage: str, cycle: str) -> str:
    """Every memory an inbox cycle's generation has slept on once promoted: its base's, and its own set.

    Written with the set; the ancestry in ``status.generations`` is capped by
    ``historyLimit``, this file is not, so a long-lived lineage never takes a
    memory its champion slept on long ago.
    """
    return f"{store_uri.rstrip('/')}/{lineage}/{cycle}/{SLEPT_LEDGER}"


class AttemptConfig(ApiModel):
    """Everything one phase attempt needs; the same for a Job and a local process."""

    step: Step = Field(description="The step to run.")
    cycle: str = Field(description="SleepCycle name.")
    namespace: str = Field(default="default", description="SleepCycle namespace.")
    lineage: str = Field(description="ModelLineage name.")
    attempt: int = Field(default=1, ge=1, description="1-based attempt number.")
    store_uri: str = Field(description="Root of the model store.")
    output_uri: str = Field(description="Where this step writes (see step_output_uri).")
    base_generation: str = Field(description="Generation the cycle started from.")
    base_uri: str = Field(description="Model folder of the base generation.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Outputs of earlier steps by step name, e.g. {'consolidation': <model uri>}.",
    )
    resume_from: str | None = Field(
        default=None, description="Checkpoint of the previous failed attempt, to resume from."
    )
    memory: MemorySpec = Field(description="This cycle's memories.")
    prior_memory_uris: list[str] = Field(
        default_factory=list,
        description="Memories consolidated by earlier generations (replay and retention).",
    )
    champion_generation: str | None = Field(default=None, description="Champion to compare against in evaluation.")
    champion_uri: str | None = Field(default=None, description="Model folder of the champion.")
    consolidation: ConsolidationSpec = Field(default_factory=ConsolidationSpec, description="Consolidation knobs.")
    dreaming: DreamingSpec = Field(default_factory=DreamingSpec, description="Dreaming knobs.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation knobs.")


class ResultError(ValueError):
    """A phase result that cannot be trusted; the phase fails with this message."""


class AttemptResult(ApiModel):
    """The small JSON a phase ends with (termination message and result.json)."""

    step: Step = Field(description="The step that produced it.")
    status: Literal["Succeeded", "Failed"] = Field(description="Succeeded, or Failed with message.")
    message: str = Field(default="", max_length=1024, description="Human-readable summary or failure cause.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Scalar metrics (for evaluation: the candidate's)."
    )
    baseline: dict[str, float] = Field(
        default_factory=dict,
        description="Evaluation only: the champion's metrics on the same suites.",
    )
    output_uri: str | None = Field(default=None, description="Primary artifact (model folder or eval report).")
    content_hash: str | None = Field(default=None, description="sha256 of the primary artifact.")
    checkpoint_uri: str | None = Field(default=None, description="Last checkpoint written.")
    slot: str | None = Field(default=None, description="Consolidation: the new expert slot's name.")

    def to_json(self) -> str:
        text = json.dumps(self.wire(), separators=(",", ":"), allow_nan=True)
        if len(text.encode()) > MAX_RESULT_BYTES:
            raise ResultError(f"phase result is {len(text.encode())} bytes; the limit is {MAX_RESULT_BYTES}")
        return text


def parse_result(text: str | None, *, step: Step | str) -> AttemptResult:
    """Parse and check a termination message; raise :class:`ResultError` with the reason.

    A missing, truncated or malformed result, one for another step, or a success
    without an artifact never advances a cycle.
    """
    if text is None or not text.strip():
        raise ResultError("the phase ended without a result (empty termination message)")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultError(f"the phase result is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    if not isinstance(raw, dict):
        raise ResultError("the phase result must be a JSON object")
    for key in ("metrics", "baseline"):
        # Strictly JSON numbers: validation would take the string "0.95" (or true) for a number,
        # and a gate must never promote on a value the workload did not write as one.
        values = raw.get(key)
        if not isinstance(values, dict):
            continue
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ResultError(
                    f"the phase result is invalid at {key}.{name}: {json.dumps(value)} is not a JSON number; "
                    'the workload must write each metric as a number (e.g. 0.95, not "0.95")'
                )
    try:
        result = AttemptResult.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ResultError(f"the phase result is invalid at {where}: {first['msg']}") from exc
    if result.step != Step(step):
        raise ResultError(f"the phase result is for step {result.step!s}, expected {Step(step).value}")
    if result.status == "Succeeded" and not result.output_uri:
        raise ResultError("the phase reported success without an outputUri")
    for name, value in result.metrics.items():
        if not math.isfinite(value) and result.step != Step.EVALUATION:
            raise ResultError(f"the phase result metric {name} is not finite ({value})")
    return result


# --------------------------------------------------------------------------- progress

ProgressKind = Literal["start", "progress", "checkpoint", "resumed", "selfstudy", "staged", "relaunched", "zero3"]
ProgressValue = float | int | str | bool | list[str] | list[int] | None


@dataclass(frozen=True)
class ProgressEvent:
    """One progress line of a phase process: a JSON object on its own line among the ordinary logs.

    ``{"event": "progress", "phase": "consolidation", "step": 40, "totalSteps": 120, "loss": 1.83}``:
    the known keys are ``event``, ``phase`` (the step of the cycle that
    prints it), ``step`` and ``totalSteps`` (optimiser steps or units of work
    done, of how many), ``checkpoint`` (the checkpoint just written or resumed
    from) and ``message``; every other key is a value of the event (losses,
    rates, counts).  The local console, the report's loss curves and log
    shippers read it; nothing else writes progress.
    """

    event: ProgressKind = "progress"
    phase: str | None = None
    step: int | None = None
    total_steps: int | None = None
    checkpoint: str | None = None
    message: str | None = None
    values: Mapping[str, ProgressValue] = field(default_factory=dict)

    _KEYS = ("event", "phase", "step", "totalSteps", "checkpoint", "message")

    def to_json(self) -> dict[str, Any]:
        known: dict[str, Any] = {
            "event": self.event,
            "phase": self.phase,
            "step": self.step,
            "totalSteps": self.total_steps,
            "checkpoint": self.checkpoint,
            "message": self.message,
        }
        return {**dict(self.values), **{k: v for k, v in known.items() if v is not None}}

    def line(self) -> str:
        """The event as one JSON line (no newline)."""
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ProgressEvent:
        """The event of a parsed line (missing or mistyped known keys read as absent)."""

        def number(key: str) -> int | None:
            value = obj.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                return None
            return int(value)

        def text(key: str) -> str | None:
            value = obj.get(key)
            return value if isinstance(value, str) and value else None

        event = obj.get("event", "progress")
        return cls(
            event=event if isinstance(event, str) else "progress",  # type: ignore[arg-type]
            phase=text("phase"),
            step=number("step"),
            total_steps=number("totalSteps"),
            checkpoint=text("checkpoint"),
            message=text("message"),
            values={k: v for k, v in obj.items() if k not in cls._KEYS},
        )


def emit_step_progress(phase: str, step: int, total: int, *, checkpoint: str | None = None, **values: Any) -> None:
    """A step's progress line: ``step`` units of work of ``total`` done, with the values it reports."""
    emit_progress(ProgressEvent(phase=phase, step=step, total_steps=total, checkpoint=checkpoint, values=values))


def emit_progress(event: ProgressEvent, *, stream: TextIO | None = None) -> None:
    """Print ``event`` as one line (stdout unless ``stream``) and flush, so a follower sees it at once.

    A phase on N processes (torchrun sets ``RANK``) logs from rank 0 only: one line per event, as on one process.
    """
    if os.environ.get("RANK", "0") != "0":
        return
    out = stream or sys.stdout
    out.write(event.line() + "\n")
    out.flush()
