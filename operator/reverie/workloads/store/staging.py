"""The staging cache: generations copied from the store to local disk once, reused, verified, evicted.

A phase loads a model from local files.  A generation in an object store is
*staged*: its manifest is read, and the cache entry for that content hash is
used when it is there and intact; otherwise the listed files are downloaded,
each one's sha256 checked against the manifest, and the folder is renamed into
the cache.  Consolidation, dreaming and evaluation on one node (and the
attempts of one phase) thus download each generation once, and a generation a
phase has just written is put in the cache as it is uploaded (:func:`adopt`).

Layout of the cache (``$REVERIE_STAGING_CACHE``: node-local disk or a PVC)::

    generations/sha256-<hex>/        a verified generation (the files and manifest.json)
    generations/sha256-<hex>.json    its record: file stamps, bytes, last use
    sources/<sha256 of a listing>    content hash of an unmarked folder (a base model uploaded by hand)
    hub/                             huggingface_hub's cache, for hf:// base models
    hub/models--<org>--<name>.json   that repository's record
    .lock                            held while staging and evicting

After each staging the least recently used entries are deleted until the cache
fits ``$REVERIE_STAGING_CACHE_MAX_BYTES`` (the entry just staged is kept even if
it alone is larger).  An entry is re-verified on every use: a file whose size
or modification time differs from its record is hashed again
(``REVERIE_STAGING_VERIFY=full`` hashes every file every time), and an entry
that fails is dropped and staged afresh.

Eviction does not know which entries another phase on the node is about to
load; safetensors files are memory-mapped once opened, so only a load that has
not opened its files yet can lose them, and it fails with the missing file named.

``REVERIE_STAGING_CACHE=none`` turns the cache off: every load stages into a
new temporary folder (what every phase did before the cache existed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reverie.core.contract import ProgressEvent, emit_progress
from reverie.workloads.store import manifest as mf
from reverie.workloads.store import store
from reverie.workloads.store.manifest import LEDGER, MANIFEST, GenerationError, Manifest

CACHE_ENV = "REVERIE_STAGING_CACHE"
MAX_BYTES_ENV = "REVERIE_STAGING_CACHE_MAX_BYTES"
VERIFY_ENV = "REVERIE_STAGING_VERIFY"
NO_CACHE = "none"
DEFAULT_MAX_BYTES = 50 * 2**30
HUB_SCHEME = "hf://"
HUB_URI = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?/?$")


@dataclass(frozen=True)
class StagingCache:
    """Where staged generations are kept, and how much of them."""

    root: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    full_verify: bool = False

    @classmethod
    def from_env(cls) -> StagingCache | None:
        """The cache the environment configures; None when it is turned off.

        Unset, it lives under the user's cache folder (in a pod: ``$HOME/.cache``,
        an emptyDir, so only that pod's loads share it).
        """
        where = os.environ.get(CACHE_ENV, "").strip()
        if where.lower() == NO_CACHE:
            return None
        root = Path(where) if where else Path.home() / ".cache" / "reverie" / "staging"
        raw = os.environ.get(MAX_BYTES_ENV, "").strip()
        try:
            max_bytes = int(raw) if raw else DEFAULT_MAX_BYTES
        except ValueError as exc:
            raise GenerationError(f"{MAX_BYTES_ENV}={raw!r}: expected a number of bytes") from exc
        return cls(root=root, max_bytes=max_bytes, full_verify=os.environ.get(VERIFY_ENV, "") == "full")

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    def entry(self, content_hash: str) -> Path:
        return self.generations / content_hash.replace(":", "-")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One stager at a time per cache (phases of one node share it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Staged:
    """A generation on local disk, and what staging it cost."""

    folder: Path
    source: str
    content_hash: str | None = None
    downloaded_bytes: int = 0
    reused: bool = False
    revision: str | None = None  # hf:// only: the commit the revision resolved to


def _record_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".json")


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _write_record(entry: Path, manifest: Manifest, *, source: str) -> None:
    record = {
        "contentHash": manifest.content_hash,
        "source": source,
        "bytes": manifest.total_bytes,
        "lastUsed": time.time(),
        "stamps": {f.path: _stamp(entry / f.path) for f in manifest.files},
    }
    _record_path(entry).write_text(json.dumps(record))


def _touch(record_path: Path, record: dict[str, Any]) -> None:
    record["lastUsed"] = time.time()
    record_path.write_text(json.dumps(record))


def _entry_intact(entry: Path, manifest: Manifest, *, full: bool) -> bool:
    """True when ``entry`` holds ``manifest``'s files (stat-checked; rehashed where the stat changed)."""
    record_path = _record_path(entry)
    try:
        record = json.loads(record_path.read_text())
        stamps = record["stamps"]
    except (OSError, ValueError, KeyError):
        return False
    if record.get("contentHash") != manifest.content_hash:
        return False
    changed = False
    for f in manifest.files:
        path = entry / f.path
        if not path.is_file():
            return False
        if full or stamps.get(f.path) != _stamp(path):
            if path.stat().st_size != f.size or mf.file_sha256(path) != f.sha256:
                return False
            stamps[f.path] = _stamp(path)
            changed = True
    if changed:
        record["stamps"] = stamps
    _touch(record_path, record)
    return True


