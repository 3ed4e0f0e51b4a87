"""The object area: the bytes of a lineage's generations, each file stored once under its sha256.

A sleep changes a generation by one slot, yet a full folder carries the base
weights again (≈ 540 MB per sleep for SmolLM2-135M).  The phases therefore
write **thin** generations: the large files go to the lineage's object area,
once, and the generation folder keeps its manifest and its small files::

    <store>/<lineage>/objects/sha256/<hex>               one file's bytes, named by their sha256
    <store>/<lineage>/<cycle>/<step>/model/manifest.json version 2: every file, which ones are objects, and
                                                         "objects": "../../../objects" (relative: the store can move)
    <store>/<lineage>/<cycle>/<step>/model/slots.json    the ledger and the other files under INLINE_MAX_BYTES

:func:`commit` writes one: the ledger first (from then on the prefix is an
uncommitted generation, which readers refuse), then every object the area
does not hold yet (each one appears whole: a rename on a local disk, one PUT on
an object store), then the small files, then the manifest, the commit marker.
A retry re-sends nothing already there, and the base weights, unchanged by a
sleep, are written once per lineage: the second sleep writes its new slot, its
small files and its manifest.  Readers materialize a thin generation into the
staging cache (:mod:`reverie.workloads.store.staging`: hard links on a local store,
verified downloads from an object store), so every loader still reads a plain
folder.

Objects are never deleted by a phase, and nothing in Reverie deletes a
generation folder (trimming ``status.generations`` keeps the store as it is),
so a retained generation cannot lose an object.  :func:`sweep` reclaims the
objects no committed manifest of the lineage references any more (after
generation folders were deleted by hand); it skips objects younger than a
grace period, since a writer uploads its objects before its manifest.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from reverie.workloads.store import manifest as mf
from reverie.workloads.store import store
from reverie.workloads.store.atomic import replacing
from reverie.workloads.store.manifest import LEDGER, MANIFEST, GenerationError, Manifest

AREA = "objects"
ALGORITHM = "sha256"
# Weights are always objects (an earlier slot is never written again, however
# small).  Other files up to INLINE_MAX_BYTES stay in the generation folder
# (config, ledger, adapter configs, a small tokenizer): a few kB per
# generation, readable where they are; larger ones (a real tokenizer.json) are objects.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
INLINE_MAX_BYTES = 64 * 1024


def stored_as_object(entry: mf.FileEntry, *, inline_max: int = INLINE_MAX_BYTES) -> bool:
    """True for the files a thin generation keeps in the object area."""
    return entry.path.endswith(WEIGHT_SUFFIXES) or entry.size > inline_max


DEFAULT_GRACE_S = 24 * 3600


def area(store_uri: str, lineage: str) -> str:
    """The object area of ``lineage`` in the store at ``store_uri``: ``<store>/<lineage>/objects``."""
    return store.join(store_uri, lineage, AREA)


def object_uri(area_uri: str, sha256: str) -> str:
    return store.join(area_uri, ALGORITHM, sha256)


def _split(uri: str) -> tuple[str, str]:
    """``(scheme prefix, path)``: ``("s3://", "bucket/a/b")``, or ``("", "/abs/path")`` for a local path."""
    if store.is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://", rest.strip("/")
    return "", str(store.local_path(uri).resolve())


def relative(folder_uri: str, area_uri: str) -> str:
    """``area_uri`` as seen from the generation at ``folder_uri`` (both in the same store)."""
    (s1, p1), (s2, p2) = _split(folder_uri), _split(area_uri)
    if s1 != s2 or (s1 and p1.split("/", 1)[0] != p2.split("/", 1)[0]):
        raise GenerationError(f"the object area {area_uri} is not in the same store as the generation {folder_uri}")
    return posixpath.relpath(p2, p1) if s1 else os.path.relpath(p2, p1)


def resolve(folder_uri: str, objects: str) -> str:
    """The object area a manifest's relative ``objects`` names, from the generation at ``folder_uri``."""
    scheme, path = _split(folder_uri)
    if not scheme:
        return os.path.normpath(os.path.join(path, objects))
    joined = posixpath.normpath(posixpath.join(path, objects))
    if joined.startswith("..") or joined.split("/", 1)[0] != path.split("/", 1)[0]:
        raise GenerationError(f"{folder_uri}: its manifest's object area {objects!r} points outside its bucket")
    return scheme + joined


