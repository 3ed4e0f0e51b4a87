"""Checkpoints of the training phases (consolidation, dreaming): atomic, resumable, small (only the new slot trains).

Layout under ``<output_uri>/checkpoints/``::

    step-00000050/slot.safetensors    the new slot's weights
    step-00000050/optimizer.pt        optimiser state (moments), when there is one
    step-00000050/state.json          {"step", "slot", ...}: the phase's own state (history, dreams)
    latest                            name of the newest complete checkpoint

Each checkpoint is written into a temporary sibling folder and renamed into
place, then ``latest`` is replaced atomically; a crash mid-write leaves the
previous checkpoint intact.  Data order depends only on (seed, step), so a
restart that loads step N continues with exactly the batches a run without the
crash would have used.  Remote output URIs are handled by staging: checkpoints
are written locally and mirrored with :func:`reverie.workloads.store.modelio.stage_out`,
which uploads a checkpoint's files before its ``state.json`` and ``latest`` last,
so the pointer in the store only ever names a complete checkpoint;
:func:`load_checkpoint` downloads just the checkpoint it names.

This module is the one place that decides which checkpoint a run resumes
from: :func:`latest_checkpoint` under a local root, :func:`fetch_checkpoint`
in an object store, :func:`resume_point` for the local runner relaunching an
attempt.  Where the root is comes from the Job contract
(:func:`reverie.core.contract.checkpoint_root`).  torch and safetensors are
imported where a checkpoint is saved or loaded, so the local runner can ask
:func:`resume_point` without loading torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reverie.workloads.store import store
from reverie.workloads.store.atomic import write_atomic
from reverie.workloads.store.store import is_remote, local_path

if TYPE_CHECKING:
    import torch

LATEST = "latest"
KEEP = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message says which and why."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    folder: Path
    step: int
    slot: str
    slot_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    root: str | Path,
    *,
    step: int,
    slot: str,
    slot_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and point ``latest`` at it; keeps the newest two."""
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    save_file({k: v.detach().contiguous().cpu() for k, v in slot_state.items()}, str(tmp / "slot.safetensors"))
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    state = {"step": step, "slot": slot, **(meta or {})}
    (tmp / "state.json").write_text(json.dumps(state, sort_keys=True))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(root / LATEST, name.encode())
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if (folder / "state.json").is_file():
            return folder
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def resume_point(root_uri: str) -> str | None:
    """What a relaunched attempt resumes from, given its checkpoints root; None when nothing complete is there.

    On a local disk: the newest complete checkpoint's folder.  In an object
    store: the root itself once its ``latest`` pointer exists (uploaded after
    the checkpoint it names); :func:`load_checkpoint` downloads just that one.
    """

    if store.is_remote(root_uri):
        return root_uri if store.exists(store.join(root_uri, LATEST)) else None
    found = latest_checkpoint(store.local_path(root_uri))
    return None if found is None else str(found)


def fetch_checkpoint(uri: str) -> Path | None:
    """Download the checkpoint ``uri`` names (a checkpoint, or a root with ``latest``) to a temporary folder."""

    listing = store.list_tree(uri)
    if "state.json" in listing:
        prefix, files = "", [rel for rel in listing if "/" not in rel]
    else:
        pointer = store.read_text(store.join(uri, LATEST))
        names = [pointer.strip()] if pointer else []
        # No pointer (yet): the newest folder whose state.json, uploaded last, is there.
        names += sorted({rel.split("/", 1)[0] for rel in listing if rel.endswith("/state.json")}, reverse=True)
        names = [n for n in names if f"{n}/state.json" in listing]
        if not names:
            return None
        prefix = names[0] + "/"
        files = [rel for rel in listing if rel.startswith(prefix)]
    target = Path(tempfile.mkdtemp(prefix="reverie-resume-"))
    for rel in files:
        store.download_file(store.join(uri, rel), target / rel[len(prefix) :])
    return target


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint folder, or the newest one under a checkpoints root (local or in the store)."""
    import torch
    from safetensors.torch import load_file

    if is_remote(str(path)):
        folder = fetch_checkpoint(str(path))
    else:
        local = local_path(str(path))
        folder = local if (local / "state.json").is_file() else latest_checkpoint(local)
    if folder is None:
        raise CheckpointError(f"resume_from {path!s}: no complete checkpoint there (no state.json)")
    try:
        meta = json.loads((folder / "state.json").read_text())
        slot_state = load_file(str(folder / "slot.safetensors"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"resume_from {folder}: unreadable checkpoint ({exc})") from exc
    opt_path = folder / "optimizer.pt"
    optimizer_state = torch.load(opt_path, weights_only=False) if opt_path.is_file() else None
    return Checkpoint(
        folder=folder,
        step=int(meta["step"]),
        slot=str(meta["slot"]),
        slot_state=slot_state,
        optimizer_state=optimizer_state,
        meta=meta,
    )


def restore_slot(c: Checkpoint, params: Mapping[str, Any], *, slot: str, uri: str) -> None:
    """Copy the checkpoint's slot weights into ``params`` (the slot this attempt added, same name)."""
    import torch

    if c.slot != slot:
        raise CheckpointError(f"resume_from {uri}: checkpoint is for slot {c.slot}, this run adds {slot}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(c.slot_state[name].to(p))
