"""Servable forms of a generation: what an off-the-shelf server loads with no Reverie code.

A generation folder (:mod:`reverie.workloads.modelio`) holds the frozen base
weights and one LoRA slot per sleep under ``slots/``.  A server pointed at it
reads ``config.json`` + ``model.safetensors`` and serves the base as it was
before any sleep.  This module writes the two forms a server can load:

* **merged** — every slot folded into the weights, ``W' = W + Σᵢ sᵢ Bᵢ Aᵢ``
  (``sᵢ = αᵢ / rᵢ``), saved as a plain Hugging Face folder (``config.json``,
  ``generation_config.json``, ``model.safetensors``, the tokenizer files).
  ``AutoModelForCausalLM.from_pretrained``, vLLM, TGI and KServe's Hugging Face
  runtime load it unchanged.
* **adapter** — one standard PEFT LoRA adapter over the unchanged base.  The N
  slots are exactly one adapter of rank ``Σᵢ rᵢ``:
  ``Σᵢ sᵢ Bᵢ Aᵢ = [s₁B₁ … s_NB_N] [A₁; …; A_N]``, with ``lora_alpha = r`` so
  PEFT's own scaling is 1 (the stacking is
  :func:`reverie.workloads.generation.combine_adapters`, the same one the vLLM
  backend serves slots with).  ``peft.PeftModel.from_pretrained`` and vLLM's
  LoRA serving load it; its ``base_model_name_or_path`` names the base.

Both are written atomically (assembled beside the target, renamed into place)
and carry ``servable.json``: which generation, which slots, which form, and
the generation's content hash, so a reader can tell an export is complete and
what it was made from.  A generation without slots *is* its base model: its
merged form is a copy of it, and it has no adapter form.
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

from reverie.api.lineage import ServableForm
from reverie.workloads.modelio import (
    LEDGER,
    SLOTS_DIR,
    GenerationError,
    content_hash,
    is_remote,
    local_path,
    read_ledger,
    stage_in,
    stage_out,
)

MANIFEST = "servable.json"
# Files of a generation folder that describe Reverie, not the model: a server needs none of them.
_NOT_SERVED = frozenset({LEDGER, "result.json", MANIFEST})
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


class ExportError(GenerationError):
    """A generation that cannot be exported in the asked form; the message says why and what to do."""


def slot_dirs(folder: Path) -> list[Path]:
    """The slot folders of a generation, in ledger order, each checked to be a plain LoRA adapter."""
    dirs = []
    for entry in read_ledger(folder)["slots"]:
        d = folder / SLOTS_DIR / entry["name"]
        if not (d / "adapter_config.json").is_file() or not (d / "adapter_model.safetensors").is_file():
            raise ExportError(f"{folder}: slot {entry['name']!r} is listed in {LEDGER} but {d} is incomplete")
        cfg = json.loads((d / "adapter_config.json").read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ExportError(f"{d}: a {cfg.get('peft_type')} adapter; only LoRA slots can be exported")
        # Features a plain ``W + s·B·A`` fold with one (r, alpha) per slot does not cover.
        unsupported = {k: cfg.get(k) for k in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern") if cfg.get(k)}
        if cfg.get("bias", "none") != "none":
            unsupported["bias"] = cfg["bias"]
        if unsupported:
            raise ExportError(f"{d}: adapter_config sets {unsupported}; export folds plain LoRA slots only")
        dirs.append(d)
    return dirs


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer (and any other non-weight, non-Reverie file) as it was saved, byte for byte."""
    for path in src.iterdir():
        if not path.is_file() or path.name in _NOT_SERVED or path.name in ("config.json", "generation_config.json"):
            continue
        if path.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(path, dst / path.name)


def _stored_dtype(config: Any) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def stacked_adapter(dirs: Sequence[Path], out: Path) -> Path:
    """Write the slots of ``dirs`` as one rank-Σrᵢ adapter (scaling folded into B, ``lora_alpha = r``)."""
    from reverie.workloads.generation import combine_adapters

    return combine_adapters(dirs, out)


def fold_adapter(model: Any, adapter: Path) -> None:
    """``W += B @ A`` for every module of a scaling-1 adapter (as :func:`stacked_adapter` writes), in fp32."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scaling = cfg["lora_alpha"] / cfg["r"]
    state = load_file(str(adapter / "adapter_model.safetensors"))
    with torch.no_grad():
        for key, a in state.items():
            if ".lora_A." not in key:
                continue
            b = state[key.replace(".lora_A.", ".lora_B.")]
            name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            weight = model.get_submodule(name).weight
            delta = scaling * (b.float() @ a.float())
            weight.add_((delta.T if cfg.get("fan_in_fan_out") else delta).to(weight.dtype))


def _write_merged(folder: Path, tmp: Path, dirs: Sequence[Path]) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = _stored_dtype(AutoConfig.from_pretrained(folder))
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)  # fold in fp32, store as the base was
    if dirs:
        with tempfile.TemporaryDirectory(prefix="reverie-stack-") as scratch:
            fold_adapter(model, stacked_adapter(dirs, Path(scratch) / "adapter"))
    model.to(dtype).save_pretrained(tmp)
    _copy_tokenizer(folder, tmp)


def _write_adapter(folder: Path, tmp: Path, dirs: Sequence[Path], *, base_ref: str) -> None:
    if not dirs:
        raise ExportError(
            f"{folder} has no expert slots, so it has no adapter form: it is its base model; "
            "serve the folder itself, or export --form merged"
        )
    stacked_adapter(dirs, tmp)
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"base_model_name_or_path": base_ref, "inference_mode": True})
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def export_generation(
    uri: str | Path, out: str | Path, *, form: ServableForm | str = ServableForm.MERGED, base_ref: str | None = None,
) -> Path:
    """Write the ``form`` of generation ``uri`` to ``out`` (local path or fsspec URI); returns the local folder.

    ``base_ref`` is what the adapter form names as its base
    (``base_model_name_or_path``); default: the generation's URI, whose
    ``config.json`` + base weights are that base.
    """
    form = ServableForm(form)
    folder = stage_in(str(uri))
    if not (folder / "config.json").is_file():
        raise ExportError(f"{uri}: not a generation folder (no config.json)")
    dirs = slot_dirs(folder)
    remote = is_remote(str(out))
    target = Path(tempfile.mkdtemp(prefix="reverie-export-")) / "servable" if remote else local_path(str(out))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=target.parent))
    try:
        if form == ServableForm.MERGED:
            _write_merged(folder, tmp, dirs)
        else:
            _write_adapter(folder, tmp, dirs, base_ref=base_ref or str(uri))
        manifest = {
            "form": form.value, "generation": str(uri), "generationHash": content_hash(folder),
            "slots": [d.name for d in dirs], "rank": _rank(tmp) if form == ServableForm.ADAPTER else None,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if remote:
        stage_out(target, str(out))
    return target


def _rank(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text())["r"])


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The ``servable.json`` of an export, or None if the folder holds no complete export."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
