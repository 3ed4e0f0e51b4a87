"""Compute precision: bf16 autocast on CPU keeps fp32 weights; fp32 stays fp32 everywhere."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from reverie.core.contract import parse_result
from reverie.workloads.ml.precision import compute_scope, weights_dtype
from reverie.workloads.steps import run_step as rp
from reverie.workloads.store.modelio import stage_in

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_bf16_on_cpu_runs_matmuls_in_bf16_and_keeps_fp32_weights() -> None:
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with compute_scope("bf16", CPU):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32
    y.float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    with compute_scope("fp32", CPU):
        assert layer(x).dtype == torch.float32
    assert weights_dtype("bf16", CPU) == torch.float32 == weights_dtype("fp32", GPU)
    assert weights_dtype("bf16", GPU) == torch.bfloat16


def test_a_training_loop_in_one_bf16_scope_sees_each_update() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, target = torch.randn(16, 8), torch.randn(16, 1)
    losses = []
    with compute_scope("bf16", CPU):
        for _ in range(5):
            loss = (layer(x).float() - target).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.9 * losses[0], losses


def test_a_bf16_consolidation_on_cpu_trains_and_saves_an_fp32_slot(attempt_config, tmp_path: Path) -> None:
    assert rp.run_step("consolidation", str(attempt_config(precision="bf16"))) == 0
    out = tmp_path / "store/l/c1/consolidation"
    result = parse_result((out / "result.json").read_text(), step="consolidation")
    assert math.isfinite(result.metrics["consolidation_loss"])
    slot = load_file(str(stage_in(str(out / "model")) / "slots/slot-0/adapter_model.safetensors"))
    assert slot and {v.dtype for v in slot.values()} == {torch.float32}
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in slot.items()), "the slot trained"
    assert json.loads((tmp_path / "attempt.json").read_text())["consolidation"]["precision"] == "bf16"
