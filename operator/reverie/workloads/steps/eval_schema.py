"""The evaluation report: what the evaluation phase writes and the gate reads.

Two documents come out of one evaluation attempt:

* ``<output_uri>/eval.json`` — the full :class:`EvalReport`: for the candidate
  and the champion, every suite's score with its count and a 95 % confidence
  interval, the per-item outcomes (capped), and the settings and question-set
  hash that make two reports comparable.
* ``<output_uri>/result.json`` (and the termination message) — the small
  :class:`~reverie.core.contract.AttemptResult`: its ``metrics`` are the
  candidate's flat scores and its ``baseline`` the champion's, both made by
  :meth:`EvalReport.flat_metrics`.  That flat map is what the gate's rules name.

Flat metric names (the gate's vocabulary)
-----------------------------------------
For every suite that ran, ``<suite>`` is its headline value and
``<suite>_ci_low`` / ``<suite>_ci_high`` / ``<suite>_n`` its interval and count,
so a cautious rule can compare a lower bound: ``knowledge_incorporation_ci_low
>= champion``.  Parts of a suite add ``<suite>_<part>`` (``retention_memories``,
``retention_general``).  The suites and their headline values:

===========================  ==============================================  =========
metric                       value                                           better
===========================  ==============================================  =========
knowledge_incorporation      closed-book accuracy on this cycle's memories   higher
incontext_upper_bound        same questions, the memory document in context  higher
retention                    accuracy on earlier memories + a general set    higher
fewshot                      accuracy on held-out few-shot tasks             higher
perplexity                   exp(mean token NLL) of held-out general text    lower
===========================  ==============================================  =========

A suite whose value cannot be computed (no items) reports ``NaN``; the gate
reads a NaN as *Inconclusive*, never as a pass.  Accuracies carry a Wilson
score interval; perplexity a percentile bootstrap over documents.

This module is pure (pydantic + math): the gate, the CLI and reports import it
without torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Literal

from pydantic import Field

from reverie.api.base import ApiModel
from reverie.api.steps import Suite

SCHEMA_VERSION = "reverie.dev/eval/v1"
CONFIDENCE = 0.95
# Per-item outcomes kept in eval.json per suite and model; enough to read why a
# score moved without letting the report grow with the memory buffer.
MAX_ITEMS_RECORDED = 200

HIGHER_IS_BETTER: dict[Suite, bool] = {
    Suite.KNOWLEDGE_INCORPORATION: True,
    Suite.INCONTEXT_UPPER_BOUND: True,
    Suite.RETENTION: True,
    Suite.FEWSHOT: True,
    Suite.PERPLEXITY: False,
}


class Interval(ApiModel):
    """A two-sided confidence interval."""

    low: float = Field(description="Lower bound (NaN when there were no items).")
    high: float = Field(description="Upper bound (NaN when there were no items).")
    level: float = Field(default=CONFIDENCE, description="Coverage, e.g. 0.95.")
    method: Literal["wilson", "bootstrap", "t", "none"] = Field(description="How it was computed.")


class ItemOutcome(ApiModel):
    """One question (or one text) as the model answered it."""

    id: str = Field(description="Stable item id (memory id + question index, task name + index).")
    prompt: str = Field(default="", description="What the model saw (truncated).")
    expected: str = Field(default="", description="Reference answer.")
    output: str = Field(default="", description="What the model generated (truncated).")
    correct: bool | None = Field(default=None, description="Scored correct (accuracy suites).")
    nll: float | None = Field(default=None, description="Summed token NLL (perplexity suite).")
    tokens: int | None = Field(default=None, description="Scored tokens (perplexity suite).")


class SuiteScore(ApiModel):
    """One suite's result for one model."""

    suite: Suite = Field(description="Which suite.")
    value: float = Field(description="Headline value (accuracy in [0,1], or perplexity); NaN with no items.")
    n: int = Field(ge=0, description="Items scored (questions, or texts for perplexity).")
    correct: int | None = Field(default=None, ge=0, description="Accuracy suites: items scored correct.")
    tokens: int | None = Field(default=None, ge=0, description="Perplexity: tokens scored.")
    interval: Interval = Field(description="Confidence interval of value.")
    parts: dict[str, SuiteScore] = Field(
        default_factory=dict,
        description="Named sub-scores (retention: memories, general).",
    )
    items: list[ItemOutcome] = Field(default_factory=list, description=f"First {MAX_ITEMS_RECORDED} item outcomes.")


class ModelEval(ApiModel):
    """Every suite's score for one model."""

    role: Literal["candidate", "champion"] = Field(description="Which side of the comparison.")
    generation: str | None = Field(default=None, description="Generation name, when known.")
    uri: str = Field(description="Model folder evaluated.")
    content_hash: str | None = Field(default=None, description="sha256 of the model folder.")
    cached: bool = Field(default=False, description="Read from the store's eval cache, not recomputed.")
    scores: dict[str, SuiteScore] = Field(default_factory=dict, description="By suite name.")


class EvalSettings(ApiModel):
    """What makes two evaluations comparable (part of the champion cache key)."""

    suites: list[Suite] = Field(description="Suites that ran.")
    questions_per_memory: int = Field(description="Questions derived per memory document.")
    max_new_tokens: int = Field(description="Tokens generated per answer.")
    question_set_hash: str = Field(description="sha256 of every item of every suite (prompts and references).")


