"""Generations on disk: load and save a model folder with its expert slots, and hash it.

A generation is a Hugging Face model folder::

    config.json, generation_config.json, model.safetensors   frozen base weights
    tokenizer.json, tokenizer_config.json, ...               tokenizer
    slots.json                                               ledger: slot names in order (+ notes)
    slots/<name>/adapter_config.json                         one PEFT LoRA adapter per sleep
    slots/<name>/adapter_model.safetensors
    manifest.json                                            every file's sha256: the commit marker

Base weights never change during a sleep; each sleep adds one slot.  A slot
folder is a standard PEFT adapter, so vLLM (``LoRARequest``) and ``peft`` load
it as is.

The phases write generations **thin** (``save_generation(..., objects_uri=)``,
:mod:`reverie.workloads.store.objects`): the weights live once in the lineage's
object area and the folder keeps the manifest and the small files, so a sleep
stores its new slot, not the base again.  Loading a thin generation
materializes it (staging), so every loader still reads the layout above.

Generations in an object store (``s3://`` ...) or on the Hub (``hf://``) are
read through the staging cache (:func:`stage_in`, :mod:`reverie.workloads.store.staging`)
and written by :func:`stage_out`, which commits a generation the only way an
object store allows: the ledger first, every file, then the manifest
(:mod:`reverie.workloads.store.manifest`).  Readers refuse a generation whose ledger
is there but whose manifest is not.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reverie.workloads.store import manifest as mf
from reverie.workloads.store import objects, staging, store
from reverie.workloads.store.generation_folder import SLOTS_DIR, base_state_dict, save_slot, write_generation_folder
from reverie.workloads.store.manifest import LEDGER, MANIFEST, GenerationError, Manifest
from reverie.workloads.store.store import is_remote, local_path

__all__ = [
    "LEDGER",
    "MANIFEST",
    "SLOTS_DIR",
    "GenerationError",
    "LoadedGeneration",
    "base_state_dict",
    "content_hash",
    "is_remote",
    "load_generation",
    "local_path",
    "publish_generation",
    "save_generation",
    "save_slot",
    "stage_in",
    "stage_out",
]

# Pointer files of a checkpoint tree: uploaded after the folders they name.
CHECKPOINT_POINTERS = ("state.json", "latest")


def stage_in(uri: str | Path) -> Path:
    """A local folder holding the generation at ``uri``: the folder itself when it is local,
    else its verified copy in the staging cache."""
    return staging.stage_generation(str(uri), cache=staging.StagingCache.from_env()).folder


def publish_generation(folder: str | Path, uri: str, *, cache: bool = True) -> Manifest:
    """Upload the generation in ``folder`` to ``uri`` and commit it; idempotent.

    The ledger goes first (from then on the prefix is an uncommitted generation,
    which readers refuse), then the other files, then the manifest.  A retry
    sends only the files not already there with the same bytes; a generation
    already committed with the same content hash is left as it is.  A different
    generation already committed there is uncommitted first (its manifest is
    deleted) so no reader ever mixes the two.  With ``cache`` the generation
    also enters this node's staging cache, so the next phase here needs no download.
    """
    folder = Path(folder)
    local = mf.read(folder) or mf.write(folder)
    if local.thin:
        if objects.committed(uri) == local:
            return local  # the thin generation this folder is the local copy of, already committed there
        raise GenerationError(
            f"{folder} is a thin generation (its large files are in its store's object area); "
            "publish the full folder it was written from, or load it and save it again"
        )
    marker = store.join(uri, MANIFEST)
    text = store.read_text(marker)
    if text is not None:
        try:
            remote: Manifest | None = mf.parse(text, where=marker)
        except GenerationError:
            remote = None
        if remote is not None and remote.content_hash == local.content_hash:
            if cache:
                staging.adopt(folder, local, cache=staging.StagingCache.from_env(), source=uri)
            return local
        fs, path = store.filesystem(marker)
        fs.rm(path)
    store.upload_tree(folder, uri, commit_first=(LEDGER,), commit_last=(MANIFEST,))
    if cache:
        staging.adopt(folder, local, cache=staging.StagingCache.from_env(), source=uri)
    return local


def stage_out(folder: str | Path, uri: str) -> str:
    """Copy a local folder or file to ``uri``; returns ``uri``.

    A generation folder (one with a manifest) is committed with
    :func:`publish_generation`; any other folder (a checkpoint tree) is mirrored
    with its pointer files written last.  No-op when ``uri`` is that same local path.
    """
    src = Path(folder)
    if not is_remote(uri):
        dst = local_path(uri)
        if dst.resolve() != src.resolve():
            if src.is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            else:
                shutil.copytree(src, dst, dirs_exist_ok=True)
        return uri
    if src.is_file():
        fs, path = store.filesystem(uri)
        fs.put_file(str(src), path)
    elif (src / MANIFEST).is_file():
        publish_generation(src, uri)
    else:
        store.upload_tree(src, uri, commit_last=CHECKPOINT_POINTERS)
    return uri


def content_hash(folder: str | Path) -> str:
    """``sha256:<hex>`` of a generation's files (see :mod:`reverie.workloads.store.manifest`); deterministic.

    A full folder is hashed from its bytes; a thin one (its large files in the
    object area) has the hash its manifest was committed with, the same as its full copy's.
    """
    local = mf.read(folder) if (Path(folder) / MANIFEST).is_file() else None
    if local is not None and local.thin:
        return local.content_hash
    return mf.build(folder).content_hash


@dataclass
class LoadedGeneration:
    """A loaded generation: the model (a ``PeftModel`` when it has slots), tokenizer, slot names."""

    model: Any
    tokenizer: Any
    slots: list[str] = field(default_factory=list)
    folder: Path | None = None
    ledger: dict[str, Any] = field(default_factory=dict)


def read_ledger(folder: Path) -> dict[str, Any]:
    """The ledger of a generation; a plain model folder (generation 0) has an empty one."""
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
    uri: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    trainable: bool = False,
    device: str | None = None,
) -> LoadedGeneration:
    """Load base weights, tokenizer and every slot of a generation; all slots active and frozen."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staged = staging.stage_generation(str(uri), cache=staging.StagingCache.from_env())
    folder = staged.folder
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
    if not ledger["slots"] and "base" not in ledger:
        # Generation 0: every descendant copies its ledger, so each one says which base it grew from.
        base = {"uri": str(uri).split("@", 1)[0] if staged.revision else str(uri)}
        if staged.revision:
            base["revision"] = staged.revision
        if staged.content_hash:
            base["contentHash"] = staged.content_hash
        ledger["base"] = base
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
    return LoadedGeneration(model=model, tokenizer=tokenizer, slots=names, folder=folder, ledger=ledger)


