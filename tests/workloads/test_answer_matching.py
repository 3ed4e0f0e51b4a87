"""One answer matcher everywhere: whole normalised words, so "Vemorabad" is not "Vemora".

Consolidation's own recall, the evaluation's suites and the science benchmark
all score an answer with :func:`reverie.workloads.data.questions.answer_matches`.
Each public path is driven here with the same two outputs: one that names the
answer, one that only contains its letters inside a longer word.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from reverie.api.steps import Suite
from reverie.workloads.data.questions import Question, accuracy, answer_matches
from reverie.workloads.ml.sampling import Generated
from reverie.workloads.steps.consolidate import closed_book_recall
from reverie.workloads.steps.evaluate import AskItem, EvalItems, score_model

ANSWER = "Vemora"
RIGHT = "She lives in Vemora, I think."
WRONG = "She lives in Vemorabad."
ROOT = Path(__file__).resolve().parents[2]


def test_the_matcher_wants_whole_words() -> None:
    assert answer_matches(RIGHT, ANSWER)
    assert not answer_matches(WRONG, ANSWER)
    assert not answer_matches("Vemoran food", ANSWER)
    assert answer_matches("NEW vemora!", "New Vemora")


def test_question_accuracy() -> None:
    q = Question(id="m/qa-0", source_id="m", form="qa", question="Where does Ivo live?", answer=ANSWER)
    assert accuracy([RIGHT, WRONG], [q, q]) == 0.5


class _Backend:
    """A generation backend that answers from a script, in order."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def generate(self, prompts: Sequence[str], **_: Any) -> Generated:
        out, self.texts = self.texts[: len(prompts)], self.texts[len(prompts) :]
        return Generated(texts=out, token_ids=[[] for _ in out])


def test_consolidation_recall() -> None:
    qa = [("Where does Ivo live?", ANSWER)] * 2
    assert closed_book_recall(_Backend([RIGHT, WRONG]), object(), qa) == 0.5


class _Scorer:
    def answers(self, items: Sequence[AskItem], *, max_new_tokens: int) -> list[str]:
        return [RIGHT if n % 2 == 0 else WRONG for n in range(len(items))]

    def text_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        return [(0.0, 1) for _ in texts]


@pytest.mark.parametrize("suite", [Suite.KNOWLEDGE_INCORPORATION, Suite.FEWSHOT])
def test_evaluation_suites(suite: Suite) -> None:
    asked = [AskItem(id=f"q{n}", text="Where does Ivo live?", answer=ANSWER) for n in range(2)]
    items = EvalItems(suites=[suite])
    if suite == Suite.KNOWLEDGE_INCORPORATION:
        items.knowledge = asked
    else:
        items.fewshot = asked
    score = score_model(_Scorer(), items, max_new_tokens=8)[suite.value]
    assert (score.correct, score.n) == (1, 2)


def _bench_science() -> Any:
    spec = importlib.util.spec_from_file_location("bench_science_run", ROOT / "bench" / "science" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_science_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench_science()
    monkeypatch.setattr(bench, "answers", lambda model, tok, questions, contexts=None: [RIGHT, WRONG][: len(questions)])
    memories = [{"text": "Ivo lives in Vemora.", "qa": [{"q": "Where does Ivo live?", "a": ANSWER}] * 2}]
    assert bench.recall(None, None, memories) == 0.5
    assert bench.general_qa_correct(None, None, [("Where does Ivo live?", ANSWER)] * 2) == [True, False]
