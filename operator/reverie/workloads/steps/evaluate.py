"""The evaluation phase: score the candidate (and the champion) on the gate's suites.

``run(config)`` evaluates the cycle's candidate — the dreaming output, or the
consolidation output when dreaming is disabled — and the champion the gate
compares it with, on the same items:

* ``knowledge_incorporation`` — closed-book questions about this cycle's memories;
* ``incontext_upper_bound``  — the same questions with the memory document in the
  prompt (what the serving model could do before the sleep: the ceiling);
* ``retention``              — questions about memories of earlier generations
  (``prior_memory_uris``) plus a fixed general set; parts ``memories`` and
  ``general``;
* ``fewshot``                — held-out few-shot tasks;
* ``perplexity``             — held-out general text.

Questions come from :mod:`reverie.workloads.data.questions`; the fixed sets from
:mod:`reverie.workloads.data.eval_sets` (built in, or the user's JSONL in the store).
Answers are greedy; an answer counts when its normalised reference appears in the
output.  The report schema is :mod:`reverie.workloads.steps.eval_schema`.

Model scores are cached in the store under ``<store>/.eval-cache/<key>.json``,
keyed by the model folder's content hash and the hash of every evaluated item
and setting: the champion is scored once per question set, not once per cycle,
and a preempted evaluation resumes without rescoring a model it finished.

On N processes (torchrun) every rank loads the models, answers its share of the
question batches and scores its share of the perplexity texts; the outputs are
gathered in order, so the scores equal one process's.  Rank 0 alone reads and
writes the cache and the report (:mod:`reverie.workloads.ml.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import fsspec

from reverie.api.sleepcycle import Step
from reverie.api.steps import Suite
from reverie.core.contract import AttemptConfig, AttemptResult, emit_step_progress
from reverie.workloads.data.eval_sets import EvalSets, load_eval_sets
from reverie.workloads.data.memory import Memory
from reverie.workloads.data.questions import Question, answer_matches, memory_questions, question_text
from reverie.workloads.ml import distributed
from reverie.workloads.ml.ask import greedy_answers
from reverie.workloads.ml.distributed import ShardedSampling, World
from reverie.workloads.ml.lm import text_nll
from reverie.workloads.ml.sampling import HFBackend
from reverie.workloads.steps.eval_schema import (
    SCHEMA_VERSION,
    EvalReport,
    EvalSettings,
    ItemOutcome,
    ModelEval,
    SuiteScore,
    accuracy_score,
    perplexity_score,
)
from reverie.workloads.steps.skeleton import StepInputs, Workload, Written, run_workload
from reverie.workloads.store import store
from reverie.workloads.store.modelio import content_hash, load_generation, stage_in

EVAL_CACHE_DIR = ".eval-cache"
EVAL_REPORT = "eval.json"
# Caps keep an evaluation's cost bounded as the memory buffer and the lineage's
# history grow; the subsample is seeded, so every model sees the same items.
MAX_MEMORY_QUESTIONS = 600
MAX_RETENTION_QUESTIONS = 400
_TRUNC = 300


@dataclass(frozen=True)
class AskItem:
    """One accuracy item: the user-turn text, optional context, the reference answer."""

    id: str
    text: str
    answer: str
    context: str | None = None


@dataclass
class EvalItems:
    """Every item of every suite, fixed before any model is scored."""

    suites: list[Suite]
    knowledge: list[AskItem] = field(default_factory=list)
    incontext: list[AskItem] = field(default_factory=list)
    retention_memories: list[AskItem] = field(default_factory=list)
    retention_general: list[AskItem] = field(default_factory=list)
    fewshot: list[AskItem] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def digest(self, *, max_new_tokens: int) -> str:
        """sha256 of the items and generation settings: equal digests mean comparable scores."""
        payload = {
            "schema": SCHEMA_VERSION,
            "suites": [Suite(s).value for s in self.suites],
            "maxNewTokens": max_new_tokens,
            "items": {
                name: [[i.id, i.text, i.answer, i.context or ""] for i in getattr(self, name)]
                for name in ("knowledge", "incontext", "retention_memories", "retention_general", "fewshot")
            },
            "texts": self.texts,
        }
        return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Scorer(Protocol):
    """What evaluation needs from a model: greedy answers and text NLL."""

    def answers(self, items: Sequence[AskItem], *, max_new_tokens: int) -> list[str]: ...

    def text_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]: ...


def _subsample(items: list[AskItem], cap: int, *, seed: int) -> list[AskItem]:
    if len(items) <= cap:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), cap))
    return [items[i] for i in keep]


def _ask(q: Question, *, with_context: bool) -> AskItem:
    return AskItem(id=q.id, text=question_text(q), answer=q.answer, context=q.context if with_context else None)


def build_items(
    *,
    suites: Sequence[Suite],
    memories: Sequence[Memory],
    prior: Sequence[Memory],
    sets: EvalSets,
    questions_per_memory: int,
    seed: int = 0,
) -> EvalItems:
    """The items of the requested suites (deterministic for the same inputs)."""
    wanted = [Suite(s) for s in suites]
    items = EvalItems(suites=wanted)
    questions = [q for m in memories for q in memory_questions(m, limit=questions_per_memory)]
    if Suite.KNOWLEDGE_INCORPORATION in wanted or Suite.INCONTEXT_UPPER_BOUND in wanted:
        closed = _subsample([_ask(q, with_context=False) for q in questions], MAX_MEMORY_QUESTIONS, seed=seed)
        ids = {i.id for i in closed}
        if Suite.KNOWLEDGE_INCORPORATION in wanted:
            items.knowledge = closed
        if Suite.INCONTEXT_UPPER_BOUND in wanted:
            items.incontext = [_ask(q, with_context=True) for q in questions if q.id in ids]
    if Suite.RETENTION in wanted:
        old = [_ask(q, with_context=False) for m in prior for q in memory_questions(m, limit=questions_per_memory)]
        # Memory ids repeat across generations' sets; the item id must stay unique.
        old = [AskItem(id=f"prior-{n}/{i.id}", text=i.text, answer=i.answer) for n, i in enumerate(old)]
        items.retention_memories = _subsample(old, MAX_RETENTION_QUESTIONS, seed=seed)
        items.retention_general = [AskItem(id=g.id, text=g.question, answer=g.answer) for g in sets.general_qa]
    if Suite.FEWSHOT in wanted:
        items.fewshot = [AskItem(id=f.id, text=f.prompt, answer=f.answer) for f in sets.fewshot]
    if Suite.PERPLEXITY in wanted:
        items.texts = list(sets.general_text)
    return items


def _outcomes(items: Sequence[AskItem], outputs: Sequence[str]) -> list[ItemOutcome]:
    return [
        ItemOutcome(
            id=i.id,
            prompt=(f"{i.context}\n\n" if i.context else "")[:_TRUNC] + i.text[:_TRUNC],
            expected=i.answer,
            output=o[:_TRUNC],
            correct=answer_matches(o, i.answer),
        )
        for i, o in zip(items, outputs, strict=True)
    ]


def score_model(scorer: Scorer, items: EvalItems, *, max_new_tokens: int, seed: int = 0) -> dict[str, SuiteScore]:
    """Every requested suite's score for one model."""
    groups = [items.knowledge, items.incontext, items.retention_memories, items.retention_general, items.fewshot]
    flat = [i for g in groups for i in g]
    # One batched pass over every question: batching across suites is what keeps
    # an evaluation cheap on CPU.
    outputs = scorer.answers(flat, max_new_tokens=max_new_tokens) if flat else []
    scored: list[list[ItemOutcome]] = []
    start = 0
    for g in groups:
        scored.append(_outcomes(g, outputs[start : start + len(g)]))
        start += len(g)
    knowledge, incontext, ret_mem, ret_gen, fewshot = scored
    out: dict[str, SuiteScore] = {}
    for suite in items.suites:
        if suite == Suite.KNOWLEDGE_INCORPORATION:
            out[suite.value] = accuracy_score(suite, knowledge)
        elif suite == Suite.INCONTEXT_UPPER_BOUND:
            out[suite.value] = accuracy_score(suite, incontext)
        elif suite == Suite.RETENTION:
            out[suite.value] = accuracy_score(
                suite,
                ret_mem + ret_gen,
                parts={
                    "memories": accuracy_score(suite, ret_mem),
                    "general": accuracy_score(suite, ret_gen),
                },
            )
            # Parts carry only their counts; the items live once, in the parent.
            for part in out[suite.value].parts.values():
                part.items = []
        elif suite == Suite.FEWSHOT:
            out[suite.value] = accuracy_score(suite, fewshot)
        elif suite == Suite.PERPLEXITY:
            nll = scorer.text_nll(items.texts)
            out[suite.value] = perplexity_score(
                [
                    ItemOutcome(id=f"text-{n}", prompt=t[:_TRUNC], nll=s, tokens=k)
                    for n, (t, (s, k)) in enumerate(zip(items.texts, nll, strict=True))
                ],
                seed=seed,
            )
    return out


