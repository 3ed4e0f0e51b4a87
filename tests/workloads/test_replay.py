"""Replay: a fixed budget of earlier sleeps' stored items, cached targets, chosen by what the model is losing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reverie.api.steps import ReplaySpec
from reverie.core.contract import consolidated_memories_uri, parse_result
from reverie.workloads.ml.tiny import TinyBase, tell_prompt
from reverie.workloads.steps import replay
from reverie.workloads.steps import run_step as rp
from reverie.workloads.steps.selfstudy import StudyItem, answer_tokens
from reverie.workloads.store.modelio import load_generation


def stored(memory: str, n: int, *, study: str = "s1") -> list[replay.StoredItem]:
    return [
        replay.StoredItem(
            study=study,
            row=k,
            item=StudyItem(memory_id=memory, kind="question", prompt=f"{memory} q{k}?", answer=f"a{k}"),
            answer_ids=(1, 2),
        )
        for k in range(n)
    ]


def test_the_budget_does_not_grow_with_the_ancestry() -> None:
    spec = ReplaySpec(items=10)
    small = replay.choose([s for m in "ab" for s in stored(m, 6)], spec=spec, seed=0)
    large = replay.choose([s for m in "abcdefghij" for s in stored(m, 30)], spec=spec, seed=0)
    assert len(small.items) == len(large.items) == 10
    everything = replay.choose(
        [s for m in "abcdefghij" for s in stored(m, 30)], spec=ReplaySpec(items=10, choose="all"), seed=0
    )
    assert len(everything.items) == 300, "'all' ignores the budget"
    assert len(replay.choose(stored("a", 4), spec=spec, seed=0).items) == 4, "fewer stored items than the budget: all"


def test_forgotten_memories_get_most_of_the_budget_and_the_choice_is_reproducible() -> None:
    items = [s for m in ("known", "half", "lost") for s in stored(m, 20)]
    losses = {"known": 0.1, "half": 1.0, "lost": 2.9}
    choice = replay.choose(items, spec=ReplaySpec(items=20), seed=3, losses=losses)
    taken = {m["id"]: m["items"] for m in choice.memories}
    assert taken == {"known": 1, "half": 5, "lost": 14}
    assert sum(taken.values()) == 20
    again = replay.choose(items, spec=ReplaySpec(items=20), seed=3, losses=losses)
    assert [(s.study, s.row) for s in again.items] == [(s.study, s.row) for s in choice.items]
    uniform = replay.choose(items, spec=ReplaySpec(items=20, choose="uniform"), seed=3)
    assert max(m["items"] for m in uniform.memories) < 14


def test_a_memory_with_few_stored_items_passes_its_share_on() -> None:
    items = stored("lost", 2) + stored("known", 20)
    choice = replay.choose(items, spec=ReplaySpec(items=10), seed=0, losses={"lost": 5.0, "known": 0.5})
    assert {m["id"]: m["items"] for m in choice.memories} == {"lost": 2, "known": 8}


def test_the_probe_finds_what_the_model_does_not_know(tiny_base: TinyBase) -> None:
    gen = load_generation(tiny_base.folder)
    tok = gen.tokenizer

    def items_of(facts, prefix: str) -> list[replay.StoredItem]:
        by_entity: dict[str, list] = {}
        for f in facts:
            by_entity.setdefault(f.entity, []).append(f)
        return [
            replay.StoredItem(
                study="s",
                row=n,
                item=StudyItem(memory_id=f"{prefix}-{n}", kind="summary", prompt=tell_prompt(e), answer=a),
                answer_ids=tuple(answer_tokens(tok, a, max_tokens=32)),
            )
            for n, (e, fs) in enumerate(by_entity.items())
            for a in [" ".join(f.sentence for f in fs)]
        ]

    known, unknown = items_of(tiny_base.old, "old"), items_of(tiny_base.new[0], "new")
    losses = replay.probe_losses(gen.model, tok, [*known, *unknown], adapters=[], seed=0)
    old = [losses[s.item.memory_id] for s in known]
    new = [losses[s.item.memory_id] for s in unknown]
    assert sum(old) / len(old) < 0.5 * sum(new) / len(new)
    choice = replay.choose([*known, *unknown], spec=ReplaySpec(items=6), seed=0, losses=losses)
    assert sum(1 for s in choice.items if s.item.memory_id.startswith("new")) > 3


def sleep(attempt_config, tmp_path: Path, cycle: int, **consolidation) -> dict[str, float]:
    """Consolidation of cycle ``cycle`` on top of the one before, replaying every earlier sleep."""
    name = f"c{cycle}"
    cfg = json.loads(attempt_config(f"{name}.json", output=f"l/{name}/consolidation", **consolidation).read_text())
    cfg["cycle"] = name
    if cycle > 1:
        cfg["baseUri"] = str(tmp_path / f"store/l/c{cycle - 1}/consolidation/model")
        cfg["priorMemoryUris"] = [
            consolidated_memories_uri(str(tmp_path / "store"), "l", f"c{c}") for c in range(1, cycle)
        ]
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    assert rp.run_step("consolidation", str(tmp_path / f"{name}.json")) == 0
    out = tmp_path / f"store/l/{name}/consolidation"
    return parse_result((out / "result.json").read_text(), step="consolidation").metrics


def test_replayed_items_keep_their_cached_targets_and_a_retry_takes_the_same_set(
    attempt_config, tmp_path: Path
) -> None:
    budget = {"replay": {"items": 1}}
    first = sleep(attempt_config, tmp_path, 1, **budget)
    second = sleep(attempt_config, tmp_path, 2, **budget)
    study = tmp_path / "store/l/c2/consolidation/selfstudy"
    own = [json.loads(line) for line in (study / "items.jsonl").read_text().splitlines()]
    # The teacher ran on this sleep's own items only: the replayed ones came with their targets.
    assert second["teacher_items"] == len(own)
    assert first["replay_earlier_items"] == 0
    assert second["replay_earlier_items"] == 1 and second["replay_bytes"] > 0
    chosen = json.loads((study / "replay.json").read_text())
    assert chosen["strategy"] == "forgotten" and sum(m["items"] for m in chosen["memories"]) == 1
    assert [src["study"] for src in chosen["sources"]] == [str(tmp_path / "store/l/c1/consolidation/selfstudy")]
    assert not any(r["replay"] and r["kind"] != "general" for r in own), "earlier rows are referenced, not copied"

    # A retry of the same sleep (its study kept) runs no teacher pass and replays the same rows.
    (study.parent / "result.json").unlink()
    again = sleep(attempt_config, tmp_path, 2, **budget)
    assert again["teacher_items"] == 0 and again["replay_earlier_items"] == 1
    assert json.loads((study / "replay.json").read_text()) == chosen

    area = tmp_path / "store/l/objects"
    held = set(area.rglob("*"))
    third = sleep(attempt_config, tmp_path, 3, **budget)
    # Earlier slots were folded into the base for the sleep, and put back exactly: one new object, the slot.
    assert len({p for p in area.rglob("*") if p.is_file()} - held) == 1
    assert third["replay_earlier_items"] == 1, "the third sleep replays as much as the second"
    third_own = (tmp_path / "store/l/c3/consolidation/selfstudy/items.jsonl").read_text().splitlines()
    assert third["teacher_items"] == len(third_own)


def test_a_changed_earlier_study_is_named_not_replayed_silently(attempt_config, tmp_path: Path, capsys) -> None:
    budget = {"replay": {"items": 1}}
    sleep(attempt_config, tmp_path, 1, **budget)
    sleep(attempt_config, tmp_path, 2, **budget)
    earlier = tmp_path / "store/l/c1/consolidation/selfstudy/teacher-topk.safetensors"
    earlier.write_bytes(earlier.read_bytes() + b" ")
    (tmp_path / "store/l/c2/consolidation/result.json").unlink()
    assert rp.run_step("consolidation", str(tmp_path / "c2.json")) != 0
    result = json.loads((tmp_path / "store/l/c2/consolidation/result.json").read_text())
    assert "c1/consolidation/selfstudy changed" in result["message"]


@pytest.mark.parametrize("n", [0, 3])
def test_a_sleep_replays_as_many_general_requests_as_asked_none_an_evaluation_question(
    attempt_config, tmp_path: Path, n: int
) -> None:
    from reverie.workloads.data.eval_sets import general_qa
    from reverie.workloads.steps.selfstudy import GENERAL_REPLAY_PROMPTS, load_study

    assert len(set(GENERAL_REPLAY_PROMPTS)) == ReplaySpec.model_fields["general_prompts"].metadata[-1].le
    asked = {q.question.lower() for q in general_qa()}
    assert not asked & {p.lower() for p in GENERAL_REPLAY_PROMPTS}, "retention is never scored on a replayed prompt"

    sleep(attempt_config, tmp_path, 1, replay={"generalPrompts": n})
    loaded = load_study(tmp_path / "store/l/c1/consolidation/selfstudy")
    assert loaded is not None
    general = [i.prompt for i in loaded[0] if i.replay and i.kind == "general"]
    assert set(general) <= set(GENERAL_REPLAY_PROMPTS[:n]) and (len(general) > 0) == (n > 0)


@pytest.mark.parametrize(("field", "value"), [("items", -1), ("choose", "oldest"), ("generalPrompts", 61)])
def test_a_bad_replay_spec_names_the_field(field: str, value: object) -> None:
    from pydantic import ValidationError

    from reverie.api.steps import ConsolidationSpec

    with pytest.raises(ValidationError, match=f"replay.{field}"):
        ConsolidationSpec.model_validate({"replay": {field: value}})


def test_a_stored_item_that_holds_an_evaluation_question_is_never_replayed_or_probed(tmp_path: Path) -> None:
    import torch

    from reverie.workloads.data.heldout import HeldOut
    from reverie.workloads.data.memory import parse_memory
    from reverie.workloads.steps.selfstudy import TeacherTargets, save_study

    memory = parse_memory(
        {"id": "m", "text": "Ada Quill was born in Vemora.", "qa": [{"q": "Where was Ada Quill born?", "a": "Vemora"}]},
        where="test",
    )
    items = [
        StudyItem(memory_id="m", kind="question", prompt="Where was Ada Quill born?", answer="In Vemora."),
        StudyItem(
            memory_id="m", kind="summary", prompt="Tell me about Ada Quill.", answer="Ada Quill was born in Vemora."
        ),
        StudyItem(memory_id="general", kind="general", prompt="Name three fruits.", answer="Apples.", replay=True),
    ]
    targets = TeacherTargets(
        answer_ids=[[1, 2], [3, 4], [5]],
        topk_ids=torch.zeros(3, 2, 2, dtype=torch.long),
        topk_logprobs=torch.zeros(3, 2, 2),
    )
    study = save_study(tmp_path / "selfstudy", items, targets)
    held = HeldOut.of([memory], questions_per_memory=3)
    kept, missing = replay.stored_items([str(study), str(tmp_path / "none")], allows=held.allows)
    assert [s.item.prompt for s in kept] == ["Tell me about Ada Quill."], "the probe question and general rows stay out"
    assert missing == [str(tmp_path / "none")]
    loaded = replay.load_targets(replay.choose(kept, spec=ReplaySpec(items=4), seed=0))
    assert loaded.answer_ids == [[3, 4]]


@pytest.mark.parametrize("anchor", [False, True])
def test_a_base_teacher_reads_new_memories_with_the_root_weights_and_replay_keeps_the_champions(
    attempt_config, tmp_path: Path, tiny_base: TinyBase, anchor: bool
) -> None:
    """General replay prompts are the champion's, or with ``replay.anchorGeneral`` the root's, like new memories."""
    from reverie.workloads.data.memory import read_memory_uri
    from reverie.workloads.steps.knowledge_seeding import teacher_prompt_of
    from reverie.workloads.steps.selfstudy import load_study, teacher_targets

    sleep(attempt_config, tmp_path, 1)
    sleep(attempt_config, tmp_path, 2, teacher="base", replay={"anchorGeneral": anchor})  # sleep 1's slot folded in
    loaded = load_study(tmp_path / "store/l/c2/consolidation/selfstudy")
    assert loaded is not None
    items, stored = loaded
    memories = {m.id: m for m in read_memory_uri(str(tmp_path / "store/memories/session-1.jsonl"))}
    groups = {
        "memory": [n for n, i in enumerate(items) if not i.replay],
        "general": [n for n, i in enumerate(items) if i.replay and i.kind == "general"],
    }
    assert groups["memory"] and groups["general"]

    def targets(model_uri: str, group: str):
        gen = load_generation(model_uri)
        chosen = [items[n] for n in groups[group]]
        return teacher_targets(
            gen.model,
            gen.tokenizer,
            chosen,
            teacher_prompts=[teacher_prompt_of(i, gen.tokenizer, memories) for i in chosen],
            adapters_of=lambda i: gen.slots,
            k=stored.topk_ids.shape[-1],
            max_tokens=stored.topk_ids.shape[1],
        )

    root, champion = str(tiny_base.folder), str(tmp_path / "store/l/c1/consolidation/model")
    for group, reader, other in (
        ("memory", root, champion),
        ("general", root if anchor else champion, champion if anchor else root),
    ):
        want = targets(reader, group)
        got = stored.topk_logprobs[groups[group], : want.topk_logprobs.shape[1]]
        finite = want.topk_logprobs.isfinite()
        assert (got[finite] - want.topk_logprobs[finite]).abs().max() < 1e-4, f"{group} rows"
        # The two readers differ, so the check above can tell them apart.
        wrong = targets(other, group)
        finite = wrong.topk_logprobs.isfinite()
        got = stored.topk_logprobs[groups[group], : wrong.topk_logprobs.shape[1]]
        assert (got[finite] - wrong.topk_logprobs[finite]).abs().max() > 1e-3, f"{group} rows"
