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
with the same files have the same hash wherever they are stored.  A
content-addressed layout (files kept once under their sha256) needs nothing
more than what a manifest already says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# The ledger (slot names in order) every generation Reverie writes carries; a
# plain Hugging Face folder (a base model) has none.
LEDGER = "slots.json"
KIND = "GenerationManifest"
VERSION = 1
# Files that describe a run, not the model, and the marker itself: never part of the content.
EXCLUDE = frozenset({MANIFEST, "result.json"})
EXCLUDE_DIRS = ("checkpoints/",)


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


@dataclass(frozen=True)
class Manifest:
    """The files of a generation and their content hash."""

    files: tuple[FileEntry, ...]
    content_hash: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps({
            "kind": KIND, "version": VERSION, "contentHash": self.content_hash,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }, indent=1) + "\n"


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
    if raw.get("version") != VERSION:
        raise ManifestError(f"{where}: manifest version {raw.get('version')!r}; this Reverie reads version {VERSION}")
    try:
        files = tuple(
            FileEntry(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"])) for f in raw["files"]
        )
        claimed = str(raw["contentHash"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: malformed file list ({exc!r})") from exc
    for f in files:
        if f.path.startswith("/") or ".." in f.path.split("/") or not included(f.path):
            raise ManifestError(f"{where}: file path {f.path!r} is not allowed in a generation")
    if digest(files) != claimed:
        raise ManifestError(f"{where}: contentHash {claimed} does not match its file list ({digest(files)})")
    return Manifest(files=files, content_hash=claimed)


def read(folder: str | Path) -> Manifest | None:
    """The manifest of a local folder, or None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return parse(path.read_text(), where=str(path))
