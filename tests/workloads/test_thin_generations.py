"""Thin generations: each file's bytes once in the lineage's object area, a generation folder of small files.

Local store and S3 (MinIO, fixture ``s3``): a second sleep writes its slot,
not the base again; a thin generation loads with the logits of its full copy;
an interrupted write is refused and a retry completes it without rewriting
objects; version-1 full folders load as before; sweeping keeps every object a
retained generation references.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from reverie.workloads.data.memory import question_prompt
from reverie.workloads.ml.expansion import add_slot, slot_parameters
from reverie.workloads.ml.tiny import TinyBase
from reverie.workloads.store import manifest as mf
from reverie.workloads.store import objects, staging, store
from reverie.workloads.store.modelio import (
    GenerationError,
    content_hash,
    load_generation,
    save_generation,
)

LINEAGE = "lin"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> staging.StagingCache:
    """A fresh staging cache, also the one load_generation uses (through the environment)."""
    root = tmp_path / "staging"
    monkeypatch.setenv(staging.CACHE_ENV, str(root))
    return staging.StagingCache(root=root)


def logits_of(gen) -> torch.Tensor:
    tok = gen.tokenizer
    enc = tok([question_prompt(tok, "Where does Zorblat live?"), "Hello"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return gen.model(**enc).logits


def sleep(gen, seed: int):
    """What a sleep does to a generation's weights: one new, trained slot; the base and earlier slots unchanged."""
    model, name = add_slot(gen.model, rank=4, target_modules=["down_proj"], keep_active=list(gen.slots))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in slot_parameters(model, name).values():
            p.add_(0.05 * torch.randn_like(p))
    return model, [*gen.slots, name]


def area_files(area_uri: str) -> dict[str, int]:
    return objects.held(area_uri)


def slot_bytes(folder: Path, slot: str) -> int:
    manifest = mf.read(folder)
    assert manifest is not None
    return next(f.size for f in manifest.files if f.path == f"slots/{slot}/adapter_model.safetensors")


def test_a_second_sleep_writes_only_its_slot_to_a_local_store(tiny_base: TinyBase, tmp_path: Path, cache) -> None:
    root = tmp_path / "store"
    area = objects.area(str(root), LINEAGE)
    model, slots = sleep(load_generation(tiny_base.folder), seed=1)
    first = save_generation(
        model,
        load_generation(tiny_base.folder).tokenizer,
        str(root / LINEAGE / "c1/consolidation/model"),
        slots=slots,
        objects_uri=area,
    )
    after_first = area_files(area)
    base_bytes = (tiny_base.folder / "model.safetensors").stat().st_size
    assert sum(after_first.values()) >= base_bytes, "the first sleep puts the base into the object area"
    assert not (first / "model.safetensors").exists(), "a thin folder holds no weights"

    store_before = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    parent = load_generation(first)
    model, slots = sleep(parent, seed=2)
    second = save_generation(
        model, parent.tokenizer, str(root / LINEAGE / "c2/consolidation/model"), slots=slots, objects_uri=area
    )
    store_after = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    new = set(area_files(area)) - set(after_first)
    assert len(new) == 1, "one new object: the new slot's weights (the base and slot-0 are not written again)"
    new_slot = slot_bytes(second, slots[-1])
    assert area_files(area)[new.pop()] == new_slot
    folder_bytes = sum(p.stat().st_size for p in second.rglob("*") if p.is_file())
    assert store_after - store_before == new_slot + folder_bytes
    assert store_after - store_before < base_bytes / 10, "a sleep grows the store by about its slot, not a model"


def test_a_thin_generation_loads_with_the_logits_of_its_full_copy(tiny_base: TinyBase, tmp_path: Path, cache) -> None:
    gen = load_generation(tiny_base.folder)
    model, slots = sleep(gen, seed=3)
    full = save_generation(model, gen.tokenizer, tmp_path / "full", slots=slots)
    thin = save_generation(
        model,
        gen.tokenizer,
        str(tmp_path / "store" / LINEAGE / "c1/consolidation/model"),
        slots=slots,
        objects_uri=objects.area(str(tmp_path / "store"), LINEAGE),
    )
    assert content_hash(thin) == content_hash(full), "thin and full copies of one generation have one hash"
    assert json.loads((thin / mf.MANIFEST).read_text())["version"] == mf.THIN_VERSION
    loaded_thin, loaded_full = load_generation(thin), load_generation(full)
    assert loaded_thin.slots == loaded_full.slots == slots
    assert loaded_thin.folder == cache.entry(content_hash(full)), "materialized in the staging cache"
    assert torch.equal(logits_of(loaded_thin), logits_of(loaded_full))


