"""Training precision: the dtype the weights load in and the scope the forwards run in.

``fp32`` is fp32 everywhere. ``bf16`` on a GPU loads the weights in bf16 (DeepSpeed's
bf16 mode when ZeRO is on). On a CPU it keeps fp32 weights, fp32 optimizer state and
fp32 losses (every loss upcasts its logits) and runs the forwards under bf16 autocast:
matmuls in bf16, a third off a long-sequence step on a CPU with AVX512-BF16 or AMX
(``bench/science/RESULTS.md``, "bf16 autocast on CPU"); on a CPU without them it is
correct but not faster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from reverie.api.steps import Precision


def weights_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The dtype to load the model's weights in."""
    return torch.bfloat16 if precision == "bf16" and device.type == "cuda" else torch.float32


@contextlib.contextmanager
def compute_scope(precision: Precision, device: torch.device) -> Iterator[None]:
    """Forwards (and their backwards) inside run in ``precision`` on ``device``."""
    if precision == "bf16" and device.type == "cpu":
        # No weight cache: it keeps the first bf16 copy of a trainable weight for the whole
        # scope, so a scope around a training loop would train against stale weights.
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            yield
    else:
        yield
