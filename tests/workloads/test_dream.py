"""The dreaming phase: selection, the task measure, ReST-EM on a toy task, end to end, resume."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from reverie.api.phases import ConsolidationSpec, DreamingSpec, GrpoSpec, MemorySource, MemorySpec
from reverie.core.contract import PhaseConfig, parse_result
from reverie.workloads.data.memory import QA, Memory, load_memory_uris
from reverie.workloads.ml import tiny
from reverie.workloads.ml.lm import sft_loss
from reverie.workloads.phases import dream
from reverie.workloads.phases.run_phase import run_phase
from reverie.workloads.store.modelio import load_generation, save_generation

TARGETS = ["gate_proj", "up_proj", "down_proj"]
TOWNS = ["Paris", "Oslo", "Lima", "Kyiv"]


# ----------------------------------------------------------------- pure parts


def _dreams(scores: list[float]) -> list[dream.Dream]:
    return [dream.Dream(context_id="c", kind="qa", text=str(i), round=0, importance=s) for i, s in enumerate(scores)]


def test_selection_keeps_the_top_k_by_importance_plus_b_random_others() -> None:
    ds = _dreams([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    kept = dream.select(ds, k=2, b=2, rng=random.Random(0))
    assert [d.kept for d in ds if d.kept == "topk"] == ["topk", "topk"]
    assert {d.text for d in ds if d.kept == "topk"} == {"1", "3"}
    assert len([d for d in ds if d.kept == "random"]) == 2
    assert len(kept) == 4 and all(d.kept for d in kept)


def test_selection_never_keeps_more_than_it_has() -> None:
    ds = _dreams([0.3, 0.1])
    assert len(dream.select(ds, k=5, b=5, rng=random.Random(0))) == 2


def test_task_contexts_chunk_memories_replay_earlier_ones_and_draw_distractors_from_all() -> None:
    now = [Memory(id=f"m{i}", text=f"Person{i} lives in {TOWNS[i]}.") for i in range(2)]
    old = [Memory(id=f"o{i}", text=f"Elder{i} lives in {TOWNS[2 + i % 2]}.") for i in range(4)]
    ctxs = dream.task_contexts(now, old, chunk_documents=1, replay_ratio=0.5, seed=0)
    assert [c.replay for c in ctxs] == [False, False, True, True]  # ρ/(1−ρ) = 1 replayed chunk per current one
    first = ctxs[0]
    assert [(q.question, q.answer) for q in first.tau] == [("Person0 lives in", "Paris")]
    assert set(first.distractors[0]) == {"Oslo", "Lima", "Kyiv"}
    assert (
        dream.task_contexts(now, old, chunk_documents=2, replay_ratio=0.0, seed=0)[0].text
        == "Person0 lives in Paris.\n\nPerson1 lives in Oslo."
    )


def test_dream_prompts_rotate_through_the_three_kinds_and_hide_the_reference_questions() -> None:
    assert dream.dream_kinds(4, offset=1) == ["restatement", "implications", "qa", "restatement"]
    mem = Memory(id="m", text="Zed lives in Oslo.", qa=(QA("Where does Zed live?", "Oslo"),))
    ctx = dream.task_contexts([mem], [], chunk_documents=1, replay_ratio=0.0, seed=0)[0]
    assert [q.form for q in ctx.tau] == ["cloze"]  # τ never uses the evaluation's own questions


# ----------------------------------------------------------------- a toy dreamer


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generator that, shown "X lives in T.", dreams "X lives in <a random town>." (right 1 time in 4).

    It also knows 12 older people's towns as plain sentences, so the sentence
    pattern itself is familiar and only the new person's town is unknown.
    """
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("toy")
    world = tiny.make_world(13, seed=1, attributes=("city",))
    facts = [tiny.Fact(e, "city", TOWNS[i % 4]) for i, e in enumerate(world.entities)]
    new, old = facts[:1], facts[1:]
    tok = tiny.build_tokenizer([f.sentence for f in facts] + TOWNS + list(dream.DREAM_INSTRUCTIONS.values()))
    model = tiny.build_tiny_model(tok, seed=0)
    rng = random.Random(0)
    prompts = [(dream.dream_prompt(tok, f.sentence, k), f.entity) for f in new for k in dream.DREAM_INSTRUCTIONS]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        batch = [(p, f"{e} lives in {rng.choice(TOWNS)}." + tok.eos_token) for p, e in rng.choices(prompts, k=8)]
        batch += [(f.entity, f" lives in {f.value}." + tok.eos_token) for f in rng.choices(old, k=8)]
        loss = sft_loss(model, tok, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_generation(model, tok, root / "gen-0")
    tiny.write_memories_jsonl(root / "mem" / "now.jsonl", tiny.memory_records(new))
    tiny.write_memories_jsonl(root / "mem" / "old.jsonl", tiny.memory_records(old, prefix="old"))
    return root


def _toy_context(root: Path) -> dream.TaskContext:
    now = load_memory_uris([str(root / "mem" / "now.jsonl")])
    old = load_memory_uris([str(root / "mem" / "old.jsonl")])
    return dream.task_contexts(now, old, chunk_documents=1, replay_ratio=0.0, seed=0)[0]


SPEC = DreamingSpec(
    dreams_per_context=24,
    top_k=2,
    random_extra=2,
    max_new_tokens=10,
    temperature=1.0,
    top_p=1.0,
    noise_expert_scale=0.0,
    probe_steps=5,
    m_step_epochs=5,
    inner_learning_rate=3e-3,
    rest_em_iterations=1,
)


def test_importance_is_the_norm_of_the_dream_loss_gradient_over_the_dreaming_slot(toy: Path) -> None:
    dreamer, _ = dream.open_dreamer(str(toy / "gen-0"), spec=SPEC, target_modules=TARGETS)
    params = dreamer.slot_params()
    text = "Somebody lives in Lima."
    score = dream.importance(dreamer.model, dreamer.tokenizer, text, params)
    loss = sft_loss(dreamer.model, dreamer.tokenizer, [("", text)])
    loss.backward()
    by_hand = torch.sqrt(sum((p.grad**2).sum() for p in params if p.grad is not None))
    assert score == pytest.approx(float(by_hand), rel=1e-5) and score > 0


def test_a_dream_stating_the_fact_improves_tau_and_a_wrong_one_does_not(toy: Path) -> None:
    dreamer, _ = dream.open_dreamer(str(toy / "gen-0"), spec=SPEC, target_modules=TARGETS)
    ctx = _toy_context(toy)
    person, town = ctx.tau[0].question.split()[0], ctx.tau[0].answer
    before = dream.task_measure(dreamer.model, dreamer.tokenizer, ctx)
    gains = {
        t: dream.isolated_update_gain(
            dreamer.model,
            dreamer.tokenizer,
            f"{person} lives in {t}.",
            ctx,
            tau_before=before,
            spec=SPEC,
            target_modules=TARGETS,
            seed=0,
        )
        for t in TOWNS
    }
    assert gains[town] > 0
    assert all(g < 0 for t, g in gains.items() if t != town), gains
    # The probe is gone and the model is unchanged: isolation.
    assert dream.task_measure(dreamer.model, dreamer.tokenizer, ctx) == pytest.approx(before, abs=1e-6)
    assert dream.PROBE_ADAPTER not in dreamer.model.peft_config


def test_rest_em_step_raises_the_rate_of_rewarded_dreams(toy: Path) -> None:
    """E-step on the toy, M-step on its rewarded dreams, then fresh dreams are rewarded more often.

    Rewards are judged against the same untouched model θ₀ before and after, so
    the rise measures the generator, not a moving baseline.
    """
    ctx = _toy_context(toy)
    generator, _ = dream.open_dreamer(str(toy / "gen-0"), spec=SPEC, target_modules=TARGETS)
    judge, _ = dream.open_dreamer(str(toy / "gen-0"), spec=SPEC, target_modules=TARGETS)
    before = dream.task_measure(judge.model, judge.tokenizer, ctx)

    def rewarded(round_: int) -> list[dream.Dream]:
        ds = generator.sample([ctx], round_=round_, indices=[0])
        for j, d in enumerate(ds):
            d.reward = int(
                dream.isolated_update_gain(
                    judge.model,
                    judge.tokenizer,
                    d.text,
                    ctx,
                    tau_before=before,
                    spec=SPEC,
                    target_modules=TARGETS,
                    seed=j,
                )
                > 0
            )
        return ds

    first = rewarded(0)
    wins = [d for d in first if d.reward]
    assert 0 < len(wins) < len(first)
    pairs = [
        (dream.dream_prompt(generator.tokenizer, ctx.text, d.kind), d.text + generator.tokenizer.eos_token)
        for d in wins
    ]
    dream.m_step(
        generator.model,
        generator.tokenizer,
        generator.slot,
        generator_pairs=pairs,
        fold_texts=[d.text + generator.tokenizer.eos_token for d in wins],
        spec=SPEC,
        seed=0,
    )
    second = rewarded(1)
    rate0 = sum(d.reward or 0 for d in first) / len(first)
    rate1 = sum(d.reward or 0 for d in second) / len(second)
    assert rate1 > rate0 + 0.2, (rate0, rate1)


# ----------------------------------------------------------------- the phase


def _config(root: Path, base: Path, out: str, **dreaming: object) -> PhaseConfig:
    spec = dict(
        dreams_per_context=3,
        top_k=1,
        random_extra=1,
        max_new_tokens=8,
        probe_steps=2,
        m_step_epochs=2,
        rest_em_iterations=2,
    )
    spec.update(dreaming)
    return PhaseConfig(
        step="dreaming",
        cycle="c1",
        lineage="lin",
        store_uri=str(root),
        output_uri=str(root / out),
        base_generation="g0",
        base_uri=str(base),
        inputs={"consolidation": str(base)},
        memory=MemorySpec(sources=[MemorySource(uri="mem/now.jsonl")]),
        prior_memory_uris=[str(root / "mem" / "old.jsonl")],
        consolidation=ConsolidationSpec(replay_ratio=0.5),
        dreaming=DreamingSpec(**spec),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_base: tiny.TinyBase) -> Path:
    root = tmp_path_factory.mktemp("store")
    tiny.write_memories_jsonl(root / "mem" / "now.jsonl", tiny.memory_records(tiny_base.new[0][:3]))
    tiny.write_memories_jsonl(root / "mem" / "old.jsonl", tiny.memory_records(tiny_base.old[:4], prefix="old"))
    return root


def test_dreaming_phase_runs_end_to_end_through_the_job_contract(store: Path, tiny_base: tiny.TinyBase) -> None:
    config = _config(store, tiny_base.folder, "lin/c1/dreaming")
    path = store / "phase.json"
    path.write_text(json.dumps(config.wire()))
    assert run_phase("dreaming", str(path)) == 0
    result = parse_result((store / "lin/c1/dreaming/result.json").read_text(), step="dreaming")
    assert result.status == "Succeeded" and result.slot
    assert result.metrics["contexts"] == 6  # 3 memories + ρ/(1−ρ)·3 = 3 replayed
    assert result.metrics["dreams_generated"] == 2 * 6 * 3
    assert result.metrics["dreams_kept"] == 2 * 6 * 2
    assert {"rewarded_rate_round_0", "rewarded_rate_round_1", "tau_before", "tau_after"} <= set(result.metrics)
    gen = load_generation(result.output_uri or "")
    assert gen.slots[-1] == result.slot and gen.ledger["slots"][-1]["phase"] == "dreaming"
    dreams = [json.loads(line) for line in (store / "lin/c1/dreaming/dreams.jsonl").read_text().splitlines()]
    assert len(dreams) == 36 and all(d["importance"] is not None for d in dreams)
    assert sum(1 for d in dreams if d["reward"] is not None) == 24


def test_dreaming_resumes_after_an_interruption_with_the_uninterrupted_result(
    store: Path,
    tiny_base: tiny.TinyBase,
) -> None:
    whole = dream.run(_config(store, tiny_base.folder, "whole"))
    interrupted = _config(store, tiny_base.folder, "split")
    first = dream.run(interrupted, stop_after=lambda s: s.round == 1 and len(s.contexts_done) == 2)
    assert first.status == "Failed" and first.checkpoint_uri
    resumed = dream.run(interrupted.model_copy(update={"resume_from": first.checkpoint_uri}))
    assert resumed.status == "Succeeded"
    read = [(store / d / "dreams.jsonl").read_text() for d in ("whole", "split")]
    assert read[0] == read[1]
    strip = {"wall_seconds", "tau_before"}  # a resumed attempt did not see the start
    assert {k: v for k, v in resumed.metrics.items() if k not in strip} == pytest.approx(
        {k: v for k, v in whole.metrics.items() if k not in strip}
    )


def test_grpo_variant_trains_the_generator_through_trl(store: Path, tiny_base: tiny.TinyBase) -> None:
    config = _config(
        store, tiny_base.folder, "grpo", rest_em_iterations=1, grpo=GrpoSpec(enabled=True, num_generations=2)
    )
    result = dream.run(config)
    assert result.status == "Succeeded"
    assert load_generation(result.output_uri or "").slots[-1] == result.slot


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm installed: the GPU path runs for real")
def test_vllm_backend_is_import_guarded_on_cpu(store: Path, tiny_base: tiny.TinyBase) -> None:
    with pytest.raises(RuntimeError, match="GPU image"):
        dream.run(_config(store, tiny_base.folder, "vllm", backend="vllm"))