def activate_slots(model: Any, names: Sequence[str]) -> None:
    """Make exactly ``names`` active (their outputs add up); keeps ``requires_grad`` as it was.

    PEFT's ``set_adapter`` marks active adapters trainable; callers decide what
    trains, so the flags are restored afterwards.
    """
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.base_model.set_adapter(list(names))
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])


def save_generation(
    model: Any,
    tokenizer: Any,
    uri: str | Path,
    *,
    slots: Sequence[str] | None = None,
    ledger: dict[str, Any] | None = None,
    objects_uri: str | None = None,
) -> Path:
    """Write a generation folder (base weights, tokenizer, ``slots``, manifest) atomically; returns the local folder.

    ``slots`` defaults to every adapter the model carries, in insertion order.
    The folder is assembled next to the target and renamed into place, so a
    crash never leaves a half-written generation.  For a remote ``uri`` the
    local copy is uploaded and committed with :func:`stage_out`.

    With ``objects_uri`` (the lineage's object area, :func:`reverie.workloads.store.objects.area`)
    the generation is committed **thin** at ``uri``: its large files go to the
    area unless it holds them already, so an unchanged base is never written
    twice (:func:`_save_thin`).
    """
    if objects_uri is not None:
        return _save_thin(model, tokenizer, str(uri), slots=slots, ledger=ledger, objects_uri=objects_uri)
    remote = is_remote(str(uri))
    target = Path(tempfile.mkdtemp(prefix="reverie-gen-")) / "model" if remote else local_path(str(uri))
    write_generation_folder(model, tokenizer, target, slots=slots, ledger=ledger)
    if remote:
        stage_out(target, str(uri))
    return target


def _save_thin(
    model: Any,
    tokenizer: Any,
    uri: str,
    *,
    slots: Sequence[str] | None,
    ledger: dict[str, Any] | None,
    objects_uri: str,
) -> Path:
    """Assemble the full folder in scratch space, commit it thin at ``uri``; returns a local folder of it.

    On a local store the scratch folder is on the store's disk (beside the
    target), so a new object is a hard link of the file just written, and the
    returned folder is the thin generation itself.  For an object store the
    full copy enters this node's staging cache (the next phase here downloads
    nothing) and that copy is returned; without a cache, the scratch folder is.
    """
    remote = is_remote(uri)
    parent = None if remote else local_path(uri).parent
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-full-", dir=parent)) / "model"
    try:
        save_generation(model, tokenizer, scratch, slots=slots, ledger=ledger)
        objects.commit(scratch, uri, area_uri=objects_uri)
        if not remote:
            return local_path(uri)
        full = mf.read(scratch)
        assert full is not None
        cache = staging.StagingCache.from_env()
        staging.adopt(scratch, full, cache=cache, source=uri)
        if cache is None:
            kept = Path(tempfile.mkdtemp(prefix="reverie-gen-")) / "model"
            os.replace(scratch, kept)
            return kept
        return cache.entry(full.content_hash)
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)
