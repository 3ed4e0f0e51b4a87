"""The dreamer: dreaming's data, its measures and updates, and one E-step per task context.

What :mod:`reverie.workloads.steps.dream` runs round after round:

* the data — a task context (one memory and its self-quiz), a dream, the
  resumable ``DreamState``;
* the measures — τ (:func:`quiz_measure`, the mean per-token log-likelihood of
  the teacher's quiz answers), gradient importance over the dreaming slot;
* the updates — the isolated probe (:func:`isolated_update_gain`, a throw-away
  adapter; :class:`FirstOrderProbe`, its first-order estimate from the dream's
  gradient, ``probe: gradient``) and the M-step (:func:`m_step`), with the one
  optimiser step (:class:`~reverie.workloads.ml.trainer.TorchTrainer`);
* :class:`Dreamer` — the model and its roles: quiz a context, find its weak
  facts, write the curriculum at them, select, probe and reward.
"""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from reverie.api.steps import DreamingSpec, DreamProbeKind
from reverie.workloads.data import facts
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import Memory, question_prompt
from reverie.workloads.ml.ask import greedy_answers
from reverie.workloads.ml.expansion import FoldedSlots, add_slot, freeze_all_but, slot_parameters
from reverie.workloads.ml.lm import (
    answer_cross_entropy,
    completion_logits,
    completion_nll,
    encode,
    pair_tokens,
    sft_loss,
    target_nll,
)
from reverie.workloads.ml.sampling import active_adapters, make_backend
from reverie.workloads.ml.trainer import TorchTrainer
from reverie.workloads.steps import selfquiz
from reverie.workloads.steps.selfquiz import QuizItem
from reverie.workloads.steps.selfstudy import (
    answer_tokens,
    grounded,
    subject_of,
    writer_instructions,
    written_question,
)
from reverie.workloads.store.modelio import activate_slots, save_generation

DREAM_SLOT_NOTE = "dreaming"
PROBE_ADAPTER = "dream-probe"
GUARD_GENERAL = 6  # general prompts whose own answers the guard keeps
GUARD_RECITALS = 4  # other memories' recitals in each context's guard
M_STEP_BATCH = 8
DREAMING_STATE = "dreaming"  # the DreamState's key in a checkpoint's state.json
BUILT_KINDS = ("reverse", "cloze", "contrast")
PHRASING = "phrasing"


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class QuizContext:
    """One task: a memory, its subject and its self-quiz (the items τ is measured on)."""

    id: str  # the memory's id
    memory: Memory
    subject: str
    items: tuple[QuizItem, ...]
    replay: bool = False


@dataclass
class Dream:
    """One candidate dream — a (question, answer) item aimed at a weak fact — and what happened to it."""

    context_id: str
    kind: str  # phrasing | reverse | cloze | contrast
    prompt: str
    text: str  # the answer it trains
    round: int
    fact: str = ""
    writer: str = ""  # phrasing only: the instruction the question was written from
    importance: float | None = None
    kept: str | None = None  # "topk" | "random" | None (rejected)
    reward: int | None = None
    tau_gain: float | None = None
    guard_change: float | None = None


