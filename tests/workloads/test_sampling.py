"""The generation interface: seeded determinism, greedy decoding, logprobs, slots, the noise expert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reverie.workloads.data.memory import question_prompt
from reverie.workloads.ml.expansion import add_slot, slot_parameters
from reverie.workloads.ml.sampling import HFBackend, combine_adapters, make_backend
from reverie.workloads.ml.tiny import TinyBase
from reverie.workloads.store.modelio import load_generation, save_generation


@pytest.fixture(scope="module")
def slotted(tiny_base: TinyBase, tmp_path_factory: pytest.TempPathFactory):
    """The tiny base with two non-trivial slots, saved and reloaded."""
    gen = load_generation(tiny_base.folder)
    model = gen.model
    torch.manual_seed(3)
    for _ in range(2):
        model, name = add_slot(model, rank=4, target_modules=["up_proj", "down_proj"])
        with torch.no_grad():
            for p in slot_parameters(model, name).values():
                p.add_(0.2 * torch.randn_like(p))
    folder = save_generation(model, gen.tokenizer, tmp_path_factory.mktemp("slotted") / "g2")
    return load_generation(folder)


def prompts(tiny_base: TinyBase, tok) -> list[str]:
    return [question_prompt(tok, f.question) for f in tiny_base.old[:6]]


def test_greedy_answers_old_facts_and_is_deterministic(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    be = make_backend("hf", gen.model, gen.tokenizer)
    out = be.generate(prompts(tiny_base, gen.tokenizer), max_new_tokens=6, temperature=0.0)
    assert [t.strip() for t in out.texts] == [f.answer for f in tiny_base.old[:6]]
    assert out.texts == be.generate(prompts(tiny_base, gen.tokenizer), max_new_tokens=6, temperature=0.0).texts


def test_sampling_is_reproducible_under_a_seed_and_leaves_global_rng_alone(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    be = HFBackend(gen.model, gen.tokenizer)
    ps = prompts(tiny_base, gen.tokenizer) * 4
    torch.manual_seed(123)
    a = be.generate(ps, max_new_tokens=8, temperature=1.5, seed=7)
    after_a = torch.rand(1)
    torch.manual_seed(123)
    b = be.generate(ps, max_new_tokens=8, temperature=1.5, seed=7)
    assert a.token_ids == b.token_ids and torch.equal(after_a, torch.rand(1))
    c = be.generate(ps, max_new_tokens=8, temperature=1.5, seed=8)
    assert c.token_ids != a.token_ids


def test_logprobs_match_a_forward_pass(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    be = HFBackend(gen.model, gen.tokenizer)
    p = prompts(tiny_base, gen.tokenizer)[0]
    out = be.generate([p], max_new_tokens=4, temperature=1.0, seed=1, return_logprobs=True)
    ids = gen.tokenizer(p, add_special_tokens=False).input_ids + out.token_ids[0]
    with torch.no_grad():
        logp = torch.log_softmax(gen.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    n = len(out.token_ids[0])
    expected = [logp[len(ids) - n - 1 + j, t].item() for j, t in enumerate(out.token_ids[0])]
    assert out.logprobs is not None
    assert out.logprobs[0] == pytest.approx(expected, abs=1e-4)


def test_stop_strings_cut_text_and_ids_together(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    be = HFBackend(gen.model, gen.tokenizer)
    f = tiny_base.old[0]
    stop = f.answer[2:4]
    out = be.generate([question_prompt(gen.tokenizer, f.question)], max_new_tokens=6, temperature=0.0, stop=[stop])
    assert out.texts[0] == f.answer[: f.answer.index(stop)]
    assert gen.tokenizer.decode(out.token_ids[0]) in f.answer[: f.answer.index(stop) + 1]


def test_adapters_select_slots_and_restore_the_previous_set(slotted, tiny_base: TinyBase) -> None:
    tok, model = slotted.tokenizer, slotted.model
    be = HFBackend(model, tok)
    ps = prompts(tiny_base, tok)
    kw = {"max_new_tokens": 4, "temperature": 0.0, "return_logprobs": True}
    both = be.generate(ps, **kw)
    none = be.generate(ps, adapters=[], **kw)
    first = be.generate(ps, adapters=["slot-0"], **kw)
    assert both.logprobs != none.logprobs and first.logprobs != both.logprobs
    assert list(model.base_model.active_adapters) == ["slot-0", "slot-1"]
    base_only = HFBackend(load_generation(tiny_base.folder).model, tok).generate(ps, **kw)
    assert none.token_ids == base_only.token_ids
    flat = [x for row in none.logprobs or [] for x in row]
    assert flat == pytest.approx([x for row in base_only.logprobs or [] for x in row], abs=1e-5)
    with pytest.raises(ValueError, match="unknown expert slot"):
        be.generate(ps, adapters=["slot-9"])


def test_random_extra_expert_perturbs_then_vanishes(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    be = HFBackend(gen.model, gen.tokenizer)
    ps = prompts(tiny_base, gen.tokenizer)
    kw = {"max_new_tokens": 4, "temperature": 0.0, "return_logprobs": True}
    clean = be.generate(ps, **kw)
    noisy = be.generate(ps, noise_scale=0.5, seed=1, **kw)
    assert noisy.logprobs != clean.logprobs
    assert be.generate(ps, **kw).logprobs == clean.logprobs


def test_combined_adapter_is_the_exact_sum_of_slots(slotted, tmp_path: Path) -> None:
    """vLLM serves one LoRA per request: stacking the slots' ranks must reproduce their sum."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = slotted.folder
    combined = combine_adapters([folder / "slots" / "slot-0", folder / "slots" / "slot-1"], tmp_path / "combo")
    base = AutoModelForCausalLM.from_pretrained(folder)
    single = PeftModel.from_pretrained(base, combined)
    enc = slotted.tokenizer(["Where does Zorblat live?"], return_tensors="pt")
    with torch.no_grad():
        expected = slotted.model(**enc).logits
        got = single(**enc).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_unknown_backend_is_rejected(tiny_base: TinyBase) -> None:
    with pytest.raises(ValueError, match="unknown sampling backend"):
        make_backend("tgi", None, None)
    with pytest.raises(ValueError, match="pass folder"):
        make_backend("vllm", None, None)
