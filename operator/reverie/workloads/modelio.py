"""Generations on disk: load and save a model folder with its expert slots, and hash it.

A generation is a Hugging Face model folder::

    config.json, generation_config.json, model.safetensors   frozen base weights
    tokenizer.json, tokenizer_config.json, ...               tokenizer
    slots.json                                               ledger: slot names in order (+ notes)
    slots/<name>/adapter_config.json                         one PEFT LoRA adapter per sleep
    slots/<name>/adapter_model.safetensors

Base weights never change during a sleep; each sleep adds one slot.  A slot
folder is a standard PEFT adapter, so vLLM (``LoRARequest``) and ``peft`` load
it as is.  Remote URIs (``s3://`` ...) are staged to a local folder through
fsspec: :func:`stage_in` before loading, :func:`stage_out` after saving.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import save_file

SLOTS_DIR = "slots"
LEDGER = "slots.json"
# Files that describe a run, not the model; they never enter the content hash.
HASH_EXCLUDE = frozenset({"result.json"})


class GenerationError(ValueError):
    """A generation folder that cannot be read or written; the message says which and why."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def stage_in(uri: str, *, cache_dir: str | Path | None = None) -> Path:
    """A local folder holding ``uri``'s files (the folder itself when it is local)."""
    if not is_remote(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise GenerationError(f"generation folder {uri!r} does not exist or is not a folder")
        return path
    target = Path(cache_dir or tempfile.mkdtemp(prefix="reverie-stage-"))
    fs, remote = fsspec.core.url_to_fs(uri)
    if not fs.isdir(remote):
        raise GenerationError(f"generation {uri!r} does not exist or is not a folder")
    fs.get(remote.rstrip("/") + "/", str(target), recursive=True)
    return target


def stage_out(folder: str | Path, uri: str) -> str:
    """Copy a local folder to ``uri`` (no-op when ``uri`` is that same local folder)."""
    if not is_remote(uri):
        dst = local_path(uri)
        if dst.resolve() != Path(folder).resolve():
            shutil.copytree(folder, dst, dirs_exist_ok=True)
        return uri
    fs, remote = fsspec.core.url_to_fs(uri)
    fs.put(str(folder).rstrip("/") + "/", remote.rstrip("/"), recursive=True)
    return uri


def content_hash(folder: str | Path) -> str:
    """``sha256:<hex>`` over every file's relative path and bytes, in sorted order (deterministic)."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in HASH_EXCLUDE or rel.startswith("checkpoints/"):
            continue
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


@dataclass
class Generation:
    """A loaded generation: the model (a ``PeftModel`` when it has slots), tokenizer, slot names."""

    model: Any
    tokenizer: Any
    slots: list[str] = field(default_factory=list)
    folder: Path | None = None
    ledger: dict[str, Any] = field(default_factory=dict)


def read_ledger(folder: Path) -> dict[str, Any]:
    path = folder / LEDGER
    if not path.exists():
        return {"slots": []}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GenerationError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("slots"), list):
        raise GenerationError(f"{path}: expected an object with a 'slots' list")
    return data


def load_generation(
    uri: str | Path, *, dtype: torch.dtype = torch.float32, trainable: bool = False, device: str | None = None,
) -> Generation:
    """Load base weights, tokenizer and every slot of a generation; all slots active and frozen."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = stage_in(str(uri))
    if not (folder / "config.json").exists():
        raise GenerationError(f"{uri}: not a model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise GenerationError(f"{uri}: cannot load the model or tokenizer ({exc})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    ledger = read_ledger(folder)
    names = [s["name"] for s in ledger["slots"]]
    for i, name in enumerate(names):
        slot_dir = folder / SLOTS_DIR / name
        if not (slot_dir / "adapter_config.json").exists():
            raise GenerationError(f"{uri}: slot {name!r} is listed in {LEDGER} but {slot_dir} is missing")
        if i == 0:
            model = PeftModel.from_pretrained(model, slot_dir, adapter_name=name, is_trainable=trainable)
        else:
            model.load_adapter(slot_dir, adapter_name=name, is_trainable=trainable)
    if names:
        activate_slots(model, names)
        if not trainable:
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(False)
    if device:
        model.to(device)
    model.eval()
    return Generation(model=model, tokenizer=tokenizer, slots=names, folder=folder, ledger=ledger)


def activate_slots(model: Any, names: Sequence[str]) -> None:
    """Make exactly ``names`` active (their outputs add up); keeps ``requires_grad`` as it was.

    PEFT's ``set_adapter`` marks active adapters trainable; callers decide what
    trains, so the flags are restored afterwards.
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.base_model.set_adapter(list(names))
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])


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


def save_generation(
    model: Any, tokenizer: Any, uri: str | Path, *, slots: Sequence[str] | None = None,
    ledger: dict[str, Any] | None = None,
) -> Path:
    """Write a generation folder (base weights, tokenizer, ``slots``) atomically; returns the local folder.

    ``slots`` defaults to every adapter the model carries, in insertion order.
    The folder is assembled next to the target and renamed into place, so a
    crash never leaves a half-written generation.  For a remote ``uri`` the
    local copy is uploaded with :func:`stage_out`.
    """
    remote = is_remote(str(uri))
    target = Path(tempfile.mkdtemp(prefix="reverie-gen-")) / "model" if remote else local_path(str(uri))
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
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    if remote:
        stage_out(target, str(uri))
    return target