@dataclass
class DreamState:
    """Everything a resumed attempt needs (written as JSON after every unit of work)."""

    round: int = 0
    contexts_done: list[str] = field(default_factory=list)  # of the current round's E-step
    m_step_done: bool = False
    dreams: list[Dream] = field(default_factory=list)
    round_stats: list[dict[str, float]] = field(default_factory=list)
    quiz: list[QuizItem] = field(default_factory=list)
    guard: list[tuple[str, str]] = field(default_factory=list)  # general prompt → the model's own answer
    anchors: list[tuple[str, str]] = field(default_factory=list)  # general replay prompt → the root's answer
    rewards: dict[str, list[float]] = field(default_factory=dict)  # "<round>/<context>" → quiz rewards
    weak: dict[str, int] = field(default_factory=dict)  # "<round>/<context>" → weak facts found

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "contextsDone": self.contexts_done,
            "mStepDone": self.m_step_done,
            "dreams": [asdict(d) for d in self.dreams],
            "roundStats": self.round_stats,
            "quiz": [q.to_json() for q in self.quiz],
            "guard": [list(g) for g in self.guard],
            "anchors": [list(g) for g in self.anchors],
            "rewards": self.rewards,
            "weak": self.weak,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DreamState:
        return cls(
            round=raw["round"],
            contexts_done=list(raw["contextsDone"]),
            m_step_done=raw["mStepDone"],
            dreams=[Dream(**d) for d in raw["dreams"]],
            round_stats=list(raw["roundStats"]),
            quiz=[QuizItem.from_json(q) for q in raw.get("quiz", [])],
            guard=[(p, a) for p, a in raw.get("guard", [])],
            anchors=[(p, a) for p, a in raw.get("anchors", [])],
            rewards={k: list(v) for k, v in raw.get("rewards", {}).items()},
            weak=dict(raw.get("weak", {})),
        )

    def round_mean(self, r: int) -> float:
        """Mean self-quiz reward of round r's E-step (NaN before any)."""
        vals = [x for k, v in self.rewards.items() if k.startswith(f"{r}/") for x in v]
        return sum(vals) / len(vals) if vals else math.nan


def rehearsed(memories: Sequence[Memory], prior: Sequence[Memory], *, replay_ratio: float, seed: int) -> list[Memory]:
    """The earlier memories this round quizzes too: ρ/(1−ρ) per current memory, drawn with a seeded RNG."""
    if not prior or replay_ratio <= 0:
        return []
    want = min(len(prior), math.ceil(len(memories) * replay_ratio / (1 - replay_ratio)))
    return [prior[i] for i in sorted(random.Random(seed).sample(range(len(prior)), want))]


def quiz_contexts(memories: Sequence[Memory], quiz: Sequence[QuizItem]) -> list[QuizContext]:
    """One context per memory with at least one quiz item, in memory order."""
    out = []
    for m in memories:
        items = tuple(q for q in quiz if q.memory_id == m.id)
        subject = subject_of(m.text)
        if items and subject:
            out.append(QuizContext(id=m.id, memory=m, subject=subject, items=items, replay=items[0].replay))
    return out


def writer_context(fact: str, subject: str) -> str:
    """What the dreamer reads when it writes another question on one fact: the fact alone, on the full name.

    With the whole memory in view a 135M writer asks about any of its facts; with
    the fact alone its question is about that fact (and names the subject).
    """
    return facts.with_name(fact, subject)


def unit_seed(seed: int, round_: int, context_index: int, stream: int) -> int:
    """One seed per (round, context, stream): a resumed run redraws exactly what it would have drawn."""
    return (seed * 1_000_003 + round_ * 10_007 + context_index * 101 + stream) % (2**31 - 1)


# --------------------------------------------------------------------------- #
# Measures and updates (the math, written out)
# --------------------------------------------------------------------------- #


def chat_pair(tokenizer: Any, prompt: str, answer: str) -> tuple[str, str]:
    """A (question, answer) item as trained: the chat prompt, closed book, then the answer and eos."""
    return question_prompt(tokenizer, prompt), answer + tokenizer.eos_token


@torch.no_grad()
def mean_logprob(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, max_tokens: int = 96) -> float:
    """Mean per-token log-likelihood of each answer after its closed-book question, averaged over the pairs."""
    if not pairs:
        return 0.0
    was_training = model.training
    model.eval()
    prompts = [encode(tokenizer, question_prompt(tokenizer, q)) for q, _ in pairs]
    answers = [answer_tokens(tokenizer, a, max_tokens=max_tokens) for _, a in pairs]
    scored = completion_nll(model, tokenizer, prompts, answers)
    model.train(was_training)
    return -sum(n / max(1, c) for n, c in scored) / len(scored)


def quiz_measure(model: Any, tokenizer: Any, ctx: QuizContext) -> float:
    """τ: mean per-token log-likelihood of the teacher's answers to the context's quiz questions, closed book."""
    return mean_logprob(model, tokenizer, [(q.prompt, q.reference) for q in ctx.items])


