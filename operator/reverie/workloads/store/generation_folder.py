"""Write one generation folder on local disk, atomically: the layout :mod:`reverie.workloads.store.modelio` describes.

This is the bottom of model I/O: it knows the folder layout (base weights,
tokenizer, ``slots/<name>/``, the ledger, the manifest) and nothing about
where a generation comes from or goes to.  :func:`reverie.workloads.store.modelio.save_generation`
adds remote stores and thin commits on top; :mod:`reverie.workloads.store.pretrained`
uses it to convert a built-in model.  Keeping it below both is what lets the
staging cache resolve ``builtin:`` models without an import circle
(modelio → staging → pretrained → modelio).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from reverie.workloads.store import manifest as mf
from reverie.workloads.store.manifest import LEDGER

SLOTS_DIR = "slots"


def base_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The base weights of a (possibly PEFT-wrapped) model, with the adapter layers stripped."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out: dict[str, torch.Tensor] = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = tensor
    return out


def save_slot(model: Any, name: str, folder: Path) -> None:
    """Write one adapter as a standard PEFT folder."""
    from peft import get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=name)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    model.peft_config[name].save_pretrained(str(folder))


def write_generation_folder(
    model: Any,
    tokenizer: Any,
    target: Path,
    *,
    slots: Sequence[str] | None = None,
    ledger: dict[str, Any] | None = None,
) -> Path:
    """Write base weights, tokenizer, ``slots``, ledger and manifest to the local folder ``target``; returns it.

    ``slots`` defaults to every adapter the model carries, in insertion order.
    The folder is assembled next to ``target`` and renamed into place, so a
    crash never leaves a half-written generation.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.save_pretrained(tmp, state_dict=base_state_dict(model))
    tokenizer.save_pretrained(tmp)
    names = list(slots) if slots is not None else list(getattr(model, "peft_config", {}) or {})
    entries = {s["name"]: s for s in (ledger or {}).get("slots", [])}
    for name in names:
        save_slot(model, name, tmp / SLOTS_DIR / name)
    data = dict(ledger or {})
    data["slots"] = [entries.get(n, {"name": n}) for n in names]
    (tmp / LEDGER).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    mf.write(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
