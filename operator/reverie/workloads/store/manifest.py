"""A generation's manifest: every file with its size and sha256, and the content hash.

``manifest.json`` sits in the generation folder::

    {"kind": "GenerationManifest", "version": 1,
     "contentHash": "sha256:<hex>",
     "files": [{"path": "config.json", "size": 734, "sha256": "<hex>"}, ...]}

It is the generation's **commit marker**.  On an object store, which has no
rename, a generation is uploaded file by file and the manifest goes last: a
prefix without a valid manifest is an upload that never finished, and readers
refuse it.  Readers fetch exactly the files it lists and check each one's
sha256, so stray or half-replaced objects are never read as the model.

The content hash is the sha256 of the sorted ``path, size, sha256`` lines, so
it can be checked against the file list without the bytes, and two folders
with the same files have the same hash wherever they are stored.

A **thin** generation (version 2, written by the phases; see
:mod:`reverie.workloads.store.objects`) keeps its large files once in the lineage's
object area instead of in its folder::

    {"kind": "GenerationManifest", "version": 2, "contentHash": "sha256:<hex>",
     "objects": "../../../objects",
     "files": [{"path": "config.json", "size": 734, "sha256": "<hex>"},
               {"path": "model.safetensors", "size": 538090408, "sha256": "<hex>", "object": true}, ...]}

``objects`` is relative to the generation folder (so a store can be moved);
a file marked ``object`` is at ``<objects>/sha256/<its sha256>``, the others
are in the folder.  The content hash is computed exactly as for a full folder,
so a thin generation and its materialized copy (:meth:`Manifest.materialized`,
what the staging cache holds) have the same hash.  Version 1 (every file in the
folder) is what full folders carry and is read as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# The ledger (slot names in order) every generation Reverie writes carries; a
# plain Hugging Face folder (a base model) has none.
LEDGER = "slots.json"
KIND = "GenerationManifest"
VERSION = 1  # every file in the folder
THIN_VERSION = 2  # large files in the object area, the rest in the folder
# Files that describe a run, not the model, and the marker itself: never part of the content.
EXCLUDE = frozenset({MANIFEST, "result.json"})
EXCLUDE_DIRS = ("checkpoints/",)
HEX = re.compile(r"[0-9a-f]{64}")


class GenerationError(ValueError):
    """A generation folder that cannot be read or written; the message says which and why."""


class ManifestError(GenerationError):
    """A manifest that is missing, malformed or does not match the files; the message says where."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a generation."""

    path: str
    size: int
    sha256: str
    in_objects: bool = False  # its bytes are in the object area, not in the folder


@dataclass(frozen=True)
class Manifest:
    """The files of a generation and their content hash (and, for a thin one, where its objects are)."""

    files: tuple[FileEntry, ...]
    content_hash: str
    objects: str | None = None  # thin generations: the object area, relative to the folder

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def thin(self) -> bool:
        return self.objects is not None

    def thinned(self, objects: str, *, to_objects: Callable[[FileEntry], bool]) -> Manifest:
        """The same content with the files ``to_objects`` picks in the object area at ``objects``."""
        files = tuple(FileEntry(f.path, f.size, f.sha256, in_objects=to_objects(f)) for f in self.files)
        return Manifest(files=files, content_hash=self.content_hash, objects=objects)

    def materialized(self) -> Manifest:
        """The same content with every file in the folder (version 1): what a staged copy carries."""
        files = tuple(FileEntry(f.path, f.size, f.sha256) for f in self.files)
        return Manifest(files=files, content_hash=self.content_hash)

    def to_json(self) -> str:
        def entry(f: FileEntry) -> dict[str, Any]:
            out: dict[str, Any] = {"path": f.path, "size": f.size, "sha256": f.sha256}
            if f.in_objects:
                out["object"] = True
            return out

        head: dict[str, Any] = {
            "kind": KIND,
            "version": THIN_VERSION if self.thin else VERSION,
            "contentHash": self.content_hash,
        }
        if self.thin:
            head["objects"] = self.objects
        return json.dumps({**head, "files": [entry(f) for f in self.files]}, indent=1) + "\n"


def included(rel: str) -> bool:
    """True for the files that make up a generation's content."""
    return rel not in EXCLUDE and not rel.startswith(EXCLUDE_DIRS)


def digest(files: tuple[FileEntry, ...] | list[FileEntry]) -> str:
    """The content hash of a file list (order-independent)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
    return "sha256:" + h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(folder: str | Path) -> Manifest:
    """Hash every file of ``folder`` (bytes read once) into a manifest."""
    root = Path(folder)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if included(rel):
            entries.append(FileEntry(path=rel, size=path.stat().st_size, sha256=file_sha256(path)))
    files = tuple(entries)
    return Manifest(files=files, content_hash=digest(files))


def write(folder: str | Path) -> Manifest:
    """Build ``folder``'s manifest and write it there (the last file a generation gets)."""
    manifest = build(folder)
    (Path(folder) / MANIFEST).write_text(manifest.to_json())
    return manifest


def parse(text: str, *, where: str) -> Manifest:
    """Parse and check a manifest: well-formed, and its content hash is that of its file list."""
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc.msg}); the commit marker is corrupt") from exc
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise ManifestError(f"{where}: not a {KIND} (kind {raw.get('kind') if isinstance(raw, dict) else None!r})")
    version = raw.get("version")
    if version not in (VERSION, THIN_VERSION):
        raise ManifestError(
            f"{where}: manifest version {version!r}; this Reverie reads versions {VERSION} and {THIN_VERSION}"
        )
    objects = raw.get("objects") if version == THIN_VERSION else None
    if version == THIN_VERSION and (
        not isinstance(objects, str) or not objects or "://" in objects or objects.startswith("/")
    ):
        raise ManifestError(f"{where}: 'objects' must be a path relative to the generation folder (got {objects!r})")
    try:
        files = tuple(
            FileEntry(
                path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"]), in_objects=f.get("object") is True
            )
            for f in raw["files"]
        )
        claimed = str(raw["contentHash"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"{where}: malformed file list ({exc!r})") from exc
    for f in files:
        if f.path.startswith("/") or ".." in f.path.split("/") or not included(f.path):
            raise ManifestError(f"{where}: file path {f.path!r} is not allowed in a generation")
        if f.in_objects and (objects is None or not HEX.fullmatch(f.sha256)):
            raise ManifestError(
                f"{where}: {f.path} is marked as an object but the manifest has no object area "
                "or its sha256 is not 64 hex digits"
            )
    if digest(files) != claimed:
        raise ManifestError(f"{where}: contentHash {claimed} does not match its file list ({digest(files)})")
    return Manifest(files=files, content_hash=claimed, objects=objects)


def read(folder: str | Path) -> Manifest | None:
    """The manifest of a local folder, or None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return parse(path.read_text(), where=str(path))
