"""DeepSpeed ZeRO for consolidation at scale: a config generated from the phase config, and an engine.

``zero_config`` turns :class:`~reverie.api.steps.ConsolidationSpec` into a
DeepSpeed config (ZeRO stage 2 or 3, bf16 on GPUs, clipping, micro-batch).
:class:`DeepSpeedTrainer` wraps ``deepspeed.initialize`` around the shared
model with a plain ``torch.optim.AdamW`` over the new slot's parameters only (so
optimizer state stays tiny, and no CPU-Adam op has to be JIT-compiled).  We call
``deepspeed.initialize`` directly rather than through accelerate because the
loop owns generation and the teacher passes; the engine is only the optimiser
side (``engine.backward`` / ``engine.step``).  The teacher is the same module
with other slots active, run under ``torch.no_grad()`` in eval mode.

One process per GPU, started by ``torchrun`` (RANK/LOCAL_RANK/WORLD_SIZE; the
process group may already exist, :func:`reverie.workloads.ml.distributed.init_world`);
a single process with no launcher gets a world of one over gloo (CPU tests).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from reverie.api.steps import ConsolidationSpec, ZeroStage


def zero_config(
    spec: ConsolidationSpec,
    *,
    on_gpu: bool | None = None,
    gradient_accumulation_steps: int = 1,
    max_grad_norm: float = 1.0,
    world_size: int = 1,
) -> dict[str, Any]:
    """DeepSpeed config for ``spec.zero_stage`` (2 or 3); bf16 only on GPUs and when asked for.

    ``spec.batch_size`` is the step's global batch; each of ``world_size`` processes takes its share.
    """
    if ZeroStage(spec.zero_stage) == ZeroStage.NONE:
        raise ValueError("consolidation.zeroStage is 0: plain torch, no DeepSpeed config")
    gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    stage = int(ZeroStage(spec.zero_stage).value)
    zero: dict[str, Any] = {"stage": stage, "contiguous_gradients": True, "overlap_comm": gpu}
    if stage == 3:
        zero |= {
            "stage3_gather_16bit_weights_on_model_save": True,
            # On GPUs small tensors stay whole on every rank (partitioning them costs more than it
            # saves); on CPU (tests, tiny models) everything is partitioned, or nothing would be.
            "stage3_param_persistence_threshold": 100_000 if gpu else 0,
            "reduce_bucket_size": 50_000_000,
        }
    return {
        "train_micro_batch_size_per_gpu": max(1, spec.batch_size // max(1, world_size)),
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(gpu and spec.precision == "bf16")},
        "fp16": {"enabled": False},
        # We pass torch's AdamW: DeepSpeed must accept an optimizer it did not build.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def init_distributed() -> None:
    """Join the process group the launcher set up, or make a world of one (gloo on CPU)."""
    import deepspeed
    import torch.distributed as dist

    if not torch.cuda.is_available():
        # Skip DeepSpeed's shared-memory comm op (an inference all-reduce fast path): its JIT
        # build costs minutes on a busy CPU, and training collectives go through gloo anyway.
        # Set before the early return: deepspeed.initialize would build it on a torchrun world too.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if dist.is_available() and dist.is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


class DeepSpeedTrainer:
    """The optimiser side of the loop as a DeepSpeed ZeRO engine (see module docstring)."""

    def __init__(
        self,
        model: Any,
        params: Sequence[torch.nn.Parameter],
        *,
        lr: float,
        config: dict[str, Any],
    ) -> None:
        import deepspeed

        init_distributed()
        self.params = list(params)
        optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            model_parameters=self.params,
            config=config,
        )

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def state_dict(self) -> dict[str, Any] | None:
        # ZeRO partitions optimizer state; a resumed run keeps the slot weights and restarts the moments.
        return None