class ModelScorer:
    """A :class:`Scorer` over a loaded generation: greedy answers through a sampling backend."""

    def __init__(
        self, model: Any, tokenizer: Any, *, backend: Any | None = None, batch_size: int = 16, world: Any | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.world = world or World()
        self.backend = backend or ShardedSampling(HFBackend(model, tokenizer, batch_size=batch_size), self.world)
        self.batch_size = batch_size

    def answers(self, items: Sequence[AskItem], *, max_new_tokens: int) -> list[str]:
        return greedy_answers(
            self.backend,
            self.tokenizer,
            [i.text for i in items],
            contexts=[i.context for i in items],
            max_new_tokens=max_new_tokens,
        )

    def text_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        if not self.world.distributed:
            return text_nll(self.model, self.tokenizer, texts, batch_size=self.batch_size)
        # One process's batches, dealt round-robin: the same padding, the same sums.
        mine = [
            (i, v)
            for rows in distributed.owned_batches(len(texts), self.batch_size, self.world)
            for i, v in zip(
                rows,
                text_nll(self.model, self.tokenizer, [texts[i] for i in rows], batch_size=self.batch_size),
                strict=True,
            )
        ]
        return distributed.merge_indexed(self.world, len(texts), mine)


# --------------------------------------------------------------------------- #
# Cache in the store
# --------------------------------------------------------------------------- #


def cache_key(model_hash: str, items_digest: str) -> str:
    return hashlib.sha256(f"{model_hash}|{items_digest}".encode()).hexdigest()


def _cache_uri(store_uri: str, key: str) -> str:
    return f"{store_uri.rstrip('/')}/{EVAL_CACHE_DIR}/{key}.json"


def read_cached(store_uri: str, key: str) -> dict[str, SuiteScore] | None:
    """Scores cached under ``key``, or None (missing or unreadable: rescore)."""
    uri = _cache_uri(store_uri, key)
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "r") as fh:
            raw = json.load(fh)
        return {k: SuiteScore.model_validate(v) for k, v in raw["scores"].items()}
    except (ValueError, KeyError, TypeError):
        return None


