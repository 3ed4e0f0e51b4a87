"""Fixtures for workload tests: one thread, no hub, tiny generations built once per session."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

torch.set_num_threads(1)

from reverie.workloads.tiny import TinyBase, build_base_generation  # noqa: E402


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
def phase_config(tiny_base: TinyBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write a consolidation phase config over a store in tmp_path; returns its path.

    Memories: the first NEW session (this cycle) and the OLD facts (prior, for replay).
    The termination log goes to ``tmp_path/termination-log``.
    """
    from reverie.workloads.tiny import memory_records, write_memories_jsonl

    store = tmp_path / "store"
    write_memories_jsonl(store / "memories" / "session-1.jsonl", memory_records(tiny_base.new[0]))
    write_memories_jsonl(store / "memories" / "old.jsonl", memory_records(tiny_base.old, prefix="old"))
    monkeypatch.setenv("REVERIE_TERMINATION_LOG", str(tmp_path / "termination-log"))

    def write(name: str = "phase.json", *, output: str = "l/c1/consolidation", **consolidation: Any) -> Path:
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
