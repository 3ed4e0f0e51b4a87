"""The one optimiser step of the product: AdamW over a slot's parameters, with gradient clipping.

Consolidation trains its new slot with it (plain torch, or
:class:`~reverie.workloads.ml.distributed.DDPTrainer` — the same step with DDP's
gradient all-reduce — or a DeepSpeed engine behind the same :class:`Trainer`
protocol); dreaming's M-step and its probes use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


class Trainer(Protocol):
    """What a training loop needs from the optimiser side (plain torch, DDP or a DeepSpeed engine)."""

    def backward_and_step(self, loss: torch.Tensor) -> None: ...


class TorchTrainer:
    """AdamW (no weight decay) over ``params``; the gradient norm clipped to ``max_grad_norm`` (0: no clipping)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], *, lr: float, max_grad_norm: float) -> None:
        self.params = list(params)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.max_grad_norm = max_grad_norm

    def backward_and_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        return dict(self.optimizer.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