def write_cached(store_uri: str, key: str, scores: dict[str, SuiteScore]) -> None:
    payload = {"key": key, "scores": {k: v.wire() for k, v in scores.items()}}
    store.write_text(_cache_uri(store_uri, key), json.dumps(payload, allow_nan=True))


def evaluate_model(
    uri: str,
    *,
    role: Literal["candidate", "champion"],
    generation: str | None,
    items: EvalItems,
    store_uri: str,
    max_new_tokens: int,
    seed: int = 0,
    use_cache: bool = True,
) -> ModelEval:
    """Load one generation and score it, through the store's cache."""

    world = distributed.world_from_env()
    # Rank 0 stages first (the others then hit the cache) and decides whether the cache holds the scores.
    folder = distributed.on_main(world, lambda: stage_in(uri))
    if not world.main:
        folder = stage_in(uri)
    model_hash = content_hash(folder)
    key = cache_key(model_hash, items.digest(max_new_tokens=max_new_tokens))
    cached = distributed.on_main(world, lambda: read_cached(store_uri, key) if use_cache else None)
    if cached is not None:
        _log(f"evaluation: {role} {uri}: cached scores ({key[:12]})")
        return ModelEval(role=role, generation=generation, uri=uri, content_hash=model_hash, cached=True, scores=cached)
    t0 = time.monotonic()
    gen = load_generation(folder)
    # Scored as served: every slot folded into the weights (the merged servable form). The same
    # answers as the unmerged adapters (measured: all 126 items of the quickstart) in 2/3 of the time.
    model = gen.model.merge_and_unload() if gen.slots else gen.model
    scores = score_model(
        ModelScorer(model, gen.tokenizer, world=world), items, max_new_tokens=max_new_tokens, seed=seed
    )
    _log(f"evaluation: {role} {uri}: scored in {time.monotonic() - t0:.1f}s")
    if use_cache:
        distributed.on_main(world, lambda: write_cached(store_uri, key, scores))
    return ModelEval(role=role, generation=generation, uri=uri, content_hash=model_hash, scores=scores)


