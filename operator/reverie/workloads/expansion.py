"""Expansion, the "larger self": one new low-rank expert slot per sleep (paper §2.3).

Each sleep adds a named PEFT LoRA adapter ``slot-<n>`` on the chosen MLP/attention
projections.  LoRA initialises its output side B to zero, so unlocking the slot
changes no logit: the expanded student starts exactly where the teacher is.
Earlier slots stay **active and frozen** (PEFT sums every active adapter's
output, ``set_adapter([...])``); only the new slot trains.  We keep slots apart
instead of merging earlier ones into the base so that a generation can be rolled
back slot by slot and each slot stays a standard adapter vLLM can serve; the
cost is one extra low-rank matmul per slot per layer, small next to the MLP.

The paper allocates future slots up front and masks them; adding an adapter per
sleep is the same function (a masked slot with B = 0 contributes nothing) without
reserving memory for sleeps that may never happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

SLOT_PREFIX = "slot-"


def next_slot_name(existing: Sequence[str]) -> str:
    """``slot-<n>`` with n one past the highest existing slot number (``slot-0`` first)."""
    numbers = [
        int(s[len(SLOT_PREFIX) :]) for s in existing if s.startswith(SLOT_PREFIX) and s[len(SLOT_PREFIX) :].isdigit()
    ]
    return f"{SLOT_PREFIX}{max(numbers, default=-1) + 1}"


def slot_config(*, rank: int, target_modules: Sequence[str], alpha: float | None = None) -> Any:
    """LoRA config of one expert slot: B = 0 (function-preserving), no dropout (deterministic distillation)."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,  # type: ignore[arg-type]  # peft annotates int, uses a float
        lora_dropout=0.0,
        target_modules=list(target_modules),
        init_lora_weights=True,
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_slot(
    model: Any,
    *,
    rank: int,
    target_modules: Sequence[str],
    name: str | None = None,
    alpha: float | None = None,
    keep_active: Sequence[str] | None = None,
) -> tuple[Any, str]:
    """Add a new expert slot; returns the (PEFT) model and the slot's name.

    Afterwards exactly the earlier slots (or ``keep_active``) plus the new one are
    active, and only the new slot's parameters require gradients.
    """
    from peft import PeftModel, get_peft_model

    from reverie.workloads.modelio import activate_slots

    existing = list(getattr(model, "peft_config", {}) or {}) if isinstance(model, PeftModel) else []
    name = name or next_slot_name(existing)
    if name in existing:
        raise ValueError(f"expert slot {name!r} already exists; slots are {existing}")
    config = slot_config(rank=rank, target_modules=target_modules, alpha=alpha)
    if isinstance(model, PeftModel):
        model.add_adapter(name, config)
    else:
        model = get_peft_model(model, config, adapter_name=name)
    active = [*(keep_active if keep_active is not None else existing), name]
    activate_slots(model, active)
    freeze_all_but(model, name)
    return model, name


def slot_parameters(model: Any, name: str) -> dict[str, torch.nn.Parameter]:
    """The parameters that belong to slot ``name`` (PEFT names them ``...lora_A.<name>.weight``)."""
    token = f".{name}."
    out = {n: p for n, p in model.named_parameters() if "lora_" in n and token in n}
    if not out:
        raise ValueError(f"the model has no parameters for expert slot {name!r}")
    return out


def freeze_all_but(model: Any, name: str) -> list[torch.nn.Parameter]:
    """Freeze every parameter except slot ``name``'s; returns the trainable ones."""
    train = slot_parameters(model, name)
    for n, p in model.named_parameters():
        p.requires_grad_(n in train)
    return list(train.values())