def _drop(entry: Path) -> None:
    shutil.rmtree(entry, ignore_errors=True)
    _record_path(entry).unlink(missing_ok=True)


def _emit(**values: Any) -> None:
    # On stderr: a stage-in runs inside other commands too, whose stdout is their own.
    emit_progress(ProgressEvent("staged", values=values), stream=sys.stderr)


# --------------------------------------------------------------------------- #
# Generations in the store
# --------------------------------------------------------------------------- #


def _verify(path: Path, f: mf.FileEntry) -> bool:
    return path.stat().st_size == f.size and mf.file_sha256(path) == f.sha256


def _corrupt(uri: str, f: mf.FileEntry, source: str) -> GenerationError:
    return GenerationError(
        f"{uri}: {f.path} does not match the generation's manifest (sha256 {f.sha256[:12]}…, "
        f"{f.size} bytes); the store copy ({source}) is corrupt or was changed after it was committed"
    )


def _cached_files(cache: StagingCache | None) -> dict[str, Path]:
    """Files the cache already holds, by sha256 (from its entries' manifests): a generation shares most of
    its files with its parent, so staging it links those instead of downloading them again."""
    found: dict[str, Path] = {}
    if cache is None or not cache.generations.is_dir():
        return found
    for marker in cache.generations.glob("sha256-*/" + MANIFEST):
        try:
            entry = mf.parse(marker.read_text(), where=str(marker))
        except (OSError, GenerationError):
            continue
        for f in entry.files:
            found.setdefault(f.sha256, marker.parent / f.path)
    return found


def _materialize(uri: str, manifest: Manifest, target: Path, *, cache: StagingCache | None) -> int:
    """Put ``manifest``'s files from the generation at ``uri`` into ``target``, each one checked against its
    sha256; returns the bytes downloaded.

    A file the cache already holds (same sha256) and a file of a local store
    are hard-linked when the filesystem allows it, else copied; the other files
    of a store in an object store are downloaded, its objects from the object
    area the manifest names.  ``target`` gets the full (version 1) manifest.
    """
    from reverie.workloads.store import objects

    local_store = not store.is_remote(uri)
    known = _cached_files(cache)
    total = 0
    for f in manifest.files:
        path = target / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        source = objects.source_of(uri, manifest, f)
        held = known.get(f.sha256)
        if held is not None and held.is_file():
            _link_or_copy(str(held), str(path))
            if _verify(path, f):
                continue
            path.unlink()
        if local_store:
            src = store.local_path(source)
            if not src.is_file():
                what = "object" if f.in_objects else "file"
                raise GenerationError(
                    f"{uri}: {f.path} is missing (its {what} {src} is not there); the store lost it, "
                    "or the generation was copied without its lineage's objects/ folder"
                )
            _link_or_copy(str(src), str(path))
        else:
            total += store.download_file(source, path)
        if not _verify(path, f):
            raise _corrupt(uri, f, source)
    (target / MANIFEST).write_text(manifest.materialized().to_json())
    return total


