"""Phase attempts as local processes: the local twin of the operator's Job executor.

A "job" here is one ``reverie run-step <step> --config <file>`` process that gets
the same :class:`~reverie.core.contract.AttemptConfig` a Kubernetes Job would mount.
Like the Kubernetes side, the executor only *launches* and *observes*; the
planner decides.  Launching a name that exists is a no-op (the local 409), so a
repeated action never starts a second process for the same attempt.

Interruptions are not failures.  ``Ctrl-C`` (or a killed runner) is treated
like a pod disruption that Kubernetes' pod-failure policy ignores: on the next
run the *same* attempt is started again with ``resume_from`` pointing at its
last checkpoint, so the step continues where it stopped and no retry budget is
spent.  Processes run in their own session so the terminal's ``Ctrl-C`` reaches
only the runner, which then stops them with SIGTERM (time to checkpoint) before
SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from reverie.api.base import parse_quantity
from reverie.api.sleepcycle import Step
from reverie.core.contract import AttemptConfig, ProgressEvent, checkpoint_root
from reverie.core.observed import JobState, ObservedJob
from reverie.local.progress import RELAUNCHED, last_checkpoint_in_log
from reverie.local.state import LocalJob, LocalState
from reverie.workloads.store.atomic import write_atomic

# Environment every phase process gets unless the user set it: no network
# lookups for models, one BLAS thread per process (see ml-stack notes: a busy
# second thread made a 0.035 s step take 8 s), unbuffered progress lines.
PHASE_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
TERMINATE_GRACE_SECONDS = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


def _pid_runs(pid: int, *, marker: str) -> bool:
    """True when ``pid`` is alive and still one of ours (its command line names our config)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has finished; pid reuse by another program fails the marker test.
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return marker in cmdline and state != "Z"