def loss_gradient(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], params: Sequence[torch.nn.Parameter]
) -> list[torch.Tensor]:
    """∇_φ of the mean over ``pairs`` of each pair's token-mean NLL (τ's weighting), zero where φ gets none."""
    nll, counted = target_nll(model, tokenizer, pairs)
    loss = (nll / counted.clamp(min=1)).mean()
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


def grad_norm(grads: Sequence[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads) or torch.tensor(0.0)))


def dream_gradient(
    model: Any, tokenizer: Any, dream: Dream, params: Sequence[torch.nn.Parameter]
) -> list[torch.Tensor]:
    """∇_φ L_SFT(dream) over the dreaming slot's parameters φ (its norm is the dream's importance g)."""
    return loss_gradient(model, tokenizer, [chat_pair(tokenizer, dream.prompt, dream.text)], params)


def select(dreams: Sequence[Dream], *, k: int, b: int, rng: random.Random) -> list[Dream]:
    """Mark the top-k dreams by importance plus b random others as kept; return the kept ones."""
    order = sorted(range(len(dreams)), key=lambda i: (-(dreams[i].importance or 0.0), i))
    top = order[:k]
    rest = order[k:]
    extra = rng.sample(rest, min(b, len(rest)))
    for i in top:
        dreams[i].kept = "topk"
    for i in extra:
        dreams[i].kept = "random"
    return [dreams[i] for i in sorted(top + extra)]


def isolated_update_gain(
    model: Any,
    tokenizer: Any,
    dream: Dream,
    ctx: QuizContext,
    *,
    guard: Sequence[tuple[str, str]],
    before: tuple[float, float],
    spec: DreamingSpec,
    target_modules: Sequence[str],
    seed: int,
) -> tuple[float, float]:
    """(τ(θ') − τ(θ), guard(θ') − guard(θ)) after ``probeSteps`` LoRA SFT steps on the dream alone.

    The probe adapter is removed afterwards and every flag restored: the model is unchanged.
    """
    active = list(model.base_model.active_adapters)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    torch.manual_seed(seed)  # the probe's A init
    model, _ = add_slot(
        model, rank=spec.probe_rank, target_modules=target_modules, name=PROBE_ADAPTER, keep_active=active
    )
    params = [p for n, p in model.named_parameters() if f".{PROBE_ADAPTER}." in n]
    trainer = TorchTrainer(params, lr=spec.inner_learning_rate, max_grad_norm=0.0)
    pair = chat_pair(tokenizer, dream.prompt, dream.text)
    model.train()
    for _ in range(spec.probe_steps):
        trainer.backward_and_step(sft_loss(model, tokenizer, [pair]))
    model.eval()
    gain = quiz_measure(model, tokenizer, ctx) - before[0]
    change = mean_logprob(model, tokenizer, guard) - before[1] if guard else 0.0
    model.delete_adapter(PROBE_ADAPTER)
    activate_slots(model, active)
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, False))
    return gain, change


