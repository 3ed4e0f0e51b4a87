"""The promotion gate: eval metrics + the champion's scores + rules -> a decision.

Pure and deterministic (no I/O, no clock: the caller passes ``now``).  The model
is Argo Rollouts' analysis: every rule yields a verdict, and the decision is
``Passed`` (promote), ``Failed`` (the evidence says the candidate is worse: reject)
or ``Inconclusive`` (there is no evidence either way: a human may judge, when
``spec.promotion.onInconclusive`` is ``AwaitApproval``; otherwise the cycle is
rejected).

Grammar of a rule (the strings in ``spec.evaluation.gate.rules``)::

    rule     := metric op operand
    metric   := [a-z_][a-z0-9_]*            e.g. retention, knowledge_incorporation
    op       := ">=" | ">" | "<=" | "<"
    operand  := number                      absolute threshold, e.g. 0.9, -1.5
              | "champion" [("+"|"-") number]   relative to the champion's score
    number   := digits ["." digits]

Examples: ``knowledge_incorporation >= 0.9``, ``retention >= champion - 0.01``,
``perplexity <= champion + 0.5``, ``fewshot > champion``.

Verdict of one rule:

* ``Passed``: the candidate's value satisfies the comparison.
* ``Failed``: the comparison was made and does not hold, or the rule itself is
  malformed (a spec error no human approval should paper over).
* ``Inconclusive``: the comparison could not be made: the candidate's metric is
  missing, NaN, infinite or not a number; or, for a relative rule, there is no
  champion score (no champion at all, e.g. the first generation, or the
  champion's score for that metric is missing or not finite).

A relative rule never falls back to an invented baseline (0, the threshold
alone, the candidate itself): with no champion score it is Inconclusive.  The
reason is safety: a made-up baseline would auto-promote a first generation that
was never compared with anything.  The evaluation Job scores the champion next
to the candidate, so a lineage's first cycle normally has champion scores for
its base model; lineages that want an unconditional first promotion write
absolute rules.

Outcome of the gate: ``Failed`` if any rule failed (definite evidence of a
regression dominates), else ``Inconclusive`` if any rule is inconclusive, else
``Passed``.  An empty rule list is ``Inconclusive``: no evidence, no automatic
promotion.  Hence a missing, NaN or malformed metric can never pass.

Comparisons are exact, in decimal arithmetic on the numbers as written (each
float's shortest repr), so ``0.81 >= champion 0.83 - 0.02`` holds, as a person
reading it expects, where float arithmetic would say 0.8099999999999999.
There is no other tolerance: write it into the rule
(``retention >= champion - 0.01``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from reverie.api.sleepcycle import GateDecision, RuleVerdict

Op = Literal[">=", ">", "<=", "<"]
Verdict = Literal["Passed", "Failed", "Inconclusive"]

# Accepts exactly the strings reverie.api.steps.GATE_RULE_PATTERN accepts (a
# property test checks the two agree), with named groups for parsing.
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_RULE_RE = re.compile(
    r"^\s*(?P<metric>[a-z_][a-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    rf"(?:(?P<champion>champion)(?:\s*(?P<sign>[+-])\s*(?P<offset>{_NUMBER}))?"
    rf"|(?P<absolute>-?{_NUMBER}))\s*$"
)

_COMPARE: dict[str, tuple[str, str]] = {
    # op -> (symbol when it holds, symbol of the negation for the reason text)
    ">=": (">=", "<"),
    ">": (">", "<="),
    "<=": ("<=", ">"),
    "<": ("<", ">="),
}


@dataclass(frozen=True)
class Rule:
    """One parsed gate rule.

    ``threshold`` is the absolute number for an absolute rule; for a relative
    rule (``relative=True``) it is unused and ``offset`` is the signed amount
    added to the champion's score (``champion - 0.01`` -> offset ``-0.01``).
    """

    text: str
    metric: str
    op: Op
    relative: bool
    threshold: float = 0.0
    offset: float = 0.0

    def bound(self, champion_score: float | None) -> Decimal | None:
        """The number the candidate is compared with, or None when unknown.

        Decimal arithmetic on the numbers as written (a float's shortest repr),
        so ``0.83 - 0.02`` is exactly ``0.81``, not ``0.8099999999999999``.
        """
        if not self.relative:
            return _dec(self.threshold)
        if champion_score is None:
            return None
        return _dec(champion_score) + _dec(self.offset)

    def holds(self, value: float, bound: Decimal) -> bool:
        """Whether ``value op bound`` is true (value finite)."""
        v = _dec(value)
        if self.op == ">=":
            return v >= bound
        if self.op == ">":
            return v > bound
        if self.op == "<=":
            return v <= bound
        return v < bound

    def describe_bound(self, champion_score: float | None) -> str:
        """The right-hand side as a human reads it, with the numbers filled in."""
        if not self.relative:
            return _fmt(self.threshold)
        if self.offset == 0.0:
            return f"champion {_fmt(champion_score)}" if champion_score is not None else "champion"
        sign = "+" if self.offset > 0 else "-"
        base = f"champion {_fmt(champion_score)}" if champion_score is not None else "champion"
        text = f"{base} {sign} {_fmt(abs(self.offset))}"
        if champion_score is not None:
            text += f" = {_fmt(float(self.bound(champion_score) or 0))}"
        return text


def parse_rule(text: str) -> Rule:
    """Parse one rule; raise ``ValueError`` saying what is wrong and how to write it."""
    if not isinstance(text, str):
        raise ValueError(f"gate rule must be a string, got {type(text).__name__}: {text!r}")
    m = _RULE_RE.match(text)
    if m is None:
        raise ValueError(
            f"malformed gate rule {text!r}: write '<metric> <op> <number>' or "
            "'<metric> <op> champion [+|- <number>]' with op one of >= > <= < "
            "and a lower-case metric name, e.g. 'retention >= champion - 0.01' "
            "or 'knowledge_incorporation >= 0.9'"
        )
    op: Op = m["op"]  # type: ignore[assignment]  # the regex admits only the four ops
    if m["champion"]:
        offset = float(m["offset"]) if m["offset"] else 0.0
        if m["sign"] == "-":
            offset = -offset
        return Rule(text=text, metric=m["metric"], op=op, relative=True, offset=offset)
    return Rule(text=text, metric=m["metric"], op=op, relative=False, threshold=float(m["absolute"]))


def required_metrics(rules: Sequence[str]) -> list[str]:
    """Metric names the rules read, in first-mention order (malformed rules skipped)."""
    names: list[str] = []
    for text in rules:
        try:
            name = parse_rule(text).metric
        except ValueError:
            continue
        if name not in names:
            names.append(name)
    return names


def _dec(x: float) -> Decimal:
    # repr is the shortest string that round-trips: the number as a person wrote it.
    return Decimal(repr(float(x)))


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.6g}"


def _finite_number(value: object) -> float | None:
    """The value as a finite float, or None if missing, NaN, infinite or not a number."""
    # bool is an int subclass, but True is not a score.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _describe_bad(name: str, mapping: Mapping[str, object], role: str) -> str:
    if name not in mapping:
        return f"{role} metric {name!r} is missing"
    return f"{role} metric {name!r} is not a finite number ({mapping[name]!r})"


def judge(rule: Rule, candidate: Mapping[str, object], champion: Mapping[str, object] | None) -> RuleVerdict:
    """The verdict of one parsed rule with one reason."""
    value = _finite_number(candidate.get(rule.metric))
    if value is None:
        return RuleVerdict(
            rule=rule.text, verdict="Inconclusive", reason=_describe_bad(rule.metric, candidate, "candidate")
        )
    champion_score: float | None = None
    if rule.relative:
        if champion is None:
            return RuleVerdict(
                rule=rule.text,
                verdict="Inconclusive",
                reason=(
                    f"no champion scores to compare {rule.metric} = {_fmt(value)} with "
                    "(first generation?): score the champion in the evaluation, or use an absolute threshold"
                ),
            )
        champion_score = _finite_number(champion.get(rule.metric))
        if champion_score is None:
            return RuleVerdict(
                rule=rule.text, verdict="Inconclusive", reason=_describe_bad(rule.metric, champion, "champion")
            )
    bound = rule.bound(champion_score)
    assert bound is not None  # relative rules returned above when the champion score is unknown
    ok = rule.holds(value, bound)
    symbol = _COMPARE[rule.op][0 if ok else 1]
    rhs = rule.describe_bound(champion_score)
    return RuleVerdict(
        rule=rule.text,
        verdict="Passed" if ok else "Failed",
        reason=f"{rule.metric} = {_fmt(value)} {symbol} {rhs}",
    )


def decide(
    rules: Sequence[str],
    candidate: Mapping[str, object],
    champion: Mapping[str, object] | None,
    *,
    now: datetime,
) -> GateDecision:
    """Decide whether a candidate may be promoted.

    ``rules``: the strings of ``spec.evaluation.gate.rules``.  ``candidate``: the
    candidate's eval metrics (``status.evaluation``).  ``champion``: the
    champion's metrics the relative rules compare with, or ``None`` when there is
    no champion score at all.  Values that are missing, NaN, infinite or not
    numbers never pass.  Never raises on bad input: a malformed rule is a
    ``Failed`` verdict whose reason says how to fix it.

    Returns a :class:`GateDecision` with one :class:`RuleVerdict` per rule, in
    the rules' order, and ``decidedAt = now``.
    """
    verdicts: list[RuleVerdict] = []
    for text in rules:
        try:
            rule = parse_rule(text)
        except ValueError as err:
            verdicts.append(RuleVerdict(rule=str(text)[:256], verdict="Failed", reason=str(err)[:1024]))
            continue
        verdicts.append(judge(rule, candidate, champion))
    return GateDecision(outcome=outcome_of(verdicts), rules=verdicts, decided_at=now)


def outcome_of(verdicts: Sequence[RuleVerdict]) -> Verdict:
    """Failed if any rule failed, else Inconclusive if any was (or there are none), else Passed."""
    kinds = {v.verdict for v in verdicts}
    if "Failed" in kinds:
        return "Failed"
    if "Inconclusive" in kinds or not verdicts:
        return "Inconclusive"
    return "Passed"