class EvalReport(ApiModel):
    """The full evaluation report, written to ``<output_uri>/eval.json``."""

    schema_version: str = Field(default=SCHEMA_VERSION, description="Report format version.")
    cycle: str = Field(description="SleepCycle name.")
    lineage: str = Field(description="ModelLineage name.")
    created_at: datetime = Field(description="When the report was written (UTC).")
    settings: EvalSettings = Field(description="Settings and question-set hash.")
    candidate: ModelEval = Field(description="The candidate's scores.")
    champion: ModelEval | None = Field(default=None, description="The champion's scores (None: no champion).")

    def metrics(self) -> dict[str, float]:
        """The candidate's flat metrics (AttemptResult.metrics)."""
        return flat_metrics(self.candidate.scores.values())

    def baseline(self) -> dict[str, float]:
        """The champion's flat metrics (AttemptResult.baseline); empty without a champion."""
        return flat_metrics(self.champion.scores.values()) if self.champion else {}


def flat_metrics(scores: Iterable[SuiteScore]) -> dict[str, float]:
    """Flatten suite scores into the gate's ``name -> float`` map (see module doc)."""
    out: dict[str, float] = {}
    for score in scores:
        name = Suite(score.suite).value
        out[name] = _round(score.value)
        out[f"{name}_ci_low"] = _round(score.interval.low)
        out[f"{name}_ci_high"] = _round(score.interval.high)
        out[f"{name}_n"] = float(score.n)
        for part, sub in score.parts.items():
            out[f"{name}_{part}"] = _round(sub.value)
    return out


def _round(value: float) -> float:
    # Six significant digits keep candidate + champion inside the 4 KiB
    # termination message; both sides are rounded alike, so comparisons hold.
    return value if not math.isfinite(value) else float(f"{value:.6g}")


# --------------------------------------------------------------------------- #
# Confidence intervals
# --------------------------------------------------------------------------- #


def normal_quantile(p: float) -> float:
    """Inverse CDF of the standard normal (Acklam's rational approximation, |err| < 1.2e-9)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    a = (
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    )
    b = (
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    )
    c = (
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    )
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if p > 1 - lo:
        return -normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


def wilson_interval(correct: int, n: int, *, level: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion ``correct / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not
    degenerate at 0 or n successes — which is where small eval sets live.
    """
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return Interval(low=math.nan, high=math.nan, level=level, method="wilson")
    z = normal_quantile(0.5 + level / 2)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp float dust so that 0/n gives exactly 0 and n/n exactly 1.
    return Interval(low=max(0.0, centre - half), high=min(1.0, centre + half), level=level, method="wilson")


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Corpus perplexity: exp(total NLL / total tokens); NaN when nothing was scored."""
    tokens = sum(token_counts)
    return math.exp(sum(nll_sums) / tokens) if tokens > 0 else math.nan


def bootstrap_perplexity_interval(
    nll_sums: Sequence[float],
    token_counts: Sequence[int],
    *,
    level: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap of corpus perplexity, resampling whole documents.

    Documents, not tokens, are the unit: tokens within a text are correlated,
    so a token-level bootstrap would be falsely narrow.
    """
    if len(nll_sums) != len(token_counts):
        raise ValueError("nll_sums and token_counts differ in length")
    n = len(nll_sums)
    if n == 0 or sum(token_counts) == 0:
        return Interval(low=math.nan, high=math.nan, level=level, method="bootstrap")
    rng = random.Random(seed)
    stats: list[float] = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        tokens = sum(token_counts[i] for i in idx)
        if tokens == 0:
            continue
        stats.append(math.exp(sum(nll_sums[i] for i in idx) / tokens))
    stats.sort()
    tail = (1 - level) / 2
    return Interval(
        low=_percentile(stats, tail),
        high=_percentile(stats, 1 - tail),
        level=level,
        method="bootstrap",
    )


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default rule)."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def accuracy_score(
    suite: Suite, outcomes: Sequence[ItemOutcome], *, parts: Mapping[str, SuiteScore] | None = None
) -> SuiteScore:
    """Accuracy with a Wilson interval from scored items (NaN when there are none)."""
    n = len(outcomes)
    correct = sum(1 for o in outcomes if o.correct)
    return SuiteScore(
        suite=suite,
        value=correct / n if n else math.nan,
        n=n,
        correct=correct,
        interval=wilson_interval(correct, n),
        parts=dict(parts or {}),
        items=list(outcomes[:MAX_ITEMS_RECORDED]),
    )


def perplexity_score(outcomes: Sequence[ItemOutcome], *, seed: int = 0) -> SuiteScore:
    """Corpus perplexity with a document bootstrap interval."""
    nll = [o.nll or 0.0 for o in outcomes]
    toks = [o.tokens or 0 for o in outcomes]
    return SuiteScore(
        suite=Suite.PERPLEXITY,
        value=perplexity(nll, toks),
        n=len(outcomes),
        tokens=sum(toks),
        interval=bootstrap_perplexity_interval(nll, toks, seed=seed),
        items=list(outcomes[:MAX_ITEMS_RECORDED]),
    )