class FirstOrderProbe:
    """:func:`isolated_update_gain` to first order: what ``probeSteps`` Adam steps on one dream do to τ and the guard.

    Adam's first step on a gradient g moves φ by −η·sign(g) (m̂/√v̂ = g/|g|);
    held for ``probeSteps`` steps, τ changes by ≈ probeSteps·η·⟨∇_φ L_τ, sign g⟩,
    L_τ the quiz's NLL (τ = −L_τ), and the guard likewise.  ∇L_τ and ∇L_guard
    are taken once per context on the dreaming slot φ; a dream's own gradient is
    the one its importance already took.  On SmolLM2-135M this tracked the
    isolated update's τ gain at r = 0.96 and its guard change at r = 0.95, and
    gave the same reward to 80 of 82 dreams (bench/science/RESULTS.md).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        ctx: QuizContext,
        *,
        guard: Sequence[tuple[str, str]],
        spec: DreamingSpec,
        params: Sequence[torch.nn.Parameter],
    ) -> None:
        was_training = model.training
        model.eval()  # the isolated update's measures are taken in eval mode
        self.tau = loss_gradient(
            model, tokenizer, [chat_pair(tokenizer, q.prompt, q.reference) for q in ctx.items], params
        )
        self.guard = (
            loss_gradient(model, tokenizer, [chat_pair(tokenizer, q, a) for q, a in guard], params) if guard else None
        )
        model.train(was_training)
        self.scale = spec.probe_steps * spec.inner_learning_rate

    def gain(self, dream_grad: Sequence[torch.Tensor]) -> tuple[float, float]:
        """(Δτ, Δguard) of the update along ``dream_grad`` (∇_φ L_SFT of the dream)."""

        def change(toward: Sequence[torch.Tensor]) -> float:
            return self.scale * float(sum((t * torch.sign(g)).sum() for t, g in zip(toward, dream_grad, strict=True)))

        return change(self.tau), change(self.guard) if self.guard is not None else 0.0


@dataclass
class RootTargets:
    """The root's next-token distribution on each distinct pair's answer tokens, computed once, without gradient.

    An M-step sees each general row ``m_step_epochs`` times and cycles a few
    distinct prompts to its share ρ: one root pass per distinct row (and, with
    earlier slots folded, one unfold) replaces one per batch.  Kept as
    probabilities with their entropy, so the KL on a batch is one soft-target
    cross entropy: KL(p_root ‖ p) = H(p_root, p) − H(p_root).
    """

    tokens: dict[tuple[str, str], tuple[list[int], list[int]]]
    probs: dict[tuple[str, str], torch.Tensor]  # pair → (answer tokens × vocabulary)
    entropy: dict[tuple[str, str], torch.Tensor]  # pair → (answer tokens,)

    @classmethod
    @torch.no_grad()
    def compute(
        cls, model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, root: Callable[[], Any]
    ) -> RootTargets:
        """``root`` is a context in which the model computes the root (the exact base, every slot off)."""
        distinct = list(dict.fromkeys(pairs))
        tokens = dict(zip(distinct, zip(*pair_tokens(tokenizer, distinct), strict=True), strict=True))
        probs: dict[tuple[str, str], torch.Tensor] = {}
        entropy: dict[tuple[str, str], torch.Tensor] = {}
        if not distinct:
            return cls(tokens, probs, entropy)
        was_training = model.training
        model.eval()
        with root():
            for i in range(0, len(distinct), M_STEP_BATCH):
                chunk = distinct[i : i + M_STEP_BATCH]
                logits, _, _ = completion_logits(
                    model, tokenizer, [tokens[x][0] for x in chunk], [tokens[x][1] for x in chunk]
                )
                logp = F.log_softmax(logits.float(), -1)
                for row, x in enumerate(chunk):
                    n = len(tokens[x][1])
                    probs[x] = logp[row, :n].exp()
                    entropy[x] = -(probs[x] * logp[row, :n]).sum(-1)
        model.train(was_training)
        return cls(tokens, probs, entropy)

    def kl(self, logits: torch.Tensor, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Token-mean KL(p_root ‖ p) over the pairs' answer tokens; ``logits`` are the pairs' completion logits."""
        rows = [logits[i, : len(self.tokens[x][1])] for i, x in enumerate(pairs)]
        cross = F.cross_entropy(torch.cat(rows).float(), torch.cat([self.probs[x] for x in pairs]), reduction="none")
        return (cross - torch.cat([self.entropy[x] for x in pairs])).mean()


def root_kl(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, root: Callable[[], Any]) -> torch.Tensor:
    """Token-mean forward KL(p_root ‖ p_model) over the whole vocabulary, on the pairs' answer tokens."""
    targets = RootTargets.compute(model, tokenizer, pairs, root=root)
    prompts, answers = zip(*(targets.tokens[x] for x in pairs), strict=True)
    logits, _, _ = completion_logits(model, tokenizer, prompts, answers)
    return targets.kl(logits, pairs)


