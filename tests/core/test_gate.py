"""The promotion gate as a specification: grammar, verdicts, outcome, and the
properties that must hold for any input (hypothesis)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reverie.api.steps import GATE_RULE_PATTERN
from reverie.core.gate import decide, outcome_of, parse_rule, required_metrics

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


# --- grammar ------------------------------------------------------------------


def test_absolute_rule_parses_threshold() -> None:
    r = parse_rule("knowledge_incorporation >= 0.9")
    assert (r.metric, r.op, r.relative, r.threshold) == ("knowledge_incorporation", ">=", False, 0.9)


def test_relative_rule_with_minus_offset_parses_negative_offset() -> None:
    r = parse_rule("retention >= champion - 0.01")
    assert (r.metric, r.op, r.relative, r.offset) == ("retention", ">=", True, -0.01)


def test_relative_rule_without_offset_and_compact_spacing() -> None:
    r = parse_rule("perplexity<=champion+2")
    assert (r.op, r.relative, r.offset) == ("<=", True, 2.0)
    assert parse_rule("fewshot > champion").offset == 0.0


def test_negative_absolute_threshold() -> None:
    assert parse_rule("delta > -1.5").threshold == -1.5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "retention",
        "retention >= ",
        "retention == 0.9",
        "Retention >= 0.9",
        "retention >= champ",
        "retention >= champion * 2",
        "retention >= 1e-3",
        "retention >= .5",
        "retention >= champion - -1",
        "9lives >= 1",
        "retention >= 0.9 and x < 1",
    ],
)
def test_malformed_rule_raises_with_how_to_write_it(text: str) -> None:
    with pytest.raises(ValueError, match=r"malformed gate rule .*'<metric> <op> <number>'"):
        parse_rule(text)


_rule_texts = st.one_of(
    st.from_regex(GATE_RULE_PATTERN, fullmatch=True),
    st.text(alphabet="abcr_ 0123456789.<>=+-championx", max_size=40),
)


@given(_rule_texts)
@settings(max_examples=300)
def test_parser_accepts_exactly_what_the_crd_pattern_accepts(text: str) -> None:
    crd_ok = re.match(GATE_RULE_PATTERN, text) is not None
    try:
        parse_rule(text)
        parsed = True
    except ValueError:
        parsed = False
    assert parsed == crd_ok


def test_required_metrics_in_first_mention_order() -> None:
    rules = ["b >= 1", "a < champion", "b <= 3", "not a rule"]
    assert required_metrics(rules) == ["b", "a"]


# --- verdicts -----------------------------------------------------------------


def test_all_rules_hold_passes_with_one_reason_per_rule() -> None:
    d = decide(
        ["knowledge_incorporation >= 0.9", "retention >= champion - 0.01"],
        {"knowledge_incorporation": 0.93, "retention": 0.80},
        {"retention": 0.805},
        now=NOW,
    )
    assert d.outcome == "Passed"
    assert [v.verdict for v in d.rules] == ["Passed", "Passed"]
    assert d.rules[1].reason == "retention = 0.8 >= champion 0.805 - 0.01 = 0.795"
    assert d.decided_at == NOW


def test_regression_beyond_tolerance_fails_and_says_by_how_much() -> None:
    d = decide(["retention >= champion - 0.01"], {"retention": 0.70}, {"retention": 0.80}, now=NOW)
    assert d.outcome == "Failed"
    assert d.rules[0].reason == "retention = 0.7 < champion 0.8 - 0.01 = 0.79"


def test_relative_tolerance_reads_as_decimal_arithmetic() -> None:
    # In floats 0.83 - 0.02 is 0.8099999999999999; the gate compares with 0.81 as written.
    d = decide(["retention >= champion - 0.02"], {"retention": 0.81}, {"retention": 0.83}, now=NOW)
    assert d.outcome == "Passed" and d.rules[0].reason.endswith("= 0.81")
    assert (
        decide(["retention > champion - 0.02"], {"retention": 0.81}, {"retention": 0.83}, now=NOW).outcome == "Failed"
    )


def test_lower_is_better_metric() -> None:
    ok = decide(["perplexity <= champion + 0.5"], {"perplexity": 10.4}, {"perplexity": 10.0}, now=NOW)
    bad = decide(["perplexity <= champion + 0.5"], {"perplexity": 10.6}, {"perplexity": 10.0}, now=NOW)
    assert (ok.outcome, bad.outcome) == ("Passed", "Failed")


def test_strict_comparators_reject_ties() -> None:
    assert decide(["a > 0.5"], {"a": 0.5}, None, now=NOW).outcome == "Failed"
    assert decide(["a >= 0.5"], {"a": 0.5}, None, now=NOW).outcome == "Passed"
    assert decide(["a < champion"], {"a": 0.5}, {"a": 0.5}, now=NOW).outcome == "Failed"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.9", None, True, [0.9]])
def test_non_finite_or_non_numeric_candidate_metric_is_inconclusive(bad: object) -> None:
    d = decide(["a >= 0.1"], {"a": bad}, None, now=NOW)  # type: ignore[dict-item]
    assert d.outcome == "Inconclusive"
    assert "not a finite number" in d.rules[0].reason


def test_missing_candidate_metric_is_inconclusive_and_named() -> None:
    d = decide(["knowledge_incorporation >= 0.9"], {"retention": 1.0}, None, now=NOW)
    assert d.outcome == "Inconclusive"
    assert d.rules[0].reason == "candidate metric 'knowledge_incorporation' is missing"


def test_relative_rule_without_champion_is_inconclusive_never_invented() -> None:
    d = decide(["retention >= champion - 0.01"], {"retention": 0.99}, None, now=NOW)
    assert d.outcome == "Inconclusive"
    assert "no champion scores" in d.rules[0].reason


def test_relative_rule_with_champion_missing_that_metric_is_inconclusive() -> None:
    d = decide(["retention >= champion"], {"retention": 0.99}, {"fewshot": 0.5}, now=NOW)
    assert d.outcome == "Inconclusive"
    assert d.rules[0].reason == "champion metric 'retention' is missing"


def test_absolute_rules_pass_for_first_generation_without_champion() -> None:
    assert decide(["a >= 0.5"], {"a": 0.6}, None, now=NOW).outcome == "Passed"


def test_failed_dominates_inconclusive() -> None:
    d = decide(["a >= 0.5", "b >= 0.5"], {"a": 0.1}, None, now=NOW)
    assert [v.verdict for v in d.rules] == ["Failed", "Inconclusive"]
    assert d.outcome == "Failed"


def test_malformed_rule_is_a_failed_verdict_not_an_exception() -> None:
    d = decide(["a >= 0.5", "a === 1"], {"a": 0.9}, None, now=NOW)
    assert d.outcome == "Failed"
    assert d.rules[1].verdict == "Failed" and "malformed gate rule" in d.rules[1].reason


def test_empty_rules_are_inconclusive() -> None:
    assert decide([], {"a": 1.0}, None, now=NOW).outcome == "Inconclusive"
    assert outcome_of([]) == "Inconclusive"


def test_decision_round_trips_through_the_api_model() -> None:
    d = decide(["a >= champion - 0.01"], {"a": 0.9}, {"a": 0.9}, now=NOW)
    wire = d.wire()
    assert wire["outcome"] == "Passed" and wire["decidedAt"].startswith("2026-11-25T03:00")


# --- properties ---------------------------------------------------------------

_metric = st.sampled_from(["retention", "knowledge_incorporation", "fewshot", "perplexity"])
_op = st.sampled_from([">=", ">", "<=", "<"])
_num = st.decimals(min_value=0, max_value=100, places=3).map(str)
_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
_any_value = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.integers(min_value=-10, max_value=10),
)


@st.composite
def _rules(draw: st.DrawFn) -> str:
    metric, op = draw(_metric), draw(_op)
    kind = draw(st.sampled_from(["abs", "rel", "rel+", "rel-"]))
    if kind == "abs":
        return f"{metric} {op} {draw(_num)}"
    if kind == "rel":
        return f"{metric} {op} champion"
    return f"{metric} {op} champion {'+' if kind == 'rel+' else '-'} {draw(_num)}"


_scores = st.dictionaries(_metric, _any_value, max_size=4)


@given(st.lists(_rules(), min_size=1, max_size=5), _scores, st.one_of(st.none(), _scores))
@settings(max_examples=300)
def test_missing_nan_or_malformed_candidate_metric_never_passes(
    rules: list[str], candidate: dict[str, object], champion: dict[str, object] | None
) -> None:
    d = decide(rules, candidate, champion, now=NOW)
    assert len(d.rules) == len(rules)
    for text, verdict in zip(rules, d.rules, strict=True):
        value = candidate.get(parse_rule(text).metric)
        good = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not good:
            assert verdict.verdict == "Inconclusive"
    bad_metric = any(
        not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
        for v in (candidate.get(parse_rule(t).metric) for t in rules)
    )
    if bad_metric:
        assert d.outcome != "Passed"


@given(st.lists(_rules(), min_size=1, max_size=5), _scores, st.one_of(st.none(), _scores))
@settings(max_examples=200)
def test_passed_only_when_every_rule_passed(
    rules: list[str], candidate: dict[str, object], champion: dict[str, object] | None
) -> None:
    d = decide(rules, candidate, champion, now=NOW)
    assert (d.outcome == "Passed") == all(v.verdict == "Passed" for v in d.rules)
    assert (d.outcome == "Failed") == any(v.verdict == "Failed" for v in d.rules)


@given(_metric, st.sampled_from([">=", ">"]), _num, _finite, _finite)
def test_higher_candidate_never_turns_pass_into_fail_for_lower_bounds(
    metric: str, op: str, threshold: str, low: float, high: float
) -> None:
    assume(low <= high)
    rule = f"{metric} {op} {threshold}"
    if decide([rule], {metric: low}, None, now=NOW).outcome == "Passed":
        assert decide([rule], {metric: high}, None, now=NOW).outcome == "Passed"


@given(_metric, st.sampled_from(["<=", "<"]), _num, _finite, _finite)
def test_lower_candidate_never_turns_pass_into_fail_for_upper_bounds(
    metric: str, op: str, threshold: str, low: float, high: float
) -> None:
    assume(low <= high)
    rule = f"{metric} {op} {threshold}"
    if decide([rule], {metric: high}, None, now=NOW).outcome == "Passed":
        assert decide([rule], {metric: low}, None, now=NOW).outcome == "Passed"


@given(_metric, _num, _finite, _finite, _finite)
def test_stronger_champion_never_makes_a_relative_rule_easier(
    metric: str, offset: str, candidate: float, weak: float, strong: float
) -> None:
    assume(weak <= strong)
    rule = f"{metric} >= champion - {offset}"
    if decide([rule], {metric: candidate}, {metric: strong}, now=NOW).outcome == "Passed":
        assert decide([rule], {metric: candidate}, {metric: weak}, now=NOW).outcome == "Passed"


@given(_metric, _finite, _finite)
def test_champion_rule_without_offset_is_a_plain_comparison(metric: str, candidate: float, champion: float) -> None:
    rel = decide([f"{metric} >= champion"], {metric: candidate}, {metric: champion}, now=NOW)
    assert rel.outcome == ("Passed" if candidate >= champion else "Failed")


@given(st.lists(_rules(), max_size=5), _scores, st.one_of(st.none(), _scores))
def test_decide_is_deterministic_and_never_raises(
    rules: list[str], candidate: dict[str, object], champion: dict[str, object] | None
) -> None:
    assert decide(rules, candidate, champion, now=NOW) == decide(rules, candidate, champion, now=NOW)
