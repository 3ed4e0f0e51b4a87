"""The model store on a real S3 server (MinIO): committed generations, checkpoints, the staging cache, hf://.

Every test gets a fresh bucket (fixture ``s3``) and a fresh staging cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import fsspec
import pytest
import torch

from reverie.workloads.ml.tiny import TinyBase
from reverie.workloads.store import manifest as mf
from reverie.workloads.store import staging, store
from reverie.workloads.store.checkpoint import load_checkpoint, save_checkpoint
from reverie.workloads.store.modelio import (
    GenerationError,
    content_hash,
    load_generation,
    publish_generation,
    save_generation,
    stage_out,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> staging.StagingCache:
    """A fresh staging cache, also the one load_generation uses (through the environment)."""
    root = tmp_path / "staging"
    monkeypatch.setenv(staging.CACHE_ENV, str(root))
    monkeypatch.delenv(staging.MAX_BYTES_ENV, raising=False)
    return staging.StagingCache(root=root)


def remote_files(uri: str) -> dict[str, store.RemoteFile]:
    return store.list_tree(uri)


def overwrite(uri: str, data: bytes) -> None:
    fs, path = store.filesystem(uri)
    with fs.open(path, "wb") as fh:
        fh.write(data)


def test_a_generation_written_to_s3_is_committed_by_its_manifest_and_loads_back(
    tiny_base: TinyBase,
    s3: str,
    cache: staging.StagingCache,
) -> None:
    uri = f"{s3}/lin/c1/consolidation/model"
    gen = load_generation(tiny_base.folder)
    folder = save_generation(gen.model, gen.tokenizer, uri)
    listed = remote_files(uri)
    marker = mf.parse(store.read_text(f"{uri}/manifest.json") or "", where=uri)
    assert set(listed) == {f.path for f in marker.files} | {"manifest.json"}
    assert marker.content_hash == content_hash(folder)
    again = load_generation(uri)
    assert again.folder == cache.entry(marker.content_hash)  # staged into the cache, verified
    assert content_hash(again.folder) == marker.content_hash


def test_a_generation_without_its_commit_marker_is_refused(
    tiny_base: TinyBase, s3: str, cache: staging.StagingCache
) -> None:
    uri = f"{s3}/lin/c1/consolidation/model"
    publish_generation(tiny_base.folder, uri)
    fs, path = store.filesystem(f"{uri}/manifest.json")
    fs.rm(path)
    with pytest.raises(GenerationError, match=r"no commit marker \(manifest\.json\): its upload never finished"):
        load_generation(uri)


def test_a_corrupt_commit_marker_is_refused(tiny_base: TinyBase, s3: str, cache: staging.StagingCache) -> None:
    uri = f"{s3}/lin/g"
    publish_generation(tiny_base.folder, uri)
    text = json.loads(store.read_text(f"{uri}/manifest.json") or "")
    text["files"] = text["files"][1:]  # a file list that no longer matches its content hash
    store.write_text(f"{uri}/manifest.json", json.dumps(text))
    with pytest.raises(GenerationError, match=r"contentHash .* does not match its file list"):
        load_generation(uri)


def test_an_object_changed_after_the_commit_fails_verification(
    tiny_base: TinyBase,
    s3: str,
    cache: staging.StagingCache,
) -> None:
    uri = f"{s3}/lin/g"
    publish_generation(tiny_base.folder, uri)
    shutil.rmtree(cache.root)  # another node: nothing cached
    original = (tiny_base.folder / "config.json").read_bytes()
    overwrite(f"{uri}/config.json", original.replace(b"{", b" ", 1))  # same size, other bytes
    with pytest.raises(GenerationError, match=r"config\.json does not match the generation.s manifest"):
        staging.stage_generation(uri, cache=cache)
    assert not list(cache.generations.glob("sha256-*")), "nothing unverified enters the cache"


def test_a_retried_upload_completes_a_partial_one_and_sends_only_what_is_missing(
    tiny_base: TinyBase,
    s3: str,
    tmp_path: Path,
    cache: staging.StagingCache,
) -> None:
    uri = f"{s3}/lin/g"
    partial = tmp_path / "partial"
    shutil.copytree(tiny_base.folder, partial)
    (partial / "manifest.json").unlink()
    (partial / "model.safetensors").unlink()
    store.upload_tree(partial, uri, commit_first=("slots.json",))  # what a killed upload left behind
    with pytest.raises(GenerationError, match="no commit marker"):
        load_generation(uri)
    before = remote_files(uri)
    publish_generation(tiny_base.folder, uri)
    after = remote_files(uri)
    assert {k: v.etag for k, v in before.items()} == {k: after[k].etag for k in before}
    assert set(after) - set(before) == {"model.safetensors", "manifest.json"}
    assert (
        store.upload_tree(tiny_base.folder, uri, commit_last=("manifest.json",))
        == (tiny_base.folder / "manifest.json").stat().st_size
    ), "identical files are not sent again"
    assert content_hash(load_generation(uri).folder) == mf.read(tiny_base.folder).content_hash  # type: ignore[union-attr]


def test_publishing_the_same_generation_again_changes_nothing(
    tiny_base: TinyBase, s3: str, cache: staging.StagingCache
) -> None:
    uri = f"{s3}/lin/g"
    publish_generation(tiny_base.folder, uri)
    fs, path = store.filesystem(uri, fresh=True)
    stamps = {p: i["LastModified"] for p, i in fs.find(path, detail=True).items()}
    publish_generation(tiny_base.folder, uri)
    fs, path = store.filesystem(uri, fresh=True)
    assert {p: i["LastModified"] for p, i in fs.find(path, detail=True).items()} == stamps


def test_a_checkpoint_in_s3_resumes_from_the_one_latest_names(s3: str, tmp_path: Path) -> None:
    local, remote = tmp_path / "checkpoints", f"{s3}/lin/c1/consolidation/checkpoints"
    for step in (5, 10, 15):
        save_checkpoint(
            local,
            step=step,
            slot="s1",
            slot_state={"w": torch.full((3,), float(step))},
            optimizer_state={"m": step},
            meta={"history": [step]},
        )
        stage_out(local, remote)
    names = {rel.split("/")[0] for rel in remote_files(remote)}
    assert names == {"latest", "step-00000010", "step-00000015"}, "the store keeps what the local root keeps"
    c = load_checkpoint(remote)
    assert (c.step, c.slot, c.optimizer_state, c.meta["history"]) == (15, "s1", {"m": 15}, [15])
    assert torch.equal(c.slot_state["w"], torch.full((3,), 15.0))


# --------------------------------------------------------------------------- #
# Staging cache
# --------------------------------------------------------------------------- #


def test_the_staging_cache_downloads_a_generation_once(
    tiny_base: TinyBase, s3: str, cache: staging.StagingCache
) -> None:
    uri = f"{s3}/lin/g"
    publish_generation(tiny_base.folder, uri)
    shutil.rmtree(cache.root, ignore_errors=True)  # publishing put it in the cache; start cold
    first = staging.stage_generation(uri, cache=cache)
    marker = mf.read(first.folder)
    assert marker is not None and not first.reused
    assert first.downloaded_bytes >= marker.total_bytes
    second = staging.stage_generation(uri, cache=cache)
    assert second.reused and second.folder == first.folder
    assert second.downloaded_bytes == len((first.folder / "manifest.json").read_bytes()), "only the manifest"


def test_a_generation_just_published_is_staged_without_downloading(
    tiny_base: TinyBase,
    s3: str,
    cache: staging.StagingCache,
) -> None:
    uri = f"{s3}/lin/g"
    publish_generation(tiny_base.folder, uri)
    assert staging.stage_generation(uri, cache=cache).reused


def test_a_tampered_cache_entry_is_detected_and_staged_again(
    tiny_base: TinyBase, s3: str, cache: staging.StagingCache
) -> None:
    uri = f"{s3}/lin/g"
    publish_generation(tiny_base.folder, uri)
    entry = staging.stage_generation(uri, cache=cache).folder
    config = entry / "config.json"
    data = config.read_bytes()
    config.unlink()  # hard-linked to the published folder: replace, never write through
    config.write_bytes(data.replace(b"{", b" ", 1))
    again = staging.stage_generation(uri, cache=cache)
    assert not again.reused and again.downloaded_bytes > 0
    assert (again.folder / "config.json").read_bytes() == data
    assert (tiny_base.folder / "config.json").read_bytes() == data


def test_the_cache_evicts_least_recently_used_generations_beyond_its_size(
    tiny_base: TinyBase,
    s3: str,
    tmp_path: Path,
) -> None:
    one, two = f"{s3}/lin/one", f"{s3}/lin/two"
    other = tmp_path / "other"
    shutil.copytree(tiny_base.folder, other)
    (other / "generation_config.json").write_text('{"note": "another generation"}\n')
    (other / "manifest.json").unlink()
    publish_generation(tiny_base.folder, one)
    publish_generation(other, two)
    size = mf.read(tiny_base.folder).total_bytes  # type: ignore[union-attr]
    cache = staging.StagingCache(root=tmp_path / "small-cache", max_bytes=int(size * 1.5))
    a = staging.stage_generation(one, cache=cache)
    b = staging.stage_generation(two, cache=cache)
    assert not a.folder.exists() and b.folder.is_dir(), "the older entry made room for the newer one"
    assert sum(s for _, s, _ in staging.entries(cache)) <= cache.max_bytes
    assert not staging.stage_generation(one, cache=cache).reused


# --------------------------------------------------------------------------- #
# hf:// base models
# --------------------------------------------------------------------------- #


def lay_out_hub_cache(hub: Path, repo_id: str, model: Path, *, commit: str) -> None:
    """What huggingface_hub leaves after a download: blobs by hash, a snapshot of symlinks, refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    for path in sorted(p for p in model.rglob("*") if p.is_file() and p.name not in ("manifest.json", "slots.json")):
        rel = path.relative_to(model)
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_base_model_loads_from_the_cache_offline_and_its_revision_is_in_the_ledger(
    tiny_base: TinyBase,
    cache: staging.StagingCache,
    tmp_path: Path,
) -> None:
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "the tests never reach the Hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    lay_out_hub_cache(cache.hub, "reverie-test/tiny", tiny_base.folder, commit=commit)
    gen = load_generation("hf://reverie-test/tiny")  # revision main, resolved to its commit
    assert gen.folder == cache.hub / "models--reverie-test--tiny" / "snapshots" / commit
    assert gen.ledger["base"] == {"uri": "hf://reverie-test/tiny", "revision": commit}
    pinned = load_generation(f"hf://reverie-test/tiny@{commit}")
    assert pinned.ledger["base"]["revision"] == commit
    child = save_generation(gen.model, gen.tokenizer, tmp_path / "g1", ledger=gen.ledger)
    assert json.loads((child / "slots.json").read_text())["base"]["revision"] == commit
    assert any(folder.name == "models--reverie-test--tiny" for _, _, folder in staging.entries(cache))


def test_a_hub_model_missing_offline_is_a_clear_error(cache: staging.StagingCache) -> None:
    with pytest.raises(GenerationError, match=r"not in the local Hugging Face cache .*\(HF_HUB_OFFLINE=1\)"):
        load_generation("hf://reverie-test/absent@main")
    with pytest.raises(GenerationError, match="expected hf://<org>/<model>"):
        load_generation("hf://just-a-name")


def test_fsspec_reads_s3_with_the_standard_aws_environment(s3: str) -> None:
    # What every other phase I/O (memories, eval sets, result.json, the eval cache) goes through.
    with fsspec.open(f"{s3}/memories/a.jsonl", "w") as fh:
        fh.write('{"id": "m", "text": "Zorblat lives in Vemora."}\n')
    from reverie.workloads.data.memory import read_memory_uri

    assert [m.id for m in read_memory_uri("memories/a.jsonl", store_uri=s3)] == ["m"]
