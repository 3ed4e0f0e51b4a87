"""The evaluation report schema and its statistics: Wilson and bootstrap intervals, flat metrics."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from reverie.api.steps import Suite
from reverie.core.contract import AttemptResult
from reverie.workloads.steps.eval_schema import (
    EvalReport,
    EvalSettings,
    ItemOutcome,
    ModelEval,
    accuracy_score,
    bootstrap_perplexity_interval,
    normal_quantile,
    perplexity,
    perplexity_score,
    wilson_interval,
)


def test_normal_quantile_matches_known_values() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959963985, abs=1e-7)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    assert normal_quantile(0.01) == pytest.approx(-2.326347874, abs=1e-7)


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        (5, 10, 0.236593, 0.763407),  # reference values of the Wilson score interval
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
    ],
)
def test_wilson_interval_matches_reference(correct: int, n: int, low: float, high: float) -> None:
    ci = wilson_interval(correct, n)
    assert ci.low == pytest.approx(low, abs=1e-5)
    assert ci.high == pytest.approx(high, abs=1e-5)
    assert ci.method == "wilson"


def test_wilson_interval_of_nothing_is_nan() -> None:
    ci = wilson_interval(0, 0)
    assert math.isnan(ci.low) and math.isnan(ci.high)


def test_wilson_interval_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="correct <= n"):
        wilson_interval(3, 2)


def test_perplexity_is_exp_of_token_weighted_nll() -> None:
    assert perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(6.0 / 4))
    assert math.isnan(perplexity([], []))


def test_bootstrap_interval_brackets_the_estimate_and_is_deterministic() -> None:
    nll = [1.0, 2.5, 0.7, 3.1, 1.9, 2.2]
    toks = [2, 3, 1, 4, 2, 3]
    ci = bootstrap_perplexity_interval(nll, toks, seed=3)
    point = perplexity(nll, toks)
    assert ci.low <= point <= ci.high
    assert ci == bootstrap_perplexity_interval(nll, toks, seed=3)


def test_bootstrap_interval_of_identical_documents_is_a_point() -> None:
    ci = bootstrap_perplexity_interval([1.5] * 5, [3] * 5)
    assert ci.low == pytest.approx(math.exp(0.5)) and ci.high == pytest.approx(math.exp(0.5))


def _items(correct: list[bool]) -> list[ItemOutcome]:
    return [ItemOutcome(id=str(i), correct=c) for i, c in enumerate(correct)]


def test_accuracy_score_counts_and_interval() -> None:
    score = accuracy_score(Suite.KNOWLEDGE_INCORPORATION, _items([True, False, True, False]))
    assert (score.value, score.n, score.correct) == (0.5, 4, 2)
    assert score.interval.low < 0.5 < score.interval.high


def test_empty_suite_is_nan_so_the_gate_cannot_pass_it() -> None:
    score = accuracy_score(Suite.FEWSHOT, [])
    assert math.isnan(score.value) and score.n == 0


def _report(champion: bool) -> EvalReport:
    cand = ModelEval(
        role="candidate",
        uri="/c",
        scores={
            "knowledge_incorporation": accuracy_score(
                Suite.KNOWLEDGE_INCORPORATION, _items([True, True, False, False])
            ),
            "retention": accuracy_score(
                Suite.RETENTION,
                _items([True] * 3 + [False]),
                parts={
                    "general": accuracy_score(Suite.RETENTION, _items([True, True])),
                    "memories": accuracy_score(Suite.RETENTION, _items([True, False])),
                },
            ),
            "perplexity": perplexity_score(
                [ItemOutcome(id="t0", nll=2.0, tokens=2), ItemOutcome(id="t1", nll=4.0, tokens=2)]
            ),
        },
    )
    champ = (
        ModelEval(
            role="champion",
            uri="/p",
            cached=True,
            scores={
                "knowledge_incorporation": accuracy_score(Suite.KNOWLEDGE_INCORPORATION, _items([False] * 4)),
            },
        )
        if champion
        else None
    )
    return EvalReport(
        cycle="c1",
        lineage="l",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        settings=EvalSettings(
            suites=[Suite.KNOWLEDGE_INCORPORATION], questions_per_memory=3, max_new_tokens=8, question_set_hash="abc"
        ),
        candidate=cand,
        champion=champ,
    )


def test_flat_metrics_name_suites_intervals_counts_and_parts() -> None:
    metrics = _report(champion=True).metrics()
    assert metrics["knowledge_incorporation"] == 0.5
    assert metrics["knowledge_incorporation_n"] == 4.0
    assert metrics["knowledge_incorporation_ci_low"] < 0.5 < metrics["knowledge_incorporation_ci_high"]
    assert metrics["retention"] == 0.75
    assert metrics["retention_general"] == 1.0 and metrics["retention_memories"] == 0.5
    assert metrics["perplexity"] == pytest.approx(math.e**1.5)


def test_baseline_is_the_champions_and_empty_without_one() -> None:
    assert _report(champion=True).baseline()["knowledge_incorporation"] == 0.0
    assert _report(champion=False).baseline() == {}


def test_report_round_trips_through_json_and_fits_a_phase_result() -> None:
    report = _report(champion=True)
    text = json.dumps(report.wire(), allow_nan=True)
    again = EvalReport.model_validate(json.loads(text))
    assert again.metrics() == report.metrics()
    result = AttemptResult(
        step="evaluation",
        status="Succeeded",
        metrics=report.metrics(),
        baseline=report.baseline(),
        output_uri="/out/eval.json",
    )
    assert len(result.to_json()) < 4096
