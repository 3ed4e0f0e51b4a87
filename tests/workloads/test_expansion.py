"""Expansion: a new zero-initialised expert slot per sleep; earlier slots active and frozen."""

from __future__ import annotations

import pytest
import torch

from reverie.api.steps import ConsolidationSpec
from reverie.workloads.data.memory import parse_memory, question_prompt
from reverie.workloads.ml.expansion import FoldedSlots, add_slot, next_slot_name, slot_parameters
from reverie.workloads.ml.sampling import HFBackend
from reverie.workloads.ml.tiny import TinyBase, memory_records, tell_prompt
from reverie.workloads.ml.trainer import TorchTrainer
from reverie.workloads.steps.knowledge_seeding import (
    KnowledgeSeeding,
    KSState,
    LoopKnobs,
    Roles,
    study_cues,
)
from reverie.workloads.steps.selfstudy import StudyItem, subject_of
from reverie.workloads.store.modelio import load_generation

MLP = ["gate_proj", "up_proj", "down_proj"]


def batch(tok) -> dict[str, torch.Tensor]:
    return tok([question_prompt(tok, "Where does Zorblat live?"), "some other text"], return_tensors="pt", padding=True)


def logits(model, tok) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(tok)).logits


def test_slot_names_count_up() -> None:
    assert next_slot_name([]) == "slot-0"
    assert next_slot_name(["slot-0", "slot-3", "fast"]) == "slot-4"


def test_unlocking_a_slot_changes_no_logit(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    before = logits(gen.model, gen.tokenizer)
    model, name = add_slot(gen.model, rank=8, target_modules=[*MLP, "q_proj", "v_proj"])
    assert (logits(model, gen.tokenizer) - before).abs().max().item() < 1e-6
    # A second slot over a non-trivial first one is function-preserving too.
    with torch.no_grad():
        for p in slot_parameters(model, name).values():
            p.add_(0.1 * torch.randn_like(p))
    mid = logits(model, gen.tokenizer)
    model, second = add_slot(model, rank=8, target_modules=MLP)
    assert second == "slot-1"
    assert (logits(model, gen.tokenizer) - mid).abs().max().item() < 1e-6


def test_earlier_slots_stay_active_and_frozen(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    model, first = add_slot(gen.model, rank=4, target_modules=MLP)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in slot_parameters(model, first).values():
            p.add_(0.1 * torch.randn_like(p))
    model, second = add_slot(model, rank=4, target_modules=MLP)
    assert list(model.base_model.active_adapters) == [first, second]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(slot_parameters(model, second))
    # Both slots contribute: switching the first off changes the output.
    with torch.no_grad():
        for p in slot_parameters(model, second).values():
            p.add_(0.1 * torch.randn_like(p))
    both = logits(model, gen.tokenizer)
    model.base_model.set_adapter([second])
    only_second = logits(model, gen.tokenizer)
    assert (both - only_second).abs().max() > 1e-3
    with pytest.raises(ValueError, match="already exists"):
        add_slot(model, rank=4, target_modules=MLP, name=first)


def test_folded_earlier_slots_compute_the_same_and_restore_the_exact_base(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    model = gen.model
    torch.manual_seed(0)
    names = []
    for _ in range(3):
        model, name = add_slot(model, rank=4, target_modules=[*MLP, "q_proj"])
        with torch.no_grad():
            for p in slot_parameters(model, name).values():
                p.add_(0.1 * torch.randn_like(p))
        names.append(name)
    earlier, new = names[:2], names[2]
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    with model.disable_adapter():
        root = logits(model, gen.tokenizer)  # the base, no slot
    unfolded = logits(model, gen.tokenizer)  # all three active
    folded = FoldedSlots(model, earlier)
    assert list(model.base_model.active_adapters) == [new], "folded slots are not counted twice"
    assert torch.allclose(logits(model, gen.tokenizer), unfolded, atol=1e-4)
    # Inside unfolded() the model with no slot active is the exact base again; after it, folded again.
    with folded.unfolded(), model.disable_adapter():
        assert torch.equal(logits(model, gen.tokenizer), root)
    assert torch.allclose(logits(model, gen.tokenizer), unfolded, atol=1e-4)
    # The new slot still trains through the folded base.
    loss = model(**batch(gen.tokenizer)).logits.pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in slot_parameters(model, new).values())
    folded.restore()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n), "bit for bit"
    model.base_model.set_adapter(names)
    assert torch.allclose(logits(model, gen.tokenizer), unfolded, atol=1e-6)


def test_knowledge_seeding_trains_only_the_new_slot(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    model, first = add_slot(gen.model, rank=4, target_modules=MLP)
    with torch.no_grad():
        for p in slot_parameters(model, first).values():
            p.add_(0.05 * torch.randn_like(p))
    model, slot = add_slot(model, rank=4, target_modules=MLP)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tok = gen.tokenizer
    settings = ConsolidationSpec(
        alpha=0.5,
        steps=3,
        batch_size=4,
        max_new_tokens=4,
        learning_rate=1e-2,
        imitation_group_size=2,
        temperature=1.0,
    )
    memories = [parse_memory(r, where="t") for r in memory_records(tiny_base.new[0])]
    items = [StudyItem(m.id, "summary", tell_prompt(subject_of(m.text) or ""), m.text) for m in memories]
    items.append(StudyItem("general", "general", "Name three fruits.", "", replay=True))
    memory, replay = study_cues(items, tok, {m.id: m for m in memories})
    ks = KnowledgeSeeding(
        model,
        tok,
        HFBackend(model, tok),
        spec=settings,
        knobs=LoopKnobs(lti_prompts=2),
        roles=Roles(student=[first, slot], teacher=[first], memory_teacher=[first]),
        memory=memory,
        replay=replay,
        trainer=TorchTrainer(list(slot_parameters(model, slot).values()), lr=1e-2, max_grad_norm=1.0),
    )
    ks.run(KSState())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    new_slot = set(slot_parameters(model, slot))
    assert changed, "training must move the new slot"
    assert changed <= new_slot, f"only the new slot may change, also changed: {sorted(changed - new_slot)[:3]}"
    assert any(".lora_B." in n for n in changed), "the zero-initialised output side must learn"
