"""Servable forms: a champion that plain transformers / PEFT load, with the logits Reverie evaluated.

The generation under test has two slots of different ranks on different modules
(the second adds a module the first does not touch), both with non-zero B and
PEFT's default scaling α/r = 2, so a missed scale, a dropped slot or a wrong
module mapping all show up in the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reverie.workloads.data.memory import question_prompt
from reverie.workloads.ml.expansion import add_slot, slot_parameters
from reverie.workloads.ml.tiny import TinyBase
from reverie.workloads.steps.export import ExportError, export_generation, read_manifest
from reverie.workloads.store.modelio import load_generation, save_generation

# fp32 on CPU: folding B·A into W changes only the order of the additions
# (measured 2026-12-01: max |Δ| 2.9e-6 merged, 1.9e-6 adapter).
TOLERANCE = 1e-4


def logits_of(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(
        [question_prompt(tokenizer, "Where does Zorblat live?"), "Hello there"],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    with torch.no_grad():
        return model(**enc).logits


@pytest.fixture(scope="module")
def two_slot_generation(tiny_base: TinyBase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    gen = load_generation(tiny_base.folder)
    model, first = add_slot(gen.model, rank=4, target_modules=["down_proj"])
    model, second = add_slot(model, rank=2, target_modules=["down_proj", "up_proj"])
    torch.manual_seed(3)
    with torch.no_grad():
        for name in (first, second):
            for p in slot_parameters(model, name).values():
                p.add_(0.1 * torch.randn_like(p))
    return save_generation(model, gen.tokenizer, tmp_path_factory.mktemp("gen") / "gen-2")


@pytest.fixture(scope="module")
def reverie_logits(two_slot_generation: Path) -> torch.Tensor:
    """Base + slots as evaluation loads them (modelio, every slot active)."""
    gen = load_generation(two_slot_generation)
    assert gen.slots == ["slot-0", "slot-1"]
    return logits_of(gen.model, gen.tokenizer)


def test_merged_form_loads_with_plain_transformers_and_matches(
    two_slot_generation: Path,
    reverie_logits: torch.Tensor,
    tiny_base: TinyBase,
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_generation(two_slot_generation, tmp_path / "merged", form="merged")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "slots").exists() and not (out / "slots.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    delta = (logits_of(model, tokenizer) - reverie_logits).abs().max().item()
    assert delta < TOLERANCE, f"merged champion differs from base+slots by {delta}"
    base = AutoModelForCausalLM.from_pretrained(tiny_base.folder)
    assert (logits_of(base, tokenizer) - reverie_logits).abs().max().item() > 100 * TOLERANCE, "the slots must matter"


def test_adapter_form_is_one_peft_lora_of_summed_rank(
    two_slot_generation: Path, reverie_logits: torch.Tensor, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_generation(two_slot_generation, tmp_path / "adapter", form="adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 + 2 and cfg["lora_alpha"] == cfg["r"], "rank Σrᵢ, scaling folded into B"
    assert sorted(cfg["target_modules"]) == ["down_proj", "up_proj"]
    assert cfg["base_model_name_or_path"] == str(two_slot_generation)
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, out)
    tokenizer = AutoTokenizer.from_pretrained(two_slot_generation)
    tokenizer.padding_side = "left"
    delta = (logits_of(model, tokenizer) - reverie_logits).abs().max().item()
    assert delta < TOLERANCE, f"adapter champion differs from base+slots by {delta}"
    assert read_manifest(out)["slots"] == ["slot-0", "slot-1"]


def test_generation_without_slots_merges_to_itself_and_has_no_adapter(tiny_base: TinyBase, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = export_generation(tiny_base.folder, tmp_path / "merged")
    saved, original = load_file(str(out / "model.safetensors")), load_file(str(tiny_base.folder / "model.safetensors"))
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    with pytest.raises(ExportError, match="no expert slots"):
        export_generation(tiny_base.folder, tmp_path / "adapter", form="adapter")
    assert not (tmp_path / "adapter").exists()


def test_export_replaces_an_older_export_whole(two_slot_generation: Path, tmp_path: Path) -> None:
    out = tmp_path / "servable"
    out.mkdir()
    (out / "stale.bin").write_text("left from an earlier export")
    export_generation(two_slot_generation, out, form="adapter")
    assert not (out / "stale.bin").exists()
    assert read_manifest(out)["form"] == "adapter"
    assert [p.name for p in tmp_path.iterdir()] == ["servable"], "no temporary folder is left behind"