def _download_verified(uri: str, manifest: Manifest, target: Path, *, cache: StagingCache | None = None) -> int:
    """Download ``manifest``'s files from ``uri`` into ``target``, checking each one; returns the bytes."""
    return _materialize(uri, manifest, target, cache=cache)


def remote_manifest(uri: str) -> tuple[Manifest | None, int]:
    """The committed manifest of a generation in the store (None for an unmarked plain folder), and its size.

    Raises :class:`GenerationError` for a generation whose upload never
    finished (a ledger but no manifest) and for a prefix with nothing in it.
    """
    where = store.join(uri, MANIFEST)
    text = store.read_text(where)
    if text is not None:
        return mf.parse(text, where=where), len(text.encode())
    listing = store.list_tree(uri)
    if not listing:
        raise GenerationError(f"generation {uri!r} does not exist (no files under it)")
    if LEDGER in listing:
        raise GenerationError(
            f"generation {uri!r} has no commit marker ({MANIFEST}): its upload never finished, so it is not a "
            "generation; rerun the phase that writes it (a retried upload completes it)"
        )
    return None, 0


def _listing_key(uri: str, listing: dict[str, store.RemoteFile]) -> str:
    h = hashlib.sha256(uri.encode() + b"\n")
    for rel in sorted(listing):
        h.update(f"{rel}\0{listing[rel].size}\0{listing[rel].etag}\n".encode())
    return h.hexdigest()


def _stage_plain(uri: str, cache: StagingCache | None) -> Staged:
    """A folder without a manifest (a base model copied to the store by hand): files as they are."""
    listing = store.list_tree(uri)
    alias = cache.root / "sources" / _listing_key(uri, listing) if cache else None
    if cache is not None and alias is not None and alias.is_file():
        known = alias.read_text().strip()
        entry = cache.entry(known)
        local = mf.read(entry) if (entry / MANIFEST).is_file() else None
        if local is not None and _entry_intact(entry, local, full=cache.full_verify):
            return Staged(folder=entry, source=uri, content_hash=known, reused=True)
    target = (
        Path(tempfile.mkdtemp(prefix="reverie-stage-"))
        if cache is None
        else Path(tempfile.mkdtemp(prefix=".partial-", dir=_mkdir(cache.generations)))
    )
    got = store.download_tree(uri, target, only=list(listing))
    local_manifest = mf.write(target)
    if cache is None:
        return Staged(folder=target, source=uri, content_hash=local_manifest.content_hash, downloaded_bytes=got)
    entry = _commit(target, local_manifest, cache=cache, source=uri)
    assert alias is not None
    _mkdir(alias.parent)
    alias.write_text(local_manifest.content_hash)
    return Staged(folder=entry, source=uri, content_hash=local_manifest.content_hash, downloaded_bytes=got)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _commit(partial: Path, manifest: Manifest, *, cache: StagingCache, source: str) -> Path:
    """Rename a complete, verified folder into the cache as the entry for its content hash."""
    entry = cache.entry(manifest.content_hash)
    if entry.exists():
        _drop(entry)
    os.replace(partial, entry)
    _write_record(entry, manifest, source=source)
    return entry


