"""DeepSpeed ZeRO: configs from the phase config, and a ZeRO-2 consolidation in one CPU process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reverie.api.steps import ConsolidationSpec
from reverie.workloads.ml.deepspeed_config import zero_config
from reverie.workloads.ml.tiny import TinyBase
from reverie.workloads.store.modelio import stage_in


def test_zero_configs_follow_the_spec() -> None:
    two = zero_config(ConsolidationSpec.model_validate({"zeroStage": "2", "batchSize": 4}), on_gpu=False)
    assert two["zero_optimization"]["stage"] == 2
    assert two["train_micro_batch_size_per_gpu"] == 4
    assert two["bf16"]["enabled"] is False, "no bf16 on CPU"
    assert two["zero_allow_untested_optimizer"] is True
    three = zero_config(ConsolidationSpec.model_validate({"zeroStage": "3", "precision": "bf16"}), on_gpu=True)
    assert three["zero_optimization"]["stage"] == 3
    assert three["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert three["bf16"]["enabled"] is True
    with pytest.raises(ValueError, match="plain torch"):
        zero_config(ConsolidationSpec(), on_gpu=False)


def test_zero2_consolidation_runs_in_one_cpu_process(attempt_config, tiny_base: TinyBase, tmp_path: Path) -> None:
    # A subprocess: DeepSpeed initialises a process group that must not leak into other tests.
    cfg = attempt_config(zeroStage="2", steps=3, alpha=0.9)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "reverie.workloads.steps.run_step", "consolidation", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "store/l/c1/consolidation/result.json").read_text())
    assert result["status"] == "Succeeded" and result["metrics"]["steps"] == 3
    staged = stage_in(result["outputUri"])  # a thin generation: its weights are in the lineage's object area
    slot = load_file(str(staged / "slots/slot-0/adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in slot.items()), "the slot trained"
    base = load_file(str(tiny_base.folder / "model.safetensors"))
    saved = load_file(str(staged / "model.safetensors"))
    assert all((base[k] == saved[k]).all() for k in base), "ZeRO must not touch the frozen base"