def m_step(
    model: Any,
    tokenizer: Any,
    slot: str,
    *,
    examples: Sequence[tuple[str, str]],
    anchors: Sequence[tuple[str, str]] = (),
    root: Callable[[], Any],
    spec: DreamingSpec,
    seed: int,
) -> float:
    """ReST-EM M-step on the dreaming slot; returns the last loss.

    ``examples`` (prompt, target) train by SFT; ``anchors`` — general prompts with
    the root's answers — by forward KL to the root's whole distribution
    (:class:`RootTargets`, computed once before the first step), each term
    weighted by its share of the batch; ``root`` is the context in which the
    model computes the root (required: without one the anchors would be held to the
    model itself, no hold at all).  Every row is seen ``m_step_epochs``
    times, in batches of 8 (one forward, the LM head on answer tokens only), at
    ``inner_learning_rate``.  SFT on general answers instead cost SmolLM2-135M
    perplexity +98 % in one M-step (bench/science/LOG.md).
    """
    if not examples:
        return math.nan
    rows = [(False, x) for x in examples] + [(True, x) for x in anchors]
    targets = RootTargets.compute(model, tokenizer, anchors, root=root)
    taught_tokens = dict(zip(examples, zip(*pair_tokens(tokenizer, examples), strict=True), strict=True))
    trainer = TorchTrainer(freeze_all_but(model, slot), lr=spec.inner_learning_rate, max_grad_norm=1.0)
    rng = random.Random(seed)
    steps = spec.m_step_epochs * math.ceil(len(rows) / M_STEP_BATCH)
    model.train()
    loss = torch.tensor(math.nan)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < M_STEP_BATCH:
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        batch = [rows[i] for i in order[:M_STEP_BATCH]]
        del order[:M_STEP_BATCH]
        tokens = [targets.tokens[x] if anchored else taught_tokens[x] for anchored, x in batch]
        logits, mask, ids = completion_logits(model, tokenizer, [p for p, _ in tokens], [t for _, t in tokens])
        taught = [i for i, (anchored, _) in enumerate(batch) if not anchored]
        kept = [i for i, (anchored, _) in enumerate(batch) if anchored]
        loss = torch.zeros(())
        if kept:
            loss = loss + targets.kl(logits[kept], [batch[i][1] for i in kept]) * (len(kept) / len(batch))
        if taught:
            loss = loss + answer_cross_entropy(logits[taught], ids[taught], mask[taught]) * (len(taught) / len(batch))
        trainer.backward_and_step(loss)
    model.eval()
    return float(loss.detach())


# --------------------------------------------------------------------------- #
# One round: the E-step over the contexts
# --------------------------------------------------------------------------- #


