"""Servable forms of a generation: what an off-the-shelf server loads with no Reverie code.

A generation folder (:mod:`reverie.workloads.store.modelio`) holds the frozen base
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
  :func:`reverie.workloads.ml.sampling.combine_adapters`, the same one the vLLM
  backend serves slots with).  ``peft.PeftModel.from_pretrained`` and vLLM's
  LoRA serving load it; its ``base_model_name_or_path`` names the base.

The generation is read with :func:`~reverie.workloads.store.modelio.load_generation`,
exactly as evaluation reads it; the fold happens in fp32 and the merged weights
are stored in the dtype the base was stored in.  Both forms are written
atomically (assembled beside the target, renamed into place)
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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from reverie.api.lineage import ServableForm
from reverie.workloads.ml.sampling import combine_adapters
from reverie.workloads.store import manifest as mf
from reverie.workloads.store import objects
from reverie.workloads.store.modelio import (
    LEDGER,
    GenerationError,
    LoadedGeneration,
    content_hash,
    is_remote,
    load_generation,
    local_path,
    save_slot,
    stage_out,
)

SERVABLE_MANIFEST = "servable.json"
# Files of a generation folder that describe Reverie, not the model: a server needs none of them.
_NOT_SERVED = frozenset({LEDGER, "result.json", SERVABLE_MANIFEST})
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


class ExportError(GenerationError):
    """A generation that cannot be exported in the asked form; the message says why and what to do."""


def check_slots(gen: LoadedGeneration) -> None:
    """Every slot must be a plain LoRA adapter: one (r, alpha) per slot, no DoRA, bias or extra modules."""
    for name in gen.slots:
        cfg = gen.model.peft_config[name]
        if str(getattr(cfg, "peft_type", "LORA")).rsplit(".", 1)[-1] != "LORA":
            raise ExportError(
                f"{gen.folder}: slot {name!r} is a {cfg.peft_type} adapter; only LoRA slots can be exported"
            )
        unsupported = {
            k: getattr(cfg, k, None)
            for k in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern")
            if getattr(cfg, k, None)
        }
        if getattr(cfg, "bias", "none") != "none":
            unsupported["bias"] = cfg.bias
        if unsupported:
            raise ExportError(f"{gen.folder}: slot {name!r} sets {unsupported}; export folds plain LoRA slots only")


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


def stacked_adapter(gen: LoadedGeneration, scratch: Path) -> Path:
    """Write the slots of ``gen`` as one rank-Σrᵢ adapter (scaling folded into B, ``lora_alpha = r``) under ``scratch``.

    The slots are taken from the loaded generation (each saved as the standard
    PEFT folder :func:`~reverie.workloads.store.modelio.save_slot` writes), so where
    a generation keeps its slots is :mod:`reverie.workloads.store.modelio`'s business alone.
    """

    dirs = []
    for name in gen.slots:
        save_slot(gen.model, name, scratch / "slots" / name)
        dirs.append(scratch / "slots" / name)
    return combine_adapters(dirs, scratch / "stacked")


def fold_adapter(model: Any, adapter: Path) -> None:
    """``W += B @ A`` for every module of a scaling-1 adapter (as :func:`stacked_adapter` writes), in fp32."""

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


def _write_merged(gen: LoadedGeneration, stacked: Path | None, tmp: Path) -> None:

    assert gen.folder is not None
    dtype = _stored_dtype(AutoConfig.from_pretrained(gen.folder))
    # Loaded in fp32 (load_generation's default): fold there, store as the base was stored.
    model: Any = gen.model.unload() if gen.slots else gen.model  # the base, LoRA layers removed unmerged
    if stacked is not None:
        fold_adapter(model, stacked)
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(tmp)
    _copy_tokenizer(gen.folder, tmp)


def _write_adapter(gen: LoadedGeneration, stacked: Path | None, tmp: Path, *, base_ref: str) -> None:
    if stacked is None:
        raise ExportError(
            f"{gen.folder} has no expert slots, so it has no adapter form: it is its base model; "
            "serve the folder itself, or export --form merged"
        )
    for path in stacked.iterdir():
        shutil.copy2(path, tmp / path.name)
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"base_model_name_or_path": base_ref, "inference_mode": True})
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def export_generation(
    uri: str | Path,
    out: str | Path,
    *,
    form: ServableForm | str = ServableForm.MERGED,
    base_ref: str | None = None,
) -> Path:
    """Write the ``form`` of generation ``uri`` to ``out`` (local path or fsspec URI); returns the local folder.

    ``base_ref`` is what the adapter form names as its base
    (``base_model_name_or_path``); default: the generation's URI, whose
    ``config.json`` + base weights are that base.
    """
    form = ServableForm(form)
    gen = load_generation(uri)  # base + every slot, exactly as evaluation loads it
    assert gen.folder is not None
    check_slots(gen)
    remote = is_remote(str(out))
    target = Path(tempfile.mkdtemp(prefix="reverie-export-")) / "servable" if remote else local_path(str(out))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="reverie-stack-") as scratch:
            stacked = stacked_adapter(gen, Path(scratch)) if gen.slots else None
            if form == ServableForm.MERGED:
                _write_merged(gen, stacked, tmp)
            else:
                _write_adapter(gen, stacked, tmp, base_ref=base_ref or _default_base_ref(uri, gen))
        manifest = {
            "form": form.value,
            "generation": str(uri),
            "generationHash": content_hash(gen.folder),
            "slots": list(gen.slots),
            "rank": _rank(tmp) if form == ServableForm.ADAPTER else None,
        }
        (tmp / SERVABLE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if remote:
        stage_out(target, str(out))
    return target


def _default_base_ref(uri: str | Path, gen: LoadedGeneration) -> str:
    """What the adapter form names as its base when the caller names none.

    A full generation folder holds its base weights, so it names itself.  A
    thin one (its weights in the store's object area, which no server reads)
    names the base model it grew from, recorded in its ledger.
    """

    where = str(uri)
    marker = (
        objects.committed(where)
        if is_remote(where)
        else (mf.read(local_path(where)) if (local_path(where) / mf.MANIFEST).is_file() else None)
    )
    if marker is None or not marker.thin:
        return where
    base = (gen.ledger.get("base") or {}).get("uri")
    if not base:
        raise ExportError(f"{uri} is a thin generation and its ledger names no base model; pass base_ref (--base-ref)")
    return str(base)


def _rank(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text())["r"])


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The ``servable.json`` of an export, or None if the folder holds no complete export."""
    path = Path(folder) / SERVABLE_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