def log_tail(path: Path, *, lines: int = 3) -> str:
    """The last ordinary (non-JSON) lines of a log: usually the error that ended it."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    plain = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("{")]
    return " | ".join(plain[-lines:]) or "(no output)"


def latest_checkpoint(job: LocalJob) -> str | None:
    """The newest checkpoint an attempt wrote: announced in its log, else :func:`~reverie.workloads.store.checkpoint.resume_point`.

    On a local disk the announced folder is the one ``latest`` names (the phase
    announces after saving) and reading the log needs no torch.  With the store
    in an object store, the phase announces its local working copy; what the
    next attempt resumes from is the copy in the store, whose ``latest`` pointer
    is uploaded only after the checkpoint it names.
    """
    from reverie.workloads.store import checkpoint, store

    root = checkpoint_root(job.output_uri)
    if not store.is_remote(root):
        announced = last_checkpoint_in_log(Path(job.log_path))
        if announced and Path(announced).exists():
            return announced
    return checkpoint.resume_point(root)


class LocalExecutor:
    """Launch and observe phase processes recorded in a :class:`LocalState`."""

    def __init__(
        self,
        state: LocalState,
        *,
        runs_dir: Path,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        staging_cache: Path | None = None,
    ) -> None:
        self.state = state
        self.runs_dir = runs_dir
        self.python = python
        self.env = dict(env if env is not None else os.environ)
        for key, value in PHASE_ENV_DEFAULTS.items():
            self.env.setdefault(key, value)
        # What a phase Job gets from the lineage's spec.store (jobs._store_env); credentials
        # come from this environment (AWS_* variables), as a Job's come from its Secret.
        store = state.lineage.spec.store
        if store.endpoint:
            self.env.setdefault("AWS_ENDPOINT_URL_S3", store.endpoint)
        cache = store.staging_cache
        if cache is not None and cache.host_path:
            staging_cache = Path(cache.host_path)
        if staging_cache is not None:
            self.env.setdefault("REVERIE_STAGING_CACHE", str(staging_cache))
        if cache is not None:
            self.env.setdefault("REVERIE_STAGING_CACHE_MAX_BYTES", str(int(parse_quantity(cache.max_size))))
        self.env["PYTHONUNBUFFERED"] = "1"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._launch_times: dict[str, float] = {}

    # -- launching -------------------------------------------------------------
    def launch(self, name: str, config: AttemptConfig) -> LocalJob:
        """Start the process of attempt ``name`` unless it exists (idempotent)."""
        if name in self.state.jobs:
            return self.state.jobs[name]
        run_dir = self.runs_dir / config.cycle
        run_dir.mkdir(parents=True, exist_ok=True)
        job = LocalJob(
            name=name,
            cycle=config.cycle,
            step=config.step,
            attempt=config.attempt,
            config_path=str(run_dir / f"{name}.json"),
            log_path=str(run_dir / f"{name}.log"),
            output_uri=config.output_uri,
            started_at=_now(),
        )
        write_atomic(Path(job.config_path), json.dumps(config.wire(), indent=1) + "\n")
        self.state.jobs[name] = job
        self._spawn(job)
        return job

    def _spawn(self, job: LocalJob) -> None:
        env = dict(self.env)
        # Where a pod would find /dev/termination-log.
        env["REVERIE_TERMINATION_LOG"] = str(Path(job.log_path).with_suffix(".result.json"))
        command = self._command(job)
        with open(job.log_path, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._procs[job.name] = proc
        self._launch_times[job.name] = time.time()
        job.pid = proc.pid
        job.state = "Running"
        job.exit_code = None
        job.finished_at = None

    def _command(self, job: LocalJob) -> list[str]:
        """``reverie run-step``, or torchrun on this machine for ``runtime.procsPerNode`` > 1.

        Local mode is one node: a laptop uses its cores through ``procsPerNode``
        (``numNodes`` counts towards the world size too, all on this machine).
        """
        from reverie.core import launch

        config = AttemptConfig.model_validate_json(Path(job.config_path).read_text())
        runtime = getattr(config, Step(job.step).value).runtime
        procs = launch.processes(runtime)
        if procs > 1:
            run = launch.torchrun_command(str(job.step), job.config_path, standalone_procs=procs)
            return [self.python, "-m", "torch.distributed.run", *run[1:]]
        return [self.python, "-m", "reverie.cli", "run-step", str(job.step), "--config", job.config_path]

    # -- observing -------------------------------------------------------------
    def _read_result(self, job: LocalJob, *, since: float | None) -> str | None:
        candidates = [
            Path(job.log_path).with_suffix(".result.json"),
            Path(job.output_uri) / "result.json",
        ]
        for path in candidates:
            try:
                # A result.json older than this launch belongs to an earlier attempt.
                if since is not None and path.stat().st_mtime < since - 1.0:
                    continue
                text = path.read_text()
            except OSError:
                continue
            if text.strip():
                return text
        return None

    def _finish(self, job: LocalJob, exit_code: int | None) -> None:
        since = self._launch_times.get(job.name) or (job.started_at.timestamp() if job.started_at else None)
        job.result = self._read_result(job, since=since)
        job.exit_code = exit_code
        job.pid = None
        job.finished_at = _now()
        succeeded = exit_code == 0 if exit_code is not None else job.result is not None and '"Succeeded"' in job.result
        job.state = "Succeeded" if succeeded else "Failed"
        self._procs.pop(job.name, None)

    def poll(self) -> bool:
        """Reap ended processes; True when something changed."""
        changed = False
        for job in self.state.jobs.values():
            if job.state != "Running":
                continue
            proc = self._procs.get(job.name)
            if proc is not None:
                code = proc.poll()
                if code is not None:
                    self._finish(job, code)
                    changed = True
            elif job.pid is None or not _pid_runs(job.pid, marker=job.config_path):
                # Adopted from an earlier runner and gone: its exit code is lost,
                # the result file says how it ended.
                self._finish(job, None)
                changed = True
        return changed

    def observe(self, *, cycle: str | None = None) -> list[ObservedJob]:
        """The jobs as the planner sees them (a deleted job is gone, as on a cluster)."""
        self.poll()
        return [
            self._observed(j)
            for j in self.state.jobs.values()
            if j.state != "Deleted" and (cycle is None or j.cycle == cycle)
        ]

    def _observed(self, job: LocalJob) -> ObservedJob:
        if job.state in ("Running", "Interrupted"):
            state, reason, message = JobState.ACTIVE, "", ""
        elif job.state == "Succeeded":
            state, reason, message = JobState.SUCCEEDED, "", ""
        else:
            state = JobState.FAILED
            reason = "ProcessFailed"
            code = f"exit status {job.exit_code}" if job.exit_code is not None else "exit status unknown"
            message = f"{code}; last output: {log_tail(Path(job.log_path))}"
        return ObservedJob(
            name=job.name,
            step=Step(job.step),
            attempt=job.attempt,
            state=state,
            created=job.started_at,
            started=job.started_at,
            finished=job.finished_at,
            reason=reason,
            message=message[:1024],
            result_text=job.result,
        )

    def delete(self, name: str) -> None:
        """Stop a job's process and forget it (what deleting a Job does)."""
        job = self.state.jobs.get(name)
        if job is None or job.state == "Deleted":
            return
        proc = self._procs.pop(name, None)
        pid = proc.pid if proc is not None else job.pid
        if job.state == "Running" and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait()
        job.state = "Deleted"
        job.pid = None
        job.finished_at = job.finished_at or _now()

    def running(self) -> list[LocalJob]:
        return [j for j in self.state.jobs.values() if j.state == "Running"]

    # -- interruption and resume ----------------------------------------------------
    def recover(self) -> list[LocalJob]:
        """At start-up: adopt processes of an earlier runner that still run, and start
        interrupted attempts again from their last checkpoint.  Returns the restarted ones."""
        restarted: list[LocalJob] = []
        for job in self.state.jobs.values():
            if job.state == "Running" and job.pid is not None and _pid_runs(job.pid, marker=job.config_path):
                continue  # still running (the runner died, the phase did not): adopt it
            if job.state == "Running":
                # Died with its runner; a result file means it finished in the meantime.
                result = self._read_result(job, since=job.started_at.timestamp() if job.started_at else None)
                if result is not None:
                    job.result = result
                    job.pid = None
                    job.finished_at = _now()
                    job.state = "Succeeded" if '"Succeeded"' in result else "Failed"
                    continue
                job.state = "Interrupted"
            if job.state == "Interrupted":
                self._resume(job)
                restarted.append(job)
        return restarted

    def _resume(self, job: LocalJob) -> None:
        checkpoint = latest_checkpoint(job)
        config = AttemptConfig.model_validate_json(Path(job.config_path).read_text())
        if checkpoint is not None:
            config = config.model_copy(update={"resume_from": checkpoint})
            job.resumed_from.append(checkpoint)
        else:
            job.resumed_from.append("")
        write_atomic(Path(job.config_path), json.dumps(config.wire(), indent=1) + "\n")
        with open(job.log_path, "a") as log:
            log.write(
                ProgressEvent(RELAUNCHED, values={"launch": job.launches + 1, "resumeFrom": checkpoint}).line() + "\n"
            )
        job.launches += 1
        self._spawn(job)

    def interrupt(self, *, grace: float = TERMINATE_GRACE_SECONDS) -> list[LocalJob]:
        """Stop every running process (SIGTERM, then SIGKILL) and mark it Interrupted."""
        stopped: list[LocalJob] = []
        for job in self.running():
            proc = self._procs.get(job.name)
            pid = proc.pid if proc is not None else job.pid
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            stopped.append(job)
        deadline = time.monotonic() + grace
        for job in stopped:
            proc = self._procs.get(job.name)
            if proc is not None:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            # A process that finished its step while being stopped keeps its result.
            result = self._read_result(job, since=self._launch_times.get(job.name))
            if proc is not None and proc.returncode == 0 and result is not None:
                self._finish(job, 0)
                continue
            job.state = "Interrupted"
            job.pid = None
            self._procs.pop(job.name, None)
        return stopped
