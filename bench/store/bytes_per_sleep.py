"""Bytes a sleep adds to the model store: full generation folders (before) and thin ones (after).

Each sleep writes two generations, as a cycle does: consolidation (parent +
one slot of rank ``expertRank`` on every projection, the ConsolidationSpec
defaults) and dreaming (+ one slot of rank ``loraRank``, the DreamingSpec
default).  The slots get random weights (their size, not their values,
decides the bytes); no training runs, so this measures the store alone.
Generation 0 is the base model folder, outside the store, as a lineage's
``baseModel.uri`` is.

- **before**: ``save_generation(model, tokenizer, <store>/<lineage>/c<i>/<phase>/model)``,
  a full folder (base weights, tokenizer, every slot, manifest v1): what the
  phases wrote before thin generations;
- **after**: the same call with ``objects_uri=objects.area(store, lineage)``,
  what consolidation and dreaming call now: a thin generation over the
  lineage's object area.

"Stored" is the growth of the store (every file's size, summed, before and
after the write; for S3 from a listing).  For S3 the script also reports
the bytes the client uploaded (every ``put_file`` of s3fs, counted in process).  "Scratch" (after only) is the full folder each
thin write serializes to local disk and deletes once committed.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/store/bytes_per_sleep.py \\
        --model tiny --model smollm2 --sleeps 3 --s3 --out bench/store/bytes_per_sleep.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from s3server import S3Server, minio_binary  # noqa: E402

LINEAGE = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


UPLOADED = [0]


def count_uploads() -> None:
    """Count the bytes s3fs uploads (every file the store layer sends goes through ``_put_file``)."""
    import s3fs

    put = s3fs.S3FileSystem._put_file

    async def _put_file(self: Any, lpath: str, rpath: str, *args: Any, **kwargs: Any) -> Any:
        UPLOADED[0] += os.path.getsize(lpath)
        return await put(self, lpath, rpath, *args, **kwargs)

    s3fs.S3FileSystem._put_file = _put_file  # type: ignore[method-assign]


def stored_bytes(store_uri: str) -> int:
    from reverie.workloads.store import store

    if store.is_remote(store_uri):
        return sum(f.size for f in store.list_tree(store_uri).values())
    root = Path(store_uri)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def base_folder(name: str, workdir: Path) -> Path:
    if name == "smollm2":
        from reverie.workloads.store.pretrained import smollm2_folder

        return smollm2_folder()
    from reverie.workloads.ml.tiny import build_base_generation

    return build_base_generation(workdir / "tiny-g0", seed=0, steps=20).folder


def add_trained_slot(gen: Any, *, rank: int, target_modules: list[str], seed: int) -> tuple[Any, list[str]]:
    import torch

    from reverie.workloads.ml.expansion import add_slot, slot_parameters

    model, name = add_slot(gen.model, rank=rank, target_modules=target_modules, keep_active=list(gen.slots))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in slot_parameters(model, name).values():
            p.add_(0.01 * torch.randn_like(p))
    return model, [*gen.slots, name]


def run_sleeps(base: Path, store_uri: str, *, thin: bool, sleeps: int) -> list[dict[str, Any]]:
    from reverie.api.steps import ConsolidationSpec, DreamingSpec
    from reverie.workloads.store import manifest as mf
    from reverie.workloads.store import objects, store
    from reverie.workloads.store.modelio import load_generation, save_generation

    consolidation, dreaming = ConsolidationSpec(), DreamingSpec()
    targets = list(consolidation.target_modules)
    area = objects.area(store_uri, LINEAGE) if thin else None
    parent = str(base)
    rows = []
    for i in range(1, sleeps + 1):
        row: dict[str, Any] = {"sleep": i}
        for phase, rank in (("consolidation", consolidation.expert_rank), ("dreaming", dreaming.lora_rank)):
            gen = load_generation(parent)
            model, slots = add_trained_slot(gen, rank=rank, target_modules=targets, seed=100 * i + rank)
            uri = store.join(store_uri, LINEAGE, f"c{i}", phase, "model")
            stored, uploaded = stored_bytes(store_uri), UPLOADED[0]
            started = time.monotonic()
            folder = save_generation(model, gen.tokenizer, uri, slots=slots, ledger=gen.ledger, objects_uri=area)
            seconds = time.monotonic() - started
            manifest = mf.read(folder)
            assert manifest is not None
            slot_file = f"slots/{slots[-1]}/adapter_model.safetensors"
            out: dict[str, Any] = {
                "stored_bytes": stored_bytes(store_uri) - stored,
                "new_slot_bytes": next(f.size for f in manifest.files if f.path == slot_file),
                "generation_bytes": manifest.total_bytes,
                "seconds": round(seconds, 1),
            }
            if store.is_remote(store_uri):
                out["uploaded_bytes"] = UPLOADED[0] - uploaded
            if thin:
                out["scratch_bytes"] = manifest.total_bytes
            row[phase] = out
            parent = uri
            del gen, model
        row["stored_bytes"] = sum(row[p]["stored_bytes"] for p in ("consolidation", "dreaming"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    # The last generation loads from the store as the next phase would load it.
    again = load_generation(parent)
    assert again.slots == slots
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=["tiny", "smollm2"], help="repeatable (default tiny)")
    parser.add_argument("--sleeps", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="also on a real MinIO (bash hack/install-minio.sh)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    workdir = Path(tempfile.mkdtemp(prefix="reverie-bench-bytes-"))
    server = None
    if args.s3:
        if not minio_binary().is_file():
            raise SystemExit(f"{minio_binary()} missing: bash hack/install-minio.sh")
        (workdir / "minio").mkdir()
        server = S3Server(workdir / "minio", port=free_port(), console_port=free_port())
        server.start()
        os.environ.update(server.env())
        count_uploads()
    results: dict[str, Any] = {"sleeps": args.sleeps, "runs": []}
    try:
        for name in args.model or ["tiny"]:
            base = base_folder(name, workdir)
            base_bytes = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
            for where in ["local", "s3"] if server else ["local"]:
                for thin in (False, True):
                    label = f"{name} {where} {'after (thin)' if thin else 'before (full)'}"
                    print(f"== {label}", flush=True)
                    # A fresh store and staging cache per run (the cache beside the store: hard links on one disk).
                    tag = f"{name}-{where}-{'thin' if thin else 'full'}"
                    os.environ["REVERIE_STAGING_CACHE"] = str(workdir / "cache" / tag)
                    store_uri = server.new_bucket() if where == "s3" and server else str(workdir / "store" / tag)
                    rows = run_sleeps(base, store_uri, thin=thin, sleeps=args.sleeps)
                    results["runs"].append(
                        {"model": name, "store": where, "thin": thin, "base_folder_bytes": base_bytes, "rows": rows}
                    )
                    if where == "local":
                        shutil.rmtree(store_uri, ignore_errors=True)
                    shutil.rmtree(workdir / "cache" / tag, ignore_errors=True)
    finally:
        if server:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