def test_a_version_1_full_folder_loads_where_it_is(tiny_base: TinyBase, tmp_path: Path, cache) -> None:
    gen = load_generation(tiny_base.folder)
    model, slots = sleep(gen, seed=4)
    full = save_generation(model, gen.tokenizer, tmp_path / "g1", slots=slots)
    marker = json.loads((full / mf.MANIFEST).read_text())
    assert marker["version"] == mf.VERSION and "objects" not in marker
    again = load_generation(full)
    assert again.folder == full and again.slots == slots
    assert torch.equal(logits_of(again), logits_of(load_generation(full)))


def test_a_thin_generation_without_its_objects_names_the_missing_one(
    tiny_base: TinyBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache of its own: the shared one may already hold this content (a full copy has the same hash).
    monkeypatch.setenv("REVERIE_STAGING_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "store"
    gen = load_generation(tiny_base.folder)
    thin = save_generation(
        gen.model,
        gen.tokenizer,
        str(root / LINEAGE / "c1/consolidation/model"),
        objects_uri=objects.area(str(root), LINEAGE),
    )
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    thin.rename(moved)  # copied out of its store, without the lineage's objects/ folder
    with pytest.raises(GenerationError, match=r"model\.safetensors is missing \(its object .* is not there\)"):
        load_generation(moved)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_interrupted_write_is_refused_and_a_retry_rewrites_no_object(
    where: str,
    tiny_base: TinyBase,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    cache,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = str(tmp_path / "store") if where == "local" else request.getfixturevalue("s3")
    area = objects.area(root, LINEAGE)
    uri = store.join(root, LINEAGE, "c1/consolidation/model")
    gen = load_generation(tiny_base.folder)
    model, slots = sleep(gen, seed=5)
    full = save_generation(model, gen.tokenizer, tmp_path / "full", slots=slots)

    def crash(*_: object, **__: object) -> int:
        raise KeyboardInterrupt("preempted after the objects, before the generation folder")

    with monkeypatch.context() as m:
        m.setattr(objects, "_write_folder", crash)
        with pytest.raises(KeyboardInterrupt):
            objects.commit(full, uri, area_uri=area)
    written = area_files(area)
    assert len(written) == 2, "the objects (base, slot) were written before the interruption"
    refused = r"no commit marker" if where == "s3" else r"does not exist"
    with pytest.raises(GenerationError, match=refused):
        load_generation(uri)

    stamps = _object_stamps(area)
    retry = objects.commit(full, uri, area_uri=area)
    assert (retry.objects_written, retry.objects_bytes, retry.objects_reused) == (0, 0, 2)
    assert _object_stamps(area) == stamps, "no object was written again"
    again = load_generation(uri)
    assert again.slots == slots and content_hash(again.folder) == retry.manifest.content_hash
    assert objects.commit(full, uri, area_uri=area).already_committed


def _object_stamps(area_uri: str) -> dict[str, object]:
    fs, root = store.filesystem(store.join(area_uri, objects.ALGORITHM), fresh=True)
    return {sha: fs.modified(f"{root.rstrip('/')}/{sha}") for sha in objects.held(area_uri)}


def test_two_sleeps_round_trip_through_s3_and_the_second_downloads_only_its_slot(
    tiny_base: TinyBase,
    s3: str,
    cache: staging.StagingCache,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    area = objects.area(s3, LINEAGE)
    gen = load_generation(tiny_base.folder)
    model, slots = sleep(gen, seed=6)
    reference = logits_of(gen)  # the model object gen holds now carries slot-0
    uri1 = f"{s3}/{LINEAGE}/c1/consolidation/model"
    save_generation(model, gen.tokenizer, uri1, slots=slots, objects_uri=area)
    listed = store.list_tree(uri1)
    assert "model.safetensors" not in listed and mf.MANIFEST in listed
    base_size = (tiny_base.folder / "model.safetensors").stat().st_size

    # Another node: an empty cache downloads the generation once, from the object area.
    monkeypatch.setenv(staging.CACHE_ENV, str(tmp_path / "node-2"))
    node = staging.StagingCache(root=tmp_path / "node-2")
    first = staging.stage_generation(uri1, cache=node)
    assert first.downloaded_bytes > base_size
    parent = load_generation(uri1)
    assert torch.equal(logits_of(parent), reference)

    model, slots = sleep(parent, seed=7)
    before = area_files(area)
    uri2 = f"{s3}/{LINEAGE}/c2/consolidation/model"
    save_generation(model, parent.tokenizer, uri2, slots=slots, objects_uri=area)
    new = set(area_files(area)) - set(before)
    assert len(new) == 1 and area_files(area)[new.pop()] < base_size / 10, "only the new slot is a new object"

    third = staging.StagingCache(root=tmp_path / "node-3")
    staging.stage_generation(uri1, cache=third)
    second = staging.stage_generation(uri2, cache=third)
    assert 0 < second.downloaded_bytes < base_size / 10, "files the cache holds by sha256 are linked, not downloaded"
    assert torch.equal(logits_of(load_generation(second.folder)), logits_of(load_generation(uri2)))


def test_sweep_keeps_every_object_a_retained_generation_references(tiny_base: TinyBase, tmp_path: Path, cache) -> None:
    root = tmp_path / "store"
    area = objects.area(str(root), LINEAGE)
    gen = load_generation(tiny_base.folder)
    model, slots = sleep(gen, seed=8)
    kept = save_generation(
        model, gen.tokenizer, str(root / LINEAGE / "c1/consolidation/model"), slots=slots, objects_uri=area
    )
    parent = load_generation(kept)
    model, slots = sleep(parent, seed=9)
    dropped = save_generation(
        model, parent.tokenizer, str(root / LINEAGE / "c2/consolidation/model"), slots=slots, objects_uri=area
    )
    only_dropped = set(area_files(area))
    only_dropped -= {f.sha256 for f in (mf.read(kept) or mf.Manifest((), "")).files if f.in_objects}
    assert len(only_dropped) == 1
    assert objects.sweep(str(root / LINEAGE), grace_s=0) == [], "every object is referenced"
    shutil.rmtree(dropped)  # a generation folder deleted by hand
    assert objects.sweep(str(root / LINEAGE), grace_s=3600) == [], "young objects may belong to an upload in progress"
    assert objects.sweep(str(root / LINEAGE), grace_s=0, dry_run=True) == sorted(only_dropped)
    assert objects.sweep(str(root / LINEAGE), grace_s=0) == sorted(only_dropped)
    assert set(area_files(area)).isdisjoint(only_dropped)
    assert load_generation(kept).slots == ["slot-0"], "the retained generation still loads"


def test_the_servable_forms_of_a_thin_generation_load_without_reverie(
    tiny_base: TinyBase, tmp_path: Path, cache
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from reverie.workloads.steps.export import export_generation
    from reverie.workloads.store.modelio import LoadedGeneration

    gen = load_generation(tiny_base.folder)
    model, slots = sleep(gen, seed=10)
    thin = save_generation(
        model,
        gen.tokenizer,
        str(tmp_path / "store" / LINEAGE / "c1/consolidation/model"),
        slots=slots,
        ledger=gen.ledger,
        objects_uri=objects.area(str(tmp_path / "store"), LINEAGE),
    )
    reverie = logits_of(load_generation(thin))
    merged = export_generation(thin, tmp_path / "merged", form="merged")
    plain = LoadedGeneration(model=AutoModelForCausalLM.from_pretrained(merged), tokenizer=gen.tokenizer)
    assert (logits_of(plain) - reverie).abs().max().item() < 1e-4
    adapter = export_generation(thin, tmp_path / "adapter", form="adapter")
    named = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str(tiny_base.folder), (
        "a thin folder has no weights a server could load: the ledger's base is named"
    )
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(named), adapter)
    assert (logits_of(LoadedGeneration(model=served, tokenizer=gen.tokenizer)) - reverie).abs().max().item() < 1e-4
