"""The evaluation phase: metric arithmetic, a real tiny model that knows half the facts, the champion cache."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from reverie.api.steps import EvaluationSpec, MemorySource, MemorySpec, Suite
from reverie.core.contract import AttemptConfig, parse_result
from reverie.workloads.data.eval_sets import EvalSets, FewShotItem, QAPair, load_eval_sets
from reverie.workloads.data.memory import QA, Memory, load_memory_uris
from reverie.workloads.ml import tiny
from reverie.workloads.steps.evaluate import (
    AskItem,
    ModelScorer,
    build_items,
    candidate_uri,
    run,
    score_model,
)
from reverie.workloads.store.modelio import load_generation


@dataclass
class LookupScorer:
    """A deterministic stand-in model for the metric arithmetic only: it answers from a table."""

    known: dict[str, str]
    nll: tuple[float, int] = (2.0, 4)

    def answers(self, items: Sequence[AskItem], *, max_new_tokens: int) -> list[str]:
        return [self.known.get(i.text, "I do not know") for i in items]

    def text_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [self.nll for _ in texts]


def _memories(n: int) -> list[Memory]:
    return [
        Memory(id=f"m{i}", text=f"Person{i} lives in Town{i}.", qa=(QA(f"Where does Person{i} live?", f"Town{i}"),))
        for i in range(n)
    ]


SETS = EvalSets(
    general_qa=[QAPair("g0", "Capital of France?", "Paris"), QAPair("g1", "Color of grass?", "green")],
    fewshot=[FewShotItem("f0", "addition", "1 + 1 = 2\n2 + 2 =", "4")],
    general_text=["one two three", "four five"],
    sources={},
)


def test_a_model_that_knows_half_the_facts_scores_one_half() -> None:
    mems = _memories(10)
    items = build_items(suites=list(Suite), memories=mems, prior=[], sets=SETS, questions_per_memory=3)
    known = {f"Where does Person{i} live?": f"Town{i}" for i in range(0, 10, 2)}
    scores = score_model(LookupScorer(known), items, max_new_tokens=8)
    ki = scores["knowledge_incorporation"]
    assert (ki.value, ki.n, ki.correct) == (0.5, 10, 5)
    assert ki.interval.low < 0.5 < ki.interval.high


def test_in_context_questions_are_the_closed_book_questions_with_their_memory() -> None:
    items = build_items(
        suites=[Suite.KNOWLEDGE_INCORPORATION, Suite.INCONTEXT_UPPER_BOUND],
        memories=_memories(3),
        prior=[],
        sets=SETS,
        questions_per_memory=3,
    )
    assert [i.text for i in items.knowledge] == [i.text for i in items.incontext]
    assert all(i.context is None for i in items.knowledge)
    assert [i.context for i in items.incontext] == [f"Person{i} lives in Town{i}." for i in range(3)]


def test_retention_pools_earlier_memories_and_the_general_set() -> None:
    prior = _memories(4)
    items = build_items(suites=[Suite.RETENTION], memories=_memories(1), prior=prior, sets=SETS, questions_per_memory=3)
    known = {"Where does Person0 live?": "Town0", "Where does Person1 live?": "Town1", "Capital of France?": "Paris"}
    ret = score_model(LookupScorer(known), items, max_new_tokens=8)["retention"]
    assert (ret.correct, ret.n) == (3, 6)
    assert ret.parts["memories"].value == 0.5 and ret.parts["general"].value == 0.5


def test_perplexity_is_exp_of_mean_token_nll() -> None:
    items = build_items(suites=[Suite.PERPLEXITY], memories=_memories(1), prior=[], sets=SETS, questions_per_memory=1)
    ppl = score_model(LookupScorer({}, nll=(3.0, 2)), items, max_new_tokens=8)["perplexity"]
    assert ppl.value == pytest.approx(math.exp(1.5)) and ppl.n == 2 and ppl.tokens == 4


def test_fewshot_and_item_digest_are_deterministic() -> None:
    a = build_items(
        suites=list(Suite), memories=_memories(2), prior=[], sets=load_eval_sets([]), questions_per_memory=2
    )
    b = build_items(
        suites=list(Suite), memories=_memories(2), prior=[], sets=load_eval_sets([]), questions_per_memory=2
    )
    assert a.digest(max_new_tokens=8) == b.digest(max_new_tokens=8) != a.digest(max_new_tokens=9)
    assert len(a.fewshot) == 32 and len(a.texts) == 20 and len(a.retention_general) == 30


def test_user_jsonl_in_the_store_replaces_a_builtin_set(tmp_path: Path) -> None:
    (tmp_path / "lin" / "eval").mkdir(parents=True)
    (tmp_path / "lin" / "eval" / "general_qa.jsonl").write_text('{"question": "Q?", "answer": "A"}\n')
    sets = load_eval_sets([str(tmp_path / "lin"), str(tmp_path)])
    assert [(q.question, q.answer) for q in sets.general_qa] == [("Q?", "A")]
    assert sets.sources["fewshot"] == "builtin"


# ----------------------------------------------------------------- real tiny model


@pytest.fixture(scope="module")
def half_known(tmp_path_factory: pytest.TempPathFactory, tiny_base: tiny.TinyBase) -> tuple[Path, tiny.TinyBase]:
    """A store whose memories are 8 people the tiny base learned and 8 it never saw."""
    root = tmp_path_factory.mktemp("store")
    tiny.write_memories_jsonl(root / "mem" / "cycle1.jsonl", tiny.memory_records(tiny_base.old[:8] + tiny_base.new[0]))
    tiny.write_memories_jsonl(root / "mem" / "old.jsonl", tiny.memory_records(tiny_base.old, prefix="old"))
    return root, tiny_base


def test_real_tiny_model_that_learned_half_the_people_scores_about_one_half(
    half_known: tuple[Path, tiny.TinyBase],
) -> None:
    root, base = half_known
    gen = load_generation(base.folder)
    mems = load_memory_uris([str(root / "mem" / "cycle1.jsonl")])
    items = build_items(
        suites=[Suite.KNOWLEDGE_INCORPORATION], memories=mems, prior=[], sets=SETS, questions_per_memory=3
    )
    ki = score_model(ModelScorer(gen.model, gen.tokenizer), items, max_new_tokens=8)["knowledge_incorporation"]
    known = {f.question for f in base.old}
    by_known = {item.correct for item in ki.items if item.prompt in known}
    assert by_known == {True}, "every pretrained fact is recalled closed-book"
    lucky = sum(1 for item in ki.items if item.prompt not in known and item.correct)
    assert ki.n == 16 and ki.correct == 8 + lucky
    assert lucky <= 1  # the unknown half is hit only by a guess among 12 towns
    assert ki.value == pytest.approx(0.5, abs=1 / 16)


def _config(root: Path, **kw: object) -> AttemptConfig:
    return AttemptConfig(
        step="evaluation",
        cycle="c1",
        lineage="lin",
        store_uri=str(root),
        output_uri=str(root / "lin/c1/evaluation"),
        base_generation="gen-0",
        base_uri="/unused",
        memory=MemorySpec(sources=[MemorySource(uri="mem/cycle1.jsonl")]),
        evaluation=EvaluationSpec(max_new_tokens=8),
        **kw,  # type: ignore[arg-type]
    )


def test_run_writes_report_and_result_and_caches_the_champion(half_known: tuple[Path, tiny.TinyBase]) -> None:
    root, base = half_known
    config = _config(
        root,
        inputs={"consolidation": str(base.folder)},
        champion_uri=str(base.folder),
        champion_generation="gen-0",
        prior_memory_uris=[str(root / "mem" / "old.jsonl")],
    )
    config.dreaming.enabled = False
    result = run(config)
    again = parse_result(result.to_json(), step="evaluation")
    assert again.metrics["knowledge_incorporation"] == pytest.approx(0.5, abs=1 / 16)
    assert again.metrics["retention_memories"] == 1.0  # the old people are exactly the pretrained half
    # Candidate and champion are the same folder: the champion's scores come from the cache.
    report = json.loads((root / "lin/c1/evaluation/eval.json").read_text())
    assert report["champion"]["cached"] is True and report["candidate"]["cached"] is False
    assert again.baseline == again.metrics
    assert set(again.metrics) >= {s.value for s in Suite}


def test_candidate_is_dreaming_output_unless_dreaming_is_disabled(tmp_path: Path) -> None:
    config = _config(tmp_path, inputs={"consolidation": "/c", "dreaming": "/d"})
    config.dreaming.enabled = True
    assert candidate_uri(config) == "/d"
    config.dreaming.enabled = False
    assert candidate_uri(config) == "/c"
    with pytest.raises(ValueError, match="inputs"):
        candidate_uri(_config(tmp_path))