def source_of(folder_uri: str, manifest: Manifest, entry: mf.FileEntry) -> str:
    """Where the bytes of one file of the generation at ``folder_uri`` are."""
    if entry.in_objects:
        assert manifest.objects is not None
        return object_uri(resolve(folder_uri, manifest.objects), entry.sha256)
    return store.join(folder_uri, entry.path)


def held(area_uri: str) -> dict[str, int]:
    """Every object in the area (sha256 → size), from one listing."""
    if not store.is_remote(area_uri):
        root = store.local_path(area_uri) / ALGORITHM
        if not root.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in root.iterdir() if mf.HEX.fullmatch(p.name)}
    listing = store.list_tree(store.join(area_uri, ALGORITHM))
    return {rel: f.size for rel, f in listing.items() if mf.HEX.fullmatch(rel)}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def put(path: Path, area_uri: str, sha256: str) -> int:
    """Store ``path`` as the object ``sha256`` (whole or not at all); returns its size."""
    size = path.stat().st_size
    if not store.is_remote(area_uri):
        # A hard link when the file being committed is on the store's disk: no byte is copied.
        with replacing(store.local_path(object_uri(area_uri, sha256))) as tmp:
            _link_or_copy(path, tmp)
        return size
    fs, key = store.filesystem(object_uri(area_uri, sha256))
    fs.put_file(str(path), key)  # an object appears when its upload completes, never in part
    return size


@dataclass(frozen=True)
class Commit:
    """What :func:`commit` wrote."""

    manifest: Manifest  # the thin manifest now at the generation's URI
    objects_written: int = 0
    objects_bytes: int = 0  # bytes of the objects this commit added to the area
    objects_reused: int = 0  # objects already in the area, not written again
    inline_bytes: int = 0  # bytes of the small files and the manifest
    already_committed: bool = False

    @property
    def bytes_written(self) -> int:
        return self.objects_bytes + self.inline_bytes


def committed(uri: str) -> Manifest | None:
    """The valid manifest at ``uri`` (a generation folder), or None."""
    text = store.read_text(store.join(uri, MANIFEST))
    if text is None:
        return None
    try:
        return mf.parse(text, where=store.join(uri, MANIFEST))
    except GenerationError:
        return None