@dataclass
class Dreamer:
    """The model being dreamed with, its tokenizer and backend, who teaches, and the phase knobs."""

    model: Any
    tokenizer: Any
    backend: Any
    spec: DreamingSpec
    slot: str
    target_modules: Sequence[str]
    teacher: list[str]  # the adapters of the model that reads a memory (before this sleep)
    # The earlier slots, added into the base weights for the phase (one slot's cost, not all of them).
    folded: FoldedSlots | None = None
    # The weights the teacher reads with: the exact base, when earlier slots are folded in and the teacher is the base.
    reading: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    answer_tokens: int = 48
    backend_round: int = -1
    held_out: HeldOut | None = None  # evaluation probes: a dream or quiz question that contains one is dropped
    memories: list[Memory] = field(default_factory=list)  # every quizzed memory: where confusions come from

    @property
    def candidate(self) -> list[str]:
        """The consolidated model plus the dreaming slot: every slot but a probe (and those folded in)."""
        folded = self.folded.names if self.folded else []
        return [a for a in self.model.peft_config if a != PROBE_ADAPTER and a not in folded]

    @contextlib.contextmanager
    def root(self) -> Iterator[None]:
        """The root for the length of the block: the exact base weights, every slot off."""
        with self.folded.unfolded() if self.folded else contextlib.nullcontext(), active_adapters(self.model, []):
            yield

    def slot_params(self) -> list[torch.nn.Parameter]:
        return list(slot_parameters(self.model, self.slot).values())

    def allows(self, *texts: str) -> bool:
        return self.held_out is None or all(self.held_out.allows(t) for t in texts)

    def sync_backend(self, round_: int) -> None:
        """vLLM serves folders, not in-memory weights: write the current generation once per round.

        The dreaming slot changes only in M-steps, between rounds, so one engine
        per round samples exactly the model the round's E-step rewards.
        """
        if self.spec.backend != "vllm" or self.backend_round == round_:
            return
        slots = list(self.model.peft_config)
        folder = save_generation(
            self.model, self.tokenizer, Path(tempfile.mkdtemp(prefix="reverie-dream-")) / "g", slots=slots
        )
        self.backend = make_backend("vllm", self.model, self.tokenizer, folder=folder, slots=slots)
        self.backend_round = round_

    def quiz(self, ctx: QuizContext) -> tuple[list[str], list[float]]:
        """The candidate's closed-book answers to the context's quiz and their rewards."""
        said = greedy_answers(
            self.backend,
            self.tokenizer,
            [q.prompt for q in ctx.items],
            adapters=self.candidate,
            max_new_tokens=self.answer_tokens,
        )
        return said, [
            selfquiz.agreement(a, q.reference, subject=ctx.subject) for a, q in zip(said, ctx.items, strict=True)
        ]

    def weak_facts(
        self, ctx: QuizContext, said: Sequence[str], rewards: Sequence[float]
    ) -> list[tuple[str, Memory | None]]:
        """Up to ``factsPerMemory`` facts the low-reward answers missed, each with what it was confused with."""
        missed: dict[str, int] = {}
        confusion: dict[str, Memory | None] = {}
        for a, q, r in zip(said, ctx.items, rewards, strict=True):
            if r >= self.spec.weak_below:
                continue
            other = selfquiz.confused_with(a, ctx.memory, self.memories)
            for s in selfquiz.missed_facts(a, q.reference, ctx.memory, subject=ctx.subject):
                missed[s] = missed.get(s, 0) + 1
                confusion[s] = confusion.get(s) or other
        order = sorted(missed, key=lambda s: -missed[s])  # stable: ties keep the memory's order
        return [(s, confusion[s]) for s in order[: self.spec.facts_per_memory]]

    def curriculum(
        self, ctx: QuizContext, weak: Sequence[tuple[str, Memory | None]], *, round_: int, index: int
    ) -> list[Dream]:
        """m candidate dreams per weak fact: the built kinds, then phrasings the dreamer writes (noise on)."""
        dreams: list[Dream] = []
        writes: list[tuple[str, str]] = []  # (fact, writer instruction)
        for fact, other in weak:
            built = [
                ("reverse", facts.reverse_item(fact, ctx.subject)),
                ("cloze", facts.cloze_item(fact, ctx.subject)),
                ("contrast", selfquiz.contrast_item(fact, ctx.subject, other) if other else None),
            ]
            mine = [
                Dream(context_id=ctx.id, kind=k, prompt=p, text=a, round=round_, fact=fact)
                for k, item in built
                if item
                for p, a in [item]
            ][: self.spec.dreams_per_context]
            dreams += mine
            requests = writer_instructions(ctx.subject)
            writes += [(fact, requests[i % len(requests)][1]) for i in range(self.spec.dreams_per_context - len(mine))]
        if writes:
            self.sync_backend(round_)
            written = self.backend.generate(
                [question_prompt(self.tokenizer, ins, context=writer_context(f, ctx.subject)) for f, ins in writes],
                max_new_tokens=40,
                temperature=self.spec.temperature,
                top_p=self.spec.top_p,
                seed=unit_seed(self.spec.seed, round_, index, 0),
                adapters=self.candidate,
                noise_scale=self.spec.noise_expert_scale,
            ).texts
            asked = [(f, ins, written_question(t, ctx.subject)) for (f, ins), t in zip(writes, written, strict=True)]
            asked_ok = [(f, ins, q) for f, ins, q in asked if q]
            with self.reading():
                answers = greedy_answers(
                    self.backend,
                    self.tokenizer,
                    [q for _, _, q in asked_ok],
                    contexts=[ctx.memory.text] * len(asked_ok),
                    adapters=self.teacher,
                    max_new_tokens=self.answer_tokens,
                )
            for (f, ins, q), a in zip(asked_ok, answers, strict=True):
                if grounded(a, ctx.memory.text, subject=ctx.subject):
                    dreams.append(
                        Dream(context_id=ctx.id, kind=PHRASING, prompt=q, text=a, round=round_, fact=f, writer=ins)
                    )
        quizzed = {q.prompt for q in ctx.items}
        return [d for d in dreams if d.prompt not in quizzed and self.allows(d.prompt, d.text, f"{d.prompt} {d.text}")]

    def guard_for(
        self, ctx: QuizContext, contexts: Sequence[QuizContext], guard: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """What a dream for ``ctx`` must not lower: the general answers and the next memories' recitals."""
        others = [c for c in contexts if c.id != ctx.id]
        start = next((i for i, c in enumerate(contexts) if c.id == ctx.id), 0)
        ring = others[start:] + others[:start]
        recitals = [
            (q.prompt, q.reference) for c in ring[:GUARD_RECITALS] for q in c.items[:1] if q.kind == selfquiz.RECITAL
        ]
        return [*guard, *recitals]

    def reward(
        self,
        ctx: QuizContext,
        dreams: Sequence[Dream],
        *,
        guard: Sequence[tuple[str, str]],
        seeds: Sequence[int],
        grads: dict[int, list[torch.Tensor]] | None = None,
    ) -> None:
        """Set each dream's τ gain, guard change and reward (1: τ up, the guard not down by more than the tolerance).

        ``probe: update`` measures the isolated update itself (``seeds``: each
        probe's init); ``probe: gradient`` estimates it to first order
        (:class:`FirstOrderProbe`) from each dream's gradient, ``grads[id(dream)]``
        when the importance already took it.
        """
        if self.spec.probe == DreamProbeKind.GRADIENT:
            params = self.slot_params()
            probe = FirstOrderProbe(self.model, self.tokenizer, ctx, guard=guard, spec=self.spec, params=params)
            for d in dreams:
                g = (grads or {}).get(id(d)) or dream_gradient(self.model, self.tokenizer, d, params)
                d.tau_gain, d.guard_change = probe.gain(g)
        else:
            before = (quiz_measure(self.model, self.tokenizer, ctx), mean_logprob(self.model, self.tokenizer, guard))
            for d, seed in zip(dreams, seeds, strict=True):
                d.tau_gain, d.guard_change = isolated_update_gain(
                    self.model,
                    self.tokenizer,
                    d,
                    ctx,
                    guard=guard,
                    before=before,
                    spec=self.spec,
                    target_modules=self.target_modules,
                    seed=seed,
                )
        for d in dreams:
            d.reward = int((d.tau_gain or 0.0) > 0.0 and (d.guard_change or 0.0) >= -self.spec.replay_tolerance)

    def e_step_context(
        self,
        ctx: QuizContext,
        *,
        round_: int,
        index: int,
        contexts: Sequence[QuizContext] = (),
        guard: Sequence[tuple[str, str]] = (),
    ) -> tuple[list[Dream], list[float], int]:
        """Quiz, find the weak facts, dream at them, keep top-k + b per fact, reward each by its (estimated) isolated update."""
        said, rewards = self.quiz(ctx)
        weak = self.weak_facts(ctx, said, rewards)
        dreams = self.curriculum(ctx, weak, round_=round_, index=index)
        if not dreams:
            return [], rewards, len(weak)
        params = self.slot_params()
        grads = {id(d): dream_gradient(self.model, self.tokenizer, d, params) for d in dreams}
        for d in dreams:
            d.importance = grad_norm(grads[id(d)])
        rng = random.Random(unit_seed(self.spec.seed, round_, index, 1))
        kept = [
            d
            for fact, _ in weak
            for d in select([x for x in dreams if x.fact == fact], k=self.spec.top_k, b=self.spec.random_extra, rng=rng)
        ]
        rows = self.guard_for(ctx, contexts, guard)
        grads = {id(d): grads[id(d)] for d in kept} if self.spec.probe == DreamProbeKind.GRADIENT else {}
        self.reward(
            ctx,
            kept,
            guard=rows,
            grads=grads,
            seeds=[unit_seed(self.spec.seed, round_, index, 2 + j) for j in range(len(kept))],
        )
        return dreams, rewards, len(weak)


def rewarded_rate(dreams: Sequence[Dream]) -> float:
    """Share of kept dreams rewarded 1 (NaN when none was kept)."""
    kept = [d for d in dreams if d.kept]
    return sum(d.reward or 0 for d in kept) / len(kept) if kept else math.nan