def stage_generation(uri: str, *, cache: StagingCache | None = None) -> Staged:
    """A local, verified copy of the generation at ``uri`` (a store URI, ``hf://org/model[@revision]``, or a
    built-in model such as ``builtin:smollm2-135m``, converted once from its package)."""
    from reverie.workloads.store import pretrained

    if pretrained.is_builtin_pretrained(uri):
        return Staged(folder=pretrained.smollm2_folder(), source=uri)
    if uri.startswith(HUB_SCHEME):
        return stage_hub(uri, cache=cache)
    if not store.is_remote(uri):
        folder = store.local_path(uri)
        if not folder.is_dir():
            raise GenerationError(f"generation folder {uri!r} does not exist or is not a folder")
        local = mf.read(folder) if (folder / MANIFEST).is_file() else None
        if local is None or not local.thin:
            return Staged(folder=folder, source=uri)  # a full folder is loaded where it is
        return _stage_thin_local(uri, local, cache)
    if cache is None:
        manifest, marker_bytes = remote_manifest(uri)
        if manifest is None:
            return _stage_plain(uri, None)
        target = Path(tempfile.mkdtemp(prefix="reverie-stage-"))
        got = _download_verified(uri, manifest, target) + marker_bytes
        _emit(uri=uri, bytes=got, reused=False, cache=None)
        return Staged(folder=target, source=uri, content_hash=manifest.content_hash, downloaded_bytes=got)
    with cache.locked():
        manifest, marker_bytes = remote_manifest(uri)
        if manifest is None:
            staged = _stage_plain(uri, cache)
        else:
            entry = cache.entry(manifest.content_hash)
            if entry.is_dir() and _entry_intact(entry, manifest, full=cache.full_verify):
                staged = Staged(
                    folder=entry,
                    source=uri,
                    content_hash=manifest.content_hash,
                    downloaded_bytes=marker_bytes,
                    reused=True,
                )
            else:
                if entry.exists():
                    _emit(uri=uri, dropped=str(entry), reason="cached copy failed verification")
                    _drop(entry)
                partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=_mkdir(cache.generations)))
                try:
                    got = _download_verified(uri, manifest, partial, cache=cache) + marker_bytes
                except BaseException:
                    shutil.rmtree(partial, ignore_errors=True)
                    raise
                entry = _commit(partial, manifest, cache=cache, source=uri)
                staged = Staged(folder=entry, source=uri, content_hash=manifest.content_hash, downloaded_bytes=got)
        evict(cache, keep={staged.folder})
    _emit(uri=uri, bytes=staged.downloaded_bytes, reused=staged.reused, cache=str(cache.root))
    return staged


def _stage_thin_local(uri: str, manifest: Manifest, cache: StagingCache | None) -> Staged:
    """A thin generation of a local store, materialized (hard links where possible) into the cache or a temp folder."""
    folder = str(store.local_path(uri).resolve())
    if cache is None:
        target = Path(tempfile.mkdtemp(prefix="reverie-stage-"))
        try:
            _materialize(folder, manifest, target, cache=None)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return Staged(folder=target, source=uri, content_hash=manifest.content_hash)
    with cache.locked():
        entry = cache.entry(manifest.content_hash)
        if entry.is_dir() and _entry_intact(entry, manifest, full=cache.full_verify):
            staged = Staged(folder=entry, source=uri, content_hash=manifest.content_hash, reused=True)
        else:
            if entry.exists():
                _drop(entry)
            partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=_mkdir(cache.generations)))
            try:
                _materialize(folder, manifest, partial, cache=cache)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            entry = _commit(partial, manifest, cache=cache, source=uri)
            staged = Staged(folder=entry, source=uri, content_hash=manifest.content_hash)
        evict(cache, keep={staged.folder})
    _emit(uri=uri, bytes=0, reused=staged.reused, cache=str(cache.root), thin=True)
    return staged


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def adopt(folder: Path, manifest: Manifest, *, cache: StagingCache | None, source: str) -> None:
    """Put a generation this process wrote (and committed to the store) into the cache, without downloading it.

    Files are hard-linked when the cache is on the same filesystem, else copied.
    """
    if cache is None:
        return
    with cache.locked():
        entry = cache.entry(manifest.content_hash)
        if entry.is_dir() and _entry_intact(entry, manifest, full=False):
            return
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=_mkdir(cache.generations)))
        shutil.copytree(
            folder,
            partial,
            dirs_exist_ok=True,
            copy_function=_link_or_copy,
            ignore=shutil.ignore_patterns("checkpoints", "result.json"),
        )
        _commit(partial, manifest, cache=cache, source=source)
        evict(cache, keep={entry})