def commit(folder: str | Path, uri: str, *, area_uri: str, inline_max: int = INLINE_MAX_BYTES) -> Commit:
    """Commit the full generation folder ``folder`` at ``uri`` as a thin generation over ``area_uri``; idempotent.

    A generation with the same content already committed at ``uri`` is left
    as it is; a different one is uncommitted first (its manifest deleted) so no
    reader mixes the two.  ``folder`` is left untouched (its large files may be
    hard-linked into a local area, so do not modify them in place afterwards).
    """
    folder = Path(folder)
    full = mf.read(folder) or mf.write(folder)
    if full.thin:
        raise GenerationError(f"{folder} is a thin generation; commit the full folder it was made from")
    thin = full.thinned(relative(uri, area_uri), to_objects=lambda f: stored_as_object(f, inline_max=inline_max))
    present = committed(uri)
    if present is not None and present.content_hash == thin.content_hash:
        return Commit(manifest=present, already_committed=True)
    if present is not None and store.is_remote(uri):
        fs, path = store.filesystem(store.join(uri, MANIFEST))
        fs.rm(path)
    inline = [f for f in thin.files if not f.in_objects]
    if store.is_remote(uri) and any(f.path == LEDGER for f in inline):
        # The ledger before the objects: a prefix with a ledger and no manifest reads as an unfinished upload.
        fs, path = store.filesystem(store.join(uri, LEDGER))
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(folder / LEDGER), path)
    have = held(area_uri)
    written = reused = objects_bytes = 0
    for f in thin.files:
        if not f.in_objects:
            continue
        if have.get(f.sha256) == f.size:
            reused += 1
            continue
        objects_bytes += put(folder / f.path, area_uri, f.sha256)
        have[f.sha256] = f.size
        written += 1
    inline_bytes = _write_folder(folder, uri, thin, inline)
    done = Commit(
        manifest=thin,
        objects_written=written,
        objects_bytes=objects_bytes,
        objects_reused=reused,
        inline_bytes=inline_bytes,
    )
    # A JSON line like the phases' progress events (the local console shows them; bench/store adds them up).
    print(
        json.dumps(
            {
                "event": "committed",
                "uri": uri,
                "bytes": done.bytes_written,
                "objectsWritten": written,
                "objectsBytes": objects_bytes,
                "objectsReused": reused,
                "inlineBytes": inline_bytes,
            }
        ),
        file=sys.stderr,
        flush=True,
    )
    return done


def _write_folder(folder: Path, uri: str, thin: Manifest, inline: list[mf.FileEntry]) -> int:
    """Write the generation folder itself (small files, then the manifest); returns the bytes written."""
    marker = thin.to_json()
    total = sum(f.size for f in inline) + len(marker.encode())
    if store.is_remote(uri):
        stage = Path(_scratch_dir())
        try:
            for f in inline:
                (stage / f.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / f.path, stage / f.path)
            (stage / MANIFEST).write_text(marker)
            # Small files already there with the same bytes are skipped; files of an earlier,
            # different upload (a full folder's weights) are deleted after the manifest.
            store.upload_tree(stage, uri, commit_first=(LEDGER,), commit_last=(MANIFEST,))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return total
    target = store.local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_scratch_dir(target.parent))
    for f in inline:
        (tmp / f.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / f.path, tmp / f.path)
    (tmp / MANIFEST).write_text(marker)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return total


def _scratch_dir(parent: Path | None = None) -> str:
    return tempfile.mkdtemp(prefix=".tmp-thin-", dir=parent)


# --------------------------------------------------------------------------- #
# Reclaiming space
# --------------------------------------------------------------------------- #


def references(root_uri: str) -> set[str]:
    """The sha256 of every object a committed thin manifest under ``root_uri`` references."""
    found: set[str] = set()
    for rel in store.list_tree(root_uri):
        if rel.rsplit("/", 1)[-1] != MANIFEST or rel.startswith(f"{AREA}/"):
            continue
        folder = store.join(root_uri, rel.rsplit("/", 1)[0]) if "/" in rel else root_uri
        manifest = committed(folder)
        if manifest is not None and manifest.thin:
            found.update(f.sha256 for f in manifest.files if f.in_objects)
    return found


def sweep(lineage_uri: str, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False) -> list[str]:
    """Delete the objects of ``lineage_uri``'s area that no committed manifest under it references; returns them.

    Objects modified less than ``grace_s`` ago are kept: they may belong to a
    generation whose upload has not written its manifest yet.
    """
    area_uri = store.join(lineage_uri, AREA)
    keep = references(lineage_uri)
    now = time.time()
    fs, root = store.filesystem(store.join(area_uri, ALGORITHM), fresh=True)
    doomed = []
    for sha in sorted(set(held(area_uri)) - keep):
        path = f"{root.rstrip('/')}/{sha}"
        try:
            modified = fs.modified(path).timestamp()
        except (FileNotFoundError, NotImplementedError):
            continue
        if now - modified >= grace_s:
            doomed.append(sha)
            if not dry_run:
                fs.rm(path)
    return doomed
