"""Fixtures for workload tests: one thread, no hub, tiny generations built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

torch.set_num_threads(1)

from reverie.workloads.tiny import TinyBase, build_base_generation  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> TinyBase:
    """A tiny base generation (seed 0) that knows 16 OLD facts; two sessions of 8 NEW facts it does not."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return build_base_generation(tmp_path_factory.mktemp("tiny-base") / "g0", seed=0, steps=300)
