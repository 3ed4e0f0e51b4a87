"""Files in the model store: a local folder (or PVC), or an object store through fsspec.

Everything a phase reads or writes lives under the lineage's ``spec.store.uri``:
a local path, ``file://``, or ``s3://bucket/prefix`` (any fsspec protocol works;
S3 and S3-compatible servers are what the tests run against).  S3 credentials
come from the standard ``AWS_*`` variables (a Job gets them from
``spec.store.secretName``) and the endpoint of an S3-compatible server from
``AWS_ENDPOINT_URL_S3`` (``spec.store.endpoint``); botocore reads both.

An object store has no rename, so "write a temporary file, then rename it"
does not make a tree of files appear at once.  This module uploads and
downloads trees; the callers make them safe:

- a generation is committed by a marker written last
  (:mod:`reverie.workloads.store.manifest`, :func:`reverie.workloads.store.modelio.stage_out`);
- a checkpoint folder becomes current when its pointer file is written, and
  :func:`upload_tree` writes pointer files (``commit_last``) after everything else.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from reverie.workloads.store.atomic import replacing, write_atomic


class StoreError(OSError):
    """The store cannot be reached or read; the message says which URI and what to do."""


def is_remote(uri: str) -> bool:
    """True for an fsspec URI other than ``file://`` (``s3://``, ``hf://`` ...)."""
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(uri: str, *, fresh: bool = False) -> tuple[Any, str]:
    """``(fs, path)`` for ``uri``; a missing fsspec backend is reported with the package to install.

    ``fresh`` drops what fsspec remembers of earlier listings under ``path``:
    another process (the next phase, a retried upload) may have changed it since.
    """
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        raise StoreError(f"{uri}: no filesystem for this scheme ({exc})") from exc
    if fresh:
        fs.invalidate_cache(path)
    return fs, path


@dataclass(frozen=True)
class RemoteFile:
    """What a listing says about one object: size and (for S3) its ETag."""

    size: int
    etag: str | None


def list_tree(uri: str) -> dict[str, RemoteFile]:
    """Every file under ``uri`` by path relative to it (empty when nothing is there)."""
    fs, root = filesystem(uri, fresh=True)
    root = root.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out: dict[str, RemoteFile] = {}
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        rel = path[len(root) :].lstrip("/")
        if rel:
            etag = info.get("ETag") or info.get("etag")
            out[rel] = RemoteFile(size=int(info.get("size") or 0), etag=str(etag).strip('"') if etag else None)
    return out


def md5_matches(path: Path, remote: RemoteFile) -> bool:
    """True when ``remote`` certainly holds ``path``'s bytes (same size and, for single-part S3 objects, MD5 ETag).

    A multipart ETag (``<md5>-<parts>``) is not a hash of the bytes, and a
    filesystem without ETags proves nothing beyond the size: both count as different.
    """
    if remote.size != path.stat().st_size or not remote.etag or "-" in remote.etag:
        return False
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == remote.etag


def local_files(folder: Path) -> list[str]:
    """Relative paths of every file under ``folder``, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _rank(rel: str, *, first: tuple[str, ...], last: tuple[str, ...]) -> int:
    """Upload order: ``first`` names (in order), everything else, then ``last`` names (in order)."""
    name = rel.rsplit("/", 1)[-1]
    if name in first:
        return first.index(name) - len(first)
    return last.index(name) + 1 if name in last else 0


def upload_tree(
    folder: str | Path,
    uri: str,
    *,
    commit_first: Iterable[str] = (),
    commit_last: Iterable[str] = (),
    delete_extra: bool = True,
    skip: Mapping[str, RemoteFile] | None = None,
) -> int:
    """Make ``uri`` hold exactly ``folder``'s files; returns the bytes uploaded.

    Files already there with the same bytes are not sent again, so a retried
    upload only sends what is missing.  Files named in ``commit_first`` go
    before all others, those in ``commit_last`` (pointer files such as a
    checkpoint's ``state.json`` and ``latest``, a generation's manifest) after
    all others, each in the order given; files under ``uri`` that ``folder``
    lacks are deleted last, so a reader following a pointer never finds its
    target gone.
    """
    folder = Path(folder)
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    remote = dict(skip) if skip is not None else list_tree(uri)
    first, pointers = tuple(commit_first), tuple(commit_last)
    files = sorted(local_files(folder), key=lambda rel: (_rank(rel, first=first, last=pointers), rel))
    sent = 0
    for rel in files:
        path = folder / rel
        have = remote.get(rel)
        # Pointer files are tiny and must be rewritten even when equal-sized.
        if have is not None and _rank(rel, first=(), last=pointers) == 0 and md5_matches(path, have):
            continue
        parent = f"{root}/{rel}".rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        fs.put_file(str(path), f"{root}/{rel}")
        sent += path.stat().st_size
    if delete_extra:
        extra = sorted(set(remote) - set(files))
        if extra:
            fs.rm([f"{root}/{rel}" for rel in extra])
    return sent


def download_file(uri: str, target: Path) -> int:
    """Copy one file from the store to ``target`` (through a temporary sibling); returns its size."""
    fs, path = filesystem(uri)
    with replacing(target) as tmp:
        fs.get_file(path, str(tmp))
    return target.stat().st_size


def download_tree(uri: str, folder: Path, *, only: Iterable[str] | None = None) -> int:
    """Copy the files under ``uri`` (or just the relative paths in ``only``) into ``folder``; returns the bytes."""
    files = list(only) if only is not None else list(list_tree(uri))
    return sum(download_file(join(uri, rel), folder / rel) for rel in files)


def read_text(uri: str) -> str | None:
    """A small file's text, or None when it does not exist."""
    fs, path = filesystem(uri, fresh=True)
    try:
        with fs.open(path, "r", encoding="utf-8") as fh:
            return str(fh.read())
    except FileNotFoundError:
        return None


def write_text(uri: str, text: str) -> None:
    """Write a small file whole or not at all (one PUT on an object store; a rename on a local disk)."""
    if not is_remote(uri):
        write_atomic(local_path(uri), text)
        return
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri, fresh=True)
    return bool(fs.exists(path))


def local_workdir(uri: str, *, prefix: str = "reverie-work-") -> Path:
    """Where a phase assembles files bound for ``uri``: the folder itself when it is local."""
    if not is_remote(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=prefix))
