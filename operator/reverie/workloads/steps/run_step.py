"""``reverie run-step <step> --config attempt.json``: run one phase and report its result.

Each phase module exposes ``run(config: AttemptConfig) -> AttemptResult``:
consolidation (:mod:`reverie.workloads.steps.consolidate`), dreaming
(``reverie.workloads.steps.dream``) and evaluation (``reverie.workloads.steps.evaluate``),
imported lazily so one phase's dependencies never burden another.  This module
owns the rest of the Job contract: it parses the config, runs the phase, and
writes the :class:`~reverie.core.contract.AttemptResult` to
``<output_uri>/result.json`` and to the termination-message path
(``$REVERIE_TERMINATION_LOG``, default ``/dev/termination-log``; skipped when not
writable, e.g. outside Kubernetes).

Exit codes: 0 success; 1 the phase failed (the result says why); 2 the config
is unreadable or invalid (nothing ran, nothing was written to the store).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reverie.api.sleepcycle import Step
from reverie.core.contract import TERMINATION_LOG, AttemptConfig, AttemptResult

TERMINATION_LOG_ENV = "REVERIE_TERMINATION_LOG"
STEP_MODULES = {
    Step.CONSOLIDATION: "reverie.workloads.steps.consolidate",
    Step.DREAMING: "reverie.workloads.steps.dream",
    Step.EVALUATION: "reverie.workloads.steps.evaluate",
}
EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


class AttemptConfigError(ValueError):
    """The phase config cannot be read or does not validate."""


def read_config(path: str | os.PathLike[str]) -> AttemptConfig:
    """Parse and validate the mounted phase config; errors name the field path."""
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise AttemptConfigError(f"cannot read phase config {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise AttemptConfigError(f"phase config {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    try:
        return AttemptConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise AttemptConfigError(f"phase config {path} is invalid at {where}: {first['msg']}") from exc


def write_result(result: AttemptResult, *, output_uri: str | None) -> None:
    """Write ``result.json`` under ``output_uri`` (local or fsspec) and the termination message."""
    text = result.to_json()
    if output_uri:
        from reverie.workloads.store import store  # fsspec, only when there is a result to write

        store.write_text(store.join(output_uri, "result.json"), text)  # whole or not at all
    term = os.environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG)
    try:
        with open(term, "w") as fh:
            fh.write(text)
    except OSError:
        pass  # not in a pod (or read-only): result.json in the store is the record


def load_step(step: Step) -> Any:
    module = STEP_MODULES[step]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise AttemptConfigError(
                f"step {step.value!r}: its workload module {module} is not installed in this image"
            ) from exc
        raise


def check_launch() -> Any:
    """The world the launcher made (:mod:`reverie.workloads.ml.distributed`); a bad one is a config error.

    Several processes must come from torchrun (the operator renders it for
    nodes × procsPerNode > 1; local mode too), which sets the rendezvous
    address every rank joins.  A pod with ``WORLD_SIZE > 1`` and no
    ``MASTER_ADDR`` would otherwise wait forever for peers that never come.
    """
    from reverie.workloads.ml.distributed import WorldError, world_from_env

    try:
        world = world_from_env()
    except WorldError as exc:
        raise AttemptConfigError(str(exc)) from exc
    if world.distributed and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise AttemptConfigError(
            f"WORLD_SIZE={world.size} but no MASTER_ADDR/MASTER_PORT: start the {world.size} processes with "
            "torchrun (the operator and local mode do this for runtime.numNodes × runtime.procsPerNode > 1)"
        )
    return world


def failure(step: Step, message: str) -> AttemptResult:
    return AttemptResult(step=step, status="Failed", message=message[:1024])


def run_step(step: str, config_path: str) -> int:
    """Run ``step`` with the config at ``config_path``; returns the process exit code."""
    try:
        wanted = Step(step)
    except ValueError:
        print(f"error: unknown step {step!r}; use one of {[s.value for s in Step]}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        config = read_config(config_path)
        if Step(config.step) != wanted:
            raise AttemptConfigError(
                f"phase config {config_path} is for step {Step(config.step).value!r}, not {wanted.value!r}"
            )
        world = check_launch()
        phase = load_step(wanted)
    except AttemptConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        write_result(failure(wanted, str(exc)), output_uri=None)
        return EXIT_BAD_CONFIG
    # Rank 0 alone writes the result; the other ranks only report through their exit code.
    try:
        if world.distributed:
            from reverie.workloads.ml import distributed

            distributed.raise_on_sigterm(world)
            distributed.init_world()
        result = phase.run(config)
    except Exception as exc:  # the Job must end with a result, whatever went wrong
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        if world.distributed:
            message = f"rank {world.rank}/{world.size}: {message}"
        if world.main:
            write_result(failure(wanted, message), output_uri=config.output_uri)
        print(f"error: {wanted.value} failed: {message}", file=sys.stderr)
        return EXIT_FAILED
    if world.main:
        write_result(result, output_uri=config.output_uri)
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            # Every rank leaves together: a rank that tears its group down while rank 0 still
            # commits the model can abort in gloo ("terminate called without an active exception").
            dist.barrier()
            dist.destroy_process_group()
    return EXIT_OK if result.status == "Succeeded" else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """``python -m reverie.workloads.steps.run_step <step> <config>`` (the CLI wires the same function)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m reverie.workloads.steps.run_step <step> <config.json>", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return run_step(args[0], args[1])


if __name__ == "__main__":
    raise SystemExit(main())