def candidate_uri(config: AttemptConfig) -> str:
    """The model this cycle produced: dreaming's output, else consolidation's."""
    if config.dreaming.enabled and config.inputs.get("dreaming"):
        return config.inputs["dreaming"]
    if config.inputs.get("consolidation"):
        return config.inputs["consolidation"]
    raise ValueError(
        "evaluation needs inputs['dreaming'] (or inputs['consolidation'] when dreaming is disabled); "
        f"got inputs {sorted(config.inputs)}",
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(step: int, total: int, **values: Any) -> None:
    emit_step_progress(Step.EVALUATION.value, step, total, **values)  # rank 0's only on N ranks


def evaluate(config: AttemptConfig, inputs: StepInputs) -> EvalReport:
    """Score the candidate and the champion on the same items; the report."""
    store_uri, spec = config.store_uri, config.evaluation
    sets = load_eval_sets([f"{store_uri.rstrip('/')}/{config.lineage}", store_uri])
    items = build_items(
        suites=spec.suites,
        memories=inputs.memories,
        prior=inputs.prior,
        sets=sets,
        questions_per_memory=spec.questions_per_memory,
    )
    digest = items.digest(max_new_tokens=spec.max_new_tokens)
    total = 2 if config.champion_uri else 1
    _progress(0, total)
    cand = evaluate_model(
        candidate_uri(config),
        role="candidate",
        generation=None,
        items=items,
        store_uri=store_uri,
        max_new_tokens=spec.max_new_tokens,
    )
    _progress(1, total)
    champ = None
    if config.champion_uri:
        champ = evaluate_model(
            config.champion_uri,
            role="champion",
            generation=config.champion_generation,
            items=items,
            store_uri=store_uri,
            max_new_tokens=spec.max_new_tokens,
        )
        _progress(2, total)
    return EvalReport(
        cycle=config.cycle,
        lineage=config.lineage,
        created_at=datetime.now(UTC),
        settings=EvalSettings(
            suites=items.suites,
            questions_per_memory=spec.questions_per_memory,
            max_new_tokens=spec.max_new_tokens,
            question_set_hash=digest,
        ),
        candidate=cand,
        champion=champ,
    )


def summary(report: EvalReport) -> str:
    """One line for the result message: candidate (champion) per suite."""
    base = report.baseline()
    parts = []
    for name, value in report.metrics().items():
        if name.endswith(("_ci_low", "_ci_high", "_n")) or name.startswith("retention_"):
            continue
        champ = base.get(name)
        parts.append(
            f"{name} {value:.3f}" + (f" (champion {champ:.3f})" if champ is not None and not math.isnan(champ) else "")
        )
    return "; ".join(parts)[:600]


class Evaluation(Workload):
    """Score the candidate and the champion; write ``eval.json``; the gate's metrics and baseline."""

    step = Step.EVALUATION
    finite_metrics = False  # a suite with nothing to ask scores NaN, and the gate says so

    def open(self, inputs: StepInputs) -> None:
        self.inputs = inputs

    def work(self) -> None:
        self.report = evaluate(self.config, self.inputs)

    def write(self) -> Written:
        uri = store.join(self.config.output_uri, EVAL_REPORT)

        def write_report() -> str:
            text = json.dumps(self.report.wire(), allow_nan=True, indent=2)
            store.write_text(uri, text)
            return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

        return Written(uri=uri, content_hash=distributed.on_main(distributed.world_from_env(), write_report))

    def metrics(self) -> dict[str, float]:
        return self.report.metrics()

    def baseline(self) -> dict[str, float]:
        return self.report.baseline()

    def message(self) -> str:
        return summary(self.report)


def run(config: AttemptConfig) -> AttemptResult:
    """The evaluation step: scores the candidate and champion, returns the gate's metrics."""
    return run_workload(Evaluation(config))
