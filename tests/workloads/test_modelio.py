"""Generation folders: save/load round trips with expert slots, remote staging, content hashes."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import torch

from reverie.workloads.data.memory import question_prompt
from reverie.workloads.ml.expansion import add_slot, slot_parameters
from reverie.workloads.ml.tiny import TinyBase
from reverie.workloads.store.modelio import (
    GenerationError,
    content_hash,
    load_generation,
    save_generation,
    stage_in,
)


def logits_of(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(
        [question_prompt(tokenizer, "Where does Zorblat live?"), "Hello"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        return model(**enc).logits


def with_trained_slot(tiny_base: TinyBase):
    gen = load_generation(tiny_base.folder)
    model, name = add_slot(gen.model, rank=4, target_modules=["down_proj"])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in slot_parameters(model, name).values():
            p.add_(0.05 * torch.randn_like(p))
    return gen, model, name


def test_round_trip_is_bit_exact_with_slots(tiny_base: TinyBase, tmp_path: Path) -> None:
    gen, model, name = with_trained_slot(tiny_base)
    before = logits_of(model, gen.tokenizer)
    out = save_generation(model, gen.tokenizer, tmp_path / "g1")
    assert (out / "slots" / name / "adapter_model.safetensors").is_file()
    again = load_generation(out)
    assert again.slots == [name]
    assert not any(p.requires_grad for p in again.model.parameters())
    assert torch.equal(logits_of(again.model, again.tokenizer), before)
    assert again.tokenizer("Where does X live?").input_ids == gen.tokenizer("Where does X live?").input_ids
    assert again.tokenizer.padding_side == "left"


def test_base_weights_saved_without_adapter_layers(tiny_base: TinyBase, tmp_path: Path) -> None:
    gen, model, _ = with_trained_slot(tiny_base)
    out = save_generation(model, gen.tokenizer, tmp_path / "g1")
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    original = load_file(str(tiny_base.folder / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in saved)
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in saved), "a sleep never changes the base weights"


def test_content_hash_is_deterministic_and_sensitive(tiny_base: TinyBase, tmp_path: Path) -> None:
    h = content_hash(tiny_base.folder)
    assert h.startswith("sha256:") and h == content_hash(tiny_base.folder)
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(tiny_base.folder, copy)
    assert content_hash(copy) == h
    (copy / "result.json").write_text("{}")  # run records do not change the model's identity
    assert content_hash(copy) == h
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert content_hash(copy) != h


def test_remote_uri_is_staged_through_fsspec(tiny_base: TinyBase) -> None:
    gen, model, name = with_trained_slot(tiny_base)
    save_generation(model, gen.tokenizer, "memory://store/lineage/g1")
    fs = fsspec.filesystem("memory")
    assert fs.isfile("/store/lineage/g1/slots.json")
    again = load_generation("memory://store/lineage/g1")
    assert again.slots == [name]
    assert torch.equal(logits_of(again.model, again.tokenizer), logits_of(model, gen.tokenizer))


def test_missing_generation_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GenerationError, match="does not exist"):
        stage_in(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenerationError, match=r"no config\.json"):
        load_generation(tmp_path / "empty")