# --------------------------------------------------------------------------- #
# Base models by name (hf://)
# --------------------------------------------------------------------------- #


def parse_hub_uri(uri: str) -> tuple[str, str | None]:
    """``hf://org/model[@revision]`` → ``(repo_id, revision or None)``."""
    match = HUB_URI.match(uri.strip())
    if not match:
        raise GenerationError(f"{uri!r}: expected hf://<org>/<model> or hf://<org>/<model>@<revision>")
    return match["repo"], match["revision"]


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def stage_hub(uri: str, *, cache: StagingCache | None = None) -> Staged:
    """Stage a Hugging Face Hub model through ``huggingface_hub`` into the cache's ``hub/`` folder.

    The revision (a branch, tag or commit; default ``main``) is resolved to a
    commit, returned as ``Staged.revision`` for the generation's ledger.  With
    ``HF_HUB_OFFLINE=1`` only what the cache already holds is used.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, revision = parse_hub_uri(uri)
    hub_dir = cache.hub if cache is not None else None
    repo_dir = (hub_dir / f"models--{repo_id.replace('/', '--')}") if hub_dir is not None else None
    lock = cache.locked() if cache is not None else contextlib.nullcontext()
    with lock:
        before = _tree_bytes(repo_dir) if repo_dir is not None else 0
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=hub_dir))
        except LocalEntryNotFoundError as exc:
            raise GenerationError(
                f"{uri}: not in the local Hugging Face cache ({hub_dir or 'HF_HOME'}) and downloads are off "
                "(HF_HUB_OFFLINE=1); allow network access once, or pre-populate the cache"
            ) from exc
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise GenerationError(f"{uri}: cannot fetch it from the Hugging Face Hub ({exc})") from exc
        if not (folder / "config.json").is_file():
            raise GenerationError(f"{uri}: the snapshot at {folder} has no config.json; not a model repository")
        got = (_tree_bytes(repo_dir) - before) if repo_dir is not None else 0
        if cache is not None and repo_dir is not None:
            record = {"source": uri, "bytes": _tree_bytes(repo_dir), "lastUsed": time.time()}
            repo_dir.with_name(repo_dir.name + ".json").write_text(json.dumps(record))
            evict(cache, keep={repo_dir})
    _emit(uri=uri, bytes=max(got, 0), reused=got <= 0, cache=str(cache.root) if cache else None, revision=folder.name)
    return Staged(folder=folder, source=uri, downloaded_bytes=max(got, 0), reused=got <= 0, revision=folder.name)


# --------------------------------------------------------------------------- #
# Eviction
# --------------------------------------------------------------------------- #


def entries(cache: StagingCache) -> list[tuple[float, int, Path]]:
    """Every entry of the cache as ``(last used, bytes, folder)``, oldest first."""
    found = []
    for parent in (cache.generations, cache.hub):
        if not parent.is_dir():
            continue
        for record_path in parent.glob("*.json"):
            folder = record_path.with_name(record_path.name[: -len(".json")])
            try:
                record = json.loads(record_path.read_text())
                found.append((float(record["lastUsed"]), int(record["bytes"]), folder))
            except (OSError, ValueError, KeyError):
                found.append((0.0, _tree_bytes(folder), folder))
    return sorted(found, key=lambda e: e[0])


def evict(cache: StagingCache, *, keep: Collection[Path] = ()) -> list[Path]:
    """Delete least recently used entries until the cache fits its size; returns what was deleted."""
    found = entries(cache)
    total = sum(size for _, size, _ in found)
    removed = []
    for _, size, folder in found:
        if total <= cache.max_bytes:
            break
        if folder in keep:
            continue
        _drop(folder)
        total -= size
        removed.append(folder)
    if removed:
        _emit(evicted=[str(p) for p in removed], bytes_left=total, max_bytes=cache.max_bytes)
    return removed
