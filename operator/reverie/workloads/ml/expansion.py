"""Expansion, the "larger self": one new low-rank expert slot per sleep (paper §2.3).

Each sleep adds a named PEFT LoRA adapter ``slot-<n>`` on the chosen MLP/attention
projections.  LoRA initialises its output side B to zero, so unlocking the slot
changes no logit: the expanded student starts exactly where the teacher is.
Earlier slots stay **active and frozen** (PEFT sums every active adapter's
output, ``set_adapter([...])``); only the new slot trains.  A generation keeps
its slots apart instead of merging them into the base, so that it can be rolled
back slot by slot and each slot stays a standard adapter vLLM can serve.  Kept
apart, each slot costs every forward two low-rank matmuls per projection (and
PEFT's per-adapter Python), so a lineage's sleeps would slow down slot by slot:
during a sleep :class:`FoldedSlots` adds the frozen earlier slots into the base
weights once, the forwards run the new slot alone, and the exact base weights
are put back before the generation is saved (its base files stay byte-identical,
so a thin generation writes no new base object).

The paper allocates future slots up front and masks them; adding an adapter per
sleep is the same function (a masked slot with B = 0 contributes nothing) without
reserving memory for sleeps that may never happen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer

from reverie.workloads.store.modelio import activate_slots

SLOT_PREFIX = "slot-"


def next_slot_name(existing: Sequence[str]) -> str:
    """``slot-<n>`` with n one past the highest existing slot number (``slot-0`` first)."""
    numbers = [
        int(s[len(SLOT_PREFIX) :]) for s in existing if s.startswith(SLOT_PREFIX) and s[len(SLOT_PREFIX) :].isdigit()
    ]
    return f"{SLOT_PREFIX}{max(numbers, default=-1) + 1}"


def slot_config(*, rank: int, target_modules: Sequence[str], alpha: float | None = None) -> Any:
    """LoRA config of one expert slot: B = 0 (function-preserving), no dropout (deterministic distillation)."""

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


class FoldedSlots:
    """Frozen slots added into the base weights for the length of a phase; :meth:`restore` undoes it exactly.

    While folded, the model with *no* adapter active computes what it computed with
    ``names`` active (up to float rounding), at the cost of the base alone.  The
    original weights of every touched layer are kept on the CPU and copied back
    bit for bit.  Not for ZeRO-3 (its weights are partitioned across processes);
    raises ``TypeError`` when a slot sits on a layer that is not linear (an embedding).
    """

    def __init__(self, model: Any, names: Sequence[str]) -> None:

        self.model = model
        self.names = list(names)
        self._originals: list[tuple[torch.Tensor, torch.Tensor]] = []

        if any(
            isinstance(m, LoraLayer) and not isinstance(m, LoraLinear) and any(n in m.lora_A for n in self.names)
            for m in model.modules()
        ):
            raise TypeError("only slots on linear layers can be folded into the base weights")
        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, LoraLinear):
                    continue
                present = [n for n in self.names if n in module.lora_A]
                if not present:
                    continue
                weight: torch.Tensor = module.get_base_layer().weight  # type: ignore[assignment]
                self._originals.append((weight, weight.detach().to("cpu", copy=True)))
                for n in present:
                    weight += module.get_delta_weight(n).to(weight.dtype)
        # The folded slots are in the weights now: activating them again would count them twice.
        active = [a for a in model.base_model.active_adapters if a not in self.names]
        if active:
            activate_slots(model, active)

    @contextlib.contextmanager
    def unfolded(self) -> Iterator[None]:
        """The exact base weights for the length of the block (the folded ones come back after it).

        With no adapter active inside it, the model is the base before any of ``names``:
        what a teacher that must not change as the lineage ages reads with.
        """
        with torch.no_grad():
            folded = [(weight, weight.detach().clone()) for weight, _ in self._originals]
            for weight, original in self._originals:
                weight.copy_(original.to(weight.device))
        try:
            yield
        finally:
            with torch.no_grad():
                for weight, value in folded:
                    weight.copy_(value)

    def restore(self) -> None:
        """Put the exact base weights back (call before saving the generation)."""
        with torch.no_grad():
            for weight, original in self._originals:
                weight.copy_(original.to(weight.device))
        self._originals = []
