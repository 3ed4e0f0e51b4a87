"""The dreaming phase (paper §2.5, "REM"): a label-free curriculum from the model's own errors.

Consolidation moves a sleep's memories into a new slot; dreaming finds what the
consolidated model still gets wrong about them and teaches it that, with no
label.  For each task context — one memory of this sleep, plus (rehearsal) a
share ρ/(1−ρ) of earlier sleeps' memories, ρ = ``consolidation.replayRatio``:

1. **Self-quiz** (:mod:`reverie.workloads.steps.selfquiz`).  Fresh questions
   of the self-study kinds, written by the teacher with the memory in view and
   never an evaluation probe, answered closed book by the candidate (the
   consolidated model plus the dreaming slot) and by the teacher (the model
   before this sleep — the base with ``consolidation.teacher: base`` —
   reading the memory).  Reward = F1 of the two answers' grounded spans.  The
   memory's sentences that a low-reward answer missed are its *weak facts*; the
   memory whose spans it stated instead is what the fact was confused with.
2. **Dream.**  For each weak fact (at most ``factsPerMemory``), m candidate
   dreams, each a (question, answer) item aimed at it: the reverse direction
   ("Who was born in Tarrow?"), the blank over its sentence, a contrast with the
   confused memory (built from the memories' own sentences), and other
   phrasings the dreamer writes with the memory in view and a *random extra
   expert* switched on (the paper's router noise), answered by the teacher and
   kept only when grounded.  A dream that contains an evaluation probe is dropped.
3. **Select.**  Gradient importance ``g = ‖∇_φ L_SFT(dream)‖₂`` over φ, the
   dreaming slot (at creation B = 0, so only B carries gradient: the direction
   the first update moves); the top-k per fact are kept, plus b drawn at random.
4. **Reward** (τ, pointed at errors).  Each kept dream is applied as an
   *isolated* LoRA update — a throw-away adapter, ``probeSteps`` SFT steps on
   the dream alone — and rewarded 1 when it raises τ, the mean per-token
   log-likelihood of the teacher's answers to this memory's quiz questions
   (held in: the quiz, never evaluation), *and* does not lower the guard — the
   model's own answers to general prompts and the other memories' recitals —
   by more than ``replayTolerance`` nats per token.  Dreams never see each
   other's updates.
5. **Learn (ReST-EM).**  E-step = 1–4; M-step = SFT of the dreaming slot on every
   rewarded dream so far, on the generator pairs of this round's rewarded
   phrasings (the writer prompt → the question: the next round dreams better),
   and on the guard's general answers at share ρ (self-agreement replay).  With
   ``grpo.enabled`` TRL's ``GRPOTrainer`` trains the writer on the same reward
   instead (vLLM generation on GPU).

The phase's result reports the self-quiz reward before and after and the
number of weak facts.  Checkpoints: after each context's E-step and each
M-step (:mod:`reverie.workloads.store.checkpoint`: the dreaming slot's weights
and, in ``state.json``, the quiz, the dreams and their rewards), staged out to a
remote store as written; a resumed attempt continues from there and, because
every random draw is seeded by (seed, round, context), keeps the dreams an
uninterrupted run would have kept.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from reverie.api.sleepcycle import Step
from reverie.api.steps import DreamingSpec, SamplingBackendKind, TeacherChoice
from reverie.core.contract import CHECKPOINTS_FOLDER, AttemptConfig, AttemptResult, checkpoint_root, emit_step_progress
from reverie.workloads.data import facts
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import Memory, question_prompt
from reverie.workloads.ml import distributed
from reverie.workloads.ml.ask import greedy_answers
from reverie.workloads.ml.expansion import FoldedSlots, add_slot, freeze_all_but, slot_parameters
from reverie.workloads.ml.lm import completion_nll, encode, sft_loss
from reverie.workloads.ml.sampling import make_backend
from reverie.workloads.ml.trainer import TorchTrainer
from reverie.workloads.steps import selfquiz
from reverie.workloads.steps.selfquiz import QuizItem
from reverie.workloads.steps.selfstudy import (
    GENERAL_REPLAY_PROMPTS,
    answer_tokens,
    grounded,
    subject_of,
    writer_instructions,
    written_question,
)
from reverie.workloads.steps.skeleton import (
    StepInputs,
    Stopped,
    Workload,
    Written,
    run_workload,
    work_dir,
    write_generation,
)
from reverie.workloads.store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reverie.workloads.store.modelio import activate_slots, load_generation, save_generation, stage_out

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


def importance(model: Any, tokenizer: Any, dream: Dream, params: Sequence[torch.nn.Parameter]) -> float:
    """g = ‖∇_φ L_SFT(dream)‖₂ over the dreaming slot's parameters φ."""
    for p in params:
        p.grad = None
    loss = sft_loss(model, tokenizer, [chat_pair(tokenizer, dream.prompt, dream.text)])
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) or torch.tensor(0.0)))


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


def m_step(
    model: Any,
    tokenizer: Any,
    slot: str,
    *,
    examples: Sequence[tuple[str, str]],
    spec: DreamingSpec,
    seed: int,
) -> float:
    """ReST-EM M-step: SFT the dreaming slot on ``examples`` (prompt, target); returns the last loss.

    Every example is seen ``m_step_epochs`` times, in batches of 8, at ``inner_learning_rate``.
    """
    if not examples:
        return math.nan
    trainer = TorchTrainer(freeze_all_but(model, slot), lr=spec.inner_learning_rate, max_grad_norm=1.0)
    rng = random.Random(seed)
    steps = spec.m_step_epochs * math.ceil(len(examples) / M_STEP_BATCH)
    model.train()
    loss = torch.tensor(math.nan)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < M_STEP_BATCH:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch = [examples[i] for i in order[:M_STEP_BATCH]]
        del order[:M_STEP_BATCH]
        loss = sft_loss(model, tokenizer, batch)
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

    def e_step_context(
        self,
        ctx: QuizContext,
        *,
        round_: int,
        index: int,
        contexts: Sequence[QuizContext] = (),
        guard: Sequence[tuple[str, str]] = (),
    ) -> tuple[list[Dream], list[float], int]:
        """Quiz, find the weak facts, dream at them, keep top-k + b per fact, reward each by an isolated update."""
        said, rewards = self.quiz(ctx)
        weak = self.weak_facts(ctx, said, rewards)
        dreams = self.curriculum(ctx, weak, round_=round_, index=index)
        if not dreams:
            return [], rewards, len(weak)
        params = self.slot_params()
        for d in dreams:
            d.importance = importance(self.model, self.tokenizer, d, params)
        rng = random.Random(unit_seed(self.spec.seed, round_, index, 1))
        kept = [
            d
            for fact, _ in weak
            for d in select([x for x in dreams if x.fact == fact], k=self.spec.top_k, b=self.spec.random_extra, rng=rng)
        ]
        rows = self.guard_for(ctx, contexts, guard)
        before = (quiz_measure(self.model, self.tokenizer, ctx), mean_logprob(self.model, self.tokenizer, rows))
        for j, d in enumerate(kept):
            d.tau_gain, d.guard_change = isolated_update_gain(
                self.model,
                self.tokenizer,
                d,
                ctx,
                guard=rows,
                before=before,
                spec=self.spec,
                target_modules=self.target_modules,
                seed=unit_seed(self.spec.seed, round_, index, 2 + j),
            )
            d.reward = int(d.tau_gain > 0.0 and d.guard_change >= -self.spec.replay_tolerance)
        return dreams, rewards, len(weak)


def rewarded_rate(dreams: Sequence[Dream]) -> float:
    """Share of kept dreams rewarded 1 (NaN when none was kept)."""
    kept = [d for d in dreams if d.kept]
    return sum(d.reward or 0 for d in kept) / len(kept) if kept else math.nan


# --------------------------------------------------------------------------- #
# The phase
# --------------------------------------------------------------------------- #


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(step: int, total: int, **values: Any) -> None:
    emit_step_progress(Step.DREAMING.value, step, total, **values)  # rank 0's only on N ranks


def _save_state(root: Path, state: DreamState, dreamer: Dreamer, *, unit: int) -> Path:
    """Checkpoint ``unit`` (the progress count): the dreaming slot's weights and the state, together.

    The slot changes in M-steps and the state after every context; one
    checkpoint holds both (:func:`reverie.workloads.store.checkpoint.save_checkpoint`
    switches ``latest`` atomically), so a crash anywhere leaves the previous
    consistent pair in place.
    """
    weights = {k: v.detach() for k, v in slot_parameters(dreamer.model, dreamer.slot).items()}
    return save_checkpoint(
        root, step=unit, slot=dreamer.slot, slot_state=weights, meta={DREAMING_STATE: state.to_json()}
    )


def _load_state(uri: str, dreamer: Dreamer) -> DreamState | None:
    """The state of the newest checkpoint at ``uri`` (local or in the store), its slot weights loaded; None if none."""
    try:
        c = load_checkpoint(uri)
    except CheckpointError:
        return None
    if DREAMING_STATE not in c.meta:
        raise ValueError(
            f"resume_from {uri}: {c.folder} is not a dreaming checkpoint (no {DREAMING_STATE} in state.json)"
        )
    if c.slot != dreamer.slot:
        raise ValueError(f"resume_from {uri}: checkpoint is for slot {c.slot}, this run adds {dreamer.slot}")
    with torch.no_grad():
        for name, p in slot_parameters(dreamer.model, dreamer.slot).items():
            p.copy_(c.slot_state[name].to(p))
    return DreamState.from_json(c.meta[DREAMING_STATE])


def open_dreamer(
    model_uri: str, *, spec: DreamingSpec, target_modules: Sequence[str], teacher: TeacherChoice = TeacherChoice.BASE
) -> tuple[Dreamer, Any]:
    """Load the consolidated generation and add the dreaming slot (B = 0: nothing changes yet).

    The teacher reads memories with the base weights (``teacher: base``) or with
    the slots from before this sleep (``champion``: every slot but the last,
    which is the one consolidation just added).
    """
    gen = load_generation(model_uri)
    torch.manual_seed(spec.seed)
    model, slot = add_slot(gen.model, rank=spec.slot_rank, target_modules=target_modules, keep_active=list(gen.slots))
    model.eval()
    # With backend vllm the HF backend is replaced, round by round, by a vLLM
    # engine on a snapshot of the current weights (Dreamer.sync_backend).
    backend = make_backend("hf", model, gen.tokenizer)
    earlier = list(gen.slots)[:-1]  # the last is the slot consolidation just added
    folded: FoldedSlots | None = None
    if earlier and spec.backend == SamplingBackendKind.HF:  # vLLM reads weights from a folder: nothing to fold
        with contextlib.suppress(TypeError):  # a slot on an embedding stays a separate adapter
            folded = FoldedSlots(model, earlier)
    base_teacher = teacher == TeacherChoice.BASE
    return Dreamer(
        model=model,
        tokenizer=gen.tokenizer,
        backend=backend,
        spec=spec,
        slot=slot,
        target_modules=target_modules,
        teacher=[] if (base_teacher or folded) else earlier,
        folded=folded,
        reading=folded.unfolded if (folded and base_teacher) else contextlib.nullcontext,
    ), gen


def m_step_examples(
    dreamer: Dreamer, state: DreamState, contexts: Sequence[QuizContext], *, r: int, rho: float
) -> list[tuple[str, str]]:
    """Every rewarded dream so far, this round's rewarded writer pairs, and the guard's general answers at share ρ.

    The generator learns only from this round's successes (ReST-EM's E/M
    alternation); the fold keeps every success so far, so a later round does
    not forget what an earlier one taught.
    """
    tok = dreamer.tokenizer
    by_id = {c.id: c for c in contexts}
    rows = [chat_pair(tok, d.prompt, d.text) for d in state.dreams if d.reward]
    rows += [
        (
            question_prompt(tok, d.writer, context=writer_context(d.fact, by_id[d.context_id].subject)),
            d.prompt + tok.eos_token,
        )
        for d in state.dreams
        if d.reward and d.round == r and d.kind == PHRASING and d.context_id in by_id
    ]
    if rows and state.guard and rho > 0:
        n = math.ceil(len(rows) * rho / (1 - rho))
        rows += [chat_pair(tok, *state.guard[i % len(state.guard)]) for i in range(n)]
    return rows


def dream_rounds(
    dreamer: Dreamer,
    contexts: Sequence[QuizContext],
    *,
    ckpt: Path | None,
    state: DreamState,
    rho: float = 0.0,
    stop_after: Callable[[DreamState], bool] | None = None,
    on_checkpoint: Callable[[], object] | None = None,
) -> DreamState:
    """ReST-EM rounds over the contexts, checkpointing after every context and M-step.

    ``on_checkpoint`` runs after each checkpoint is written (to upload it when the store is remote).
    """
    world = distributed.world_from_env()
    spec = dreamer.spec
    rounds = max(1, spec.rest_em_iterations)
    per_round = len(contexts) + 1  # every context's E-step, then the M-step
    total = rounds * per_round
    while state.round < rounds:
        r = state.round
        todo = [(idx, ctx) for idx, ctx in enumerate(contexts) if ctx.id not in state.contexts_done]
        # On N ranks the contexts are dealt in waves of N, one per rank: a context's dreams depend
        # only on its seeds (unit_seed), so they are the same whichever rank dreams them.  Every
        # rank gathers every wave and runs the same M-step; rank 0 writes the checkpoints.
        for wave in (todo[i : i + world.size] for i in range(0, len(todo), world.size)):
            mine = wave[world.rank] if world.rank < len(wave) else None
            out = (
                dreamer.e_step_context(mine[1], round_=r, index=mine[0], contexts=contexts, guard=state.guard)
                if mine
                else None
            )
            for ctx_id, got in distributed.all_gather_objects(world, (mine[1].id if mine else None, out)):
                if ctx_id is not None and got is not None:
                    dreams, rewards, weak = got
                    state.dreams += dreams
                    state.rewards[f"{r}/{ctx_id}"] = rewards
                    state.weak[f"{r}/{ctx_id}"] = weak
                    state.contexts_done.append(ctx_id)
            unit = r * per_round + len(state.contexts_done)
            if ckpt:
                distributed.on_main(world, functools.partial(_save_state, ckpt, state, dreamer, unit=unit))
                if on_checkpoint:
                    distributed.on_main(world, on_checkpoint)
            _progress(
                unit,
                total,
                rewardedRate=_finite(rewarded_rate([d for d in state.dreams if d.round == r])),
                selfQuizReward=_finite(state.round_mean(r)),
                checkpoint=str(ckpt) if ckpt else None,
            )
            if stop_after and stop_after(state):
                return state
        this_round = [d for d in state.dreams if d.round == r]
        rewarded = [d for d in this_round if d.reward]
        if spec.grpo.enabled:
            loss = grpo_step(dreamer, contexts, state, round_=r)
        else:
            loss = m_step(
                dreamer.model,
                dreamer.tokenizer,
                dreamer.slot,
                examples=m_step_examples(dreamer, state, contexts, r=r, rho=rho),
                spec=spec,
                seed=unit_seed(spec.seed, r, 0, 9),
            )
        state.round_stats.append(
            {
                "round": float(r),
                "dreams": float(len(this_round)),
                "kept": float(sum(1 for d in this_round if d.kept)),
                "rewarded": float(len(rewarded)),
                "rewardedRate": rewarded_rate(this_round),
                "selfQuizReward": state.round_mean(r),
                "weakFacts": float(sum(v for k, v in state.weak.items() if k.startswith(f"{r}/"))),
                "mStepLoss": loss,
            }
        )
        state.round += 1
        state.contexts_done = []
        if ckpt:
            distributed.on_main(world, functools.partial(_save_state, ckpt, state, dreamer, unit=(r + 1) * per_round))
            if on_checkpoint:
                distributed.on_main(world, on_checkpoint)
        _progress((r + 1) * per_round, total, mStepLoss=_finite(loss), checkpoint=str(ckpt) if ckpt else None)
        if stop_after and stop_after(state):
            return state
    return state


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def grpo_step(dreamer: Dreamer, contexts: Sequence[QuizContext], state: DreamState, *, round_: int) -> float:
    """Train the dream writer with TRL GRPO on the dream reward (vLLM generation on GPU).

    Prompts are this round's weak facts' writer requests; a completion is a
    question, answered by the teacher with the memory in view and rewarded 1
    when an isolated update on the item raises τ without lowering the guard.
    """
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]

    spec, tok = dreamer.spec, dreamer.tokenizer
    by_id = {c.id: c for c in contexts}
    facts = list(dict.fromkeys((d.context_id, d.fact) for d in state.dreams if d.round == round_ and d.fact))
    if not facts:
        return math.nan
    prompts = [
        question_prompt(
            tok, writer_instructions(by_id[cid].subject)[i % 2][1], context=writer_context(f, by_id[cid].subject)
        )
        for i, (cid, f) in enumerate(facts)
    ]
    ids = [cid for cid, _ in facts]
    guards = {c.id: dreamer.guard_for(c, contexts, state.guard) for c in contexts}
    before = {
        c.id: (quiz_measure(dreamer.model, tok, c), mean_logprob(dreamer.model, tok, guards[c.id])) for c in contexts
    }

    def dream_reward(completions: list[str], context_id: list[str], **_: Any) -> list[float | None]:
        # Isolated inner updates run on the policy model itself with a probe
        # adapter, after TRL's generation and before its loss: the trained
        # slot's weights are the current policy's, which is what τ must see.
        out: list[float | None] = []
        for j, (text, cid) in enumerate(zip(completions, context_id, strict=True)):
            ctx = by_id[cid]
            q = written_question(text, ctx.subject)
            if q is None or not dreamer.allows(q):
                out.append(0.0)
                continue
            with dreamer.reading():
                answer = greedy_answers(
                    dreamer.backend,
                    tok,
                    [q],
                    contexts=[ctx.memory.text],
                    adapters=dreamer.teacher,
                    max_new_tokens=dreamer.answer_tokens,
                )[0]
            if not grounded(answer, ctx.memory.text, subject=ctx.subject):
                out.append(0.0)
                continue
            gain, change = isolated_update_gain(
                dreamer.model,
                tok,
                Dream(context_id=cid, kind=PHRASING, prompt=q, text=answer, round=round_),
                ctx,
                guard=guards[cid],
                before=before[cid],
                spec=spec,
                target_modules=dreamer.target_modules,
                seed=unit_seed(spec.seed, round_, j, 7),
            )
            out.append(float(gain > 0.0 and change >= -spec.replay_tolerance))
        return out

    use_vllm = spec.backend == "vllm"
    n = spec.grpo.num_generations
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="reverie-grpo-"),
        per_device_train_batch_size=n,
        num_generations=n,
        max_completion_length=40,
        temperature=spec.temperature,
        top_p=spec.top_p,
        beta=spec.grpo.beta,
        learning_rate=spec.inner_learning_rate,
        max_steps=max(1, len(prompts)),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        seed=spec.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    freeze_all_but(dreamer.model, dreamer.slot)
    trainer = GRPOTrainer(
        model=dreamer.model,
        reward_funcs=[dream_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts, "context_id": ids}),
        processing_class=tok,
    )
    out = trainer.train()
    dreamer.model.eval()
    return float(out.training_loss)


class Dreaming(Workload):
    """Quiz the consolidated model, dream at its weak facts, keep what helps, learn it (module docstring)."""

    step = Step.DREAMING

    def __init__(self, config: AttemptConfig, *, stop_after: Callable[[DreamState], bool] | None = None) -> None:
        super().__init__(config)
        self.stop_after = stop_after

    def open(self, inputs: StepInputs) -> None:
        cfg, spec = self.config, self.config.dreaming
        source = cfg.inputs.get("consolidation")
        if not source:
            raise ValueError(
                f"dreaming needs inputs['consolidation'] (the consolidated model); got {sorted(cfg.inputs)}"
            )
        self.started = time.monotonic()
        self.inputs, self.spec, self.rho = inputs, spec, cfg.consolidation.replay_ratio
        self.folder = work_dir(cfg)
        self.checkpoint_uri = checkpoint_root(cfg.output_uri)
        self.dreamer, self.gen = open_dreamer(
            source, spec=spec, target_modules=cfg.consolidation.target_modules, teacher=cfg.consolidation.teacher
        )
        self.slot = self.dreamer.slot
        self.dreamer.held_out = inputs.held_out
        self.dreamer.answer_tokens = cfg.consolidation.max_new_tokens
        rehearsal = rehearsed(inputs.memories, inputs.prior, replay_ratio=self.rho, seed=spec.seed)
        self.dreamer.memories = [*inputs.memories, *rehearsal]

    def resume(self) -> None:
        # The previous attempt's checkpoint (resume_from), else one an earlier run of this attempt left.
        self.state: DreamState | None = None
        for candidate in dict.fromkeys(
            [*([self.config.resume_from] if self.config.resume_from else []), self.checkpoint_uri]
        ):
            self.state = _load_state(str(candidate), self.dreamer)
            if self.state is not None:
                _log(
                    f"dreaming: resumed from {candidate} at round {self.state.round}, {len(self.state.contexts_done)} contexts done"
                )
                return

    def quiz(self) -> DreamState:
        """The quiz and the guard's answers, fixed for the whole step (the model before dreaming)."""
        dreamer, quizzed = self.dreamer, self.dreamer.memories
        with dreamer.reading():
            quiz = selfquiz.write_quiz(
                dreamer.backend,
                dreamer.tokenizer,
                quizzed,
                replay_ids=frozenset(m.id for m in quizzed[len(self.inputs.memories) :]),
                teacher=dreamer.teacher,
                questions_per_memory=self.spec.quiz_questions,
                seed=self.spec.seed,
                max_new_tokens=dreamer.answer_tokens,
                keep=dreamer.allows,
            )
        general = list(GENERAL_REPLAY_PROMPTS[:GUARD_GENERAL])
        own = greedy_answers(
            dreamer.backend,
            dreamer.tokenizer,
            general,
            adapters=dreamer.candidate,
            max_new_tokens=dreamer.answer_tokens,
        )
        return DreamState(quiz=quiz, guard=[(p, a) for p, a in zip(general, own, strict=True) if a])

    def work(self) -> None:
        quiz_started = time.monotonic()
        state = self.state or self.quiz()
        self.quiz_seconds = time.monotonic() - quiz_started
        self.contexts = quiz_contexts(self.dreamer.memories, state.quiz)
        if not self.contexts:
            raise ValueError("dreaming could not quiz any memory (no memory names a subject the quiz can ask about)")
        ckpt = self.folder / CHECKPOINTS_FOLDER
        self.state = state = dream_rounds(
            self.dreamer,
            self.contexts,
            ckpt=ckpt,
            state=state,
            rho=self.rho,
            stop_after=self.stop_after,
            on_checkpoint=lambda: stage_out(ckpt, str(self.checkpoint_uri)),
        )
        if state.round < max(1, self.spec.rest_em_iterations):
            raise Stopped("stopped before the last round", checkpoint_uri=str(self.checkpoint_uri))
        self.after = [r for c in self.contexts for r in self.dreamer.quiz(c)[1]]
        if self.dreamer.folded is not None:
            self.dreamer.folded.restore()  # the exact base weights back before anything is saved

    def write(self) -> Written:
        # Same layout as consolidation: the generation in <output>/model, the record of every
        # dream and quiz item beside it, checkpoints kept until the cycle is cleaned up.
        # Every rank holds the same model (same dreams, same M-step); rank 0 alone writes it.
        state, dreamer = self._state(), self.dreamer
        note = {
            "name": dreamer.slot,
            "phase": DREAM_SLOT_NOTE,
            "cycle": self.config.cycle,
            "rewardedDreams": sum(1 for d in state.dreams if d.reward),
        }
        files = {
            "dreams.jsonl": "".join(json.dumps(asdict(d)) + "\n" for d in state.dreams),
            "quiz.jsonl": "".join(json.dumps(q.to_json()) + "\n" for q in state.quiz),
        }
        slots = [*self.gen.slots, dreamer.slot]
        return write_generation(
            self.config,
            dreamer.model,
            dreamer.tokenizer,
            slots=slots,
            ledger=self.gen.ledger,
            slot_note=note,
            files=files,
        )

    def _state(self) -> DreamState:
        assert self.state is not None, "work() ran"
        return self.state

    def metrics(self) -> dict[str, float]:
        state, after = self._state(), self.after
        metrics: dict[str, float] = {
            "contexts": float(len(self.contexts)),
            "quiz_items": float(len(state.quiz)),
            "weak_facts": float(sum(v for k, v in state.weak.items() if k.startswith("0/"))),
            "dreams_generated": float(len(state.dreams)),
            "dreams_kept": float(sum(1 for d in state.dreams if d.kept)),
            "dreams_rewarded": float(sum(1 for d in state.dreams if d.reward)),
            "self_quiz_reward_before": state.round_mean(0),
            "self_quiz_reward_after": sum(after) / len(after) if after else math.nan,
            "quiz_seconds": self.quiz_seconds,
            "wall_seconds": time.monotonic() - self.started,
        }
        for s in state.round_stats:
            metrics[f"rewarded_rate_round_{int(s['round'])}"] = s["rewardedRate"]
        return metrics

    def message(self) -> str:
        m = self.metrics()
        return (
            f"self-quiz {m['self_quiz_reward_before']:.2f} → {m['self_quiz_reward_after']:.2f}; "
            f"{int(m['dreams_rewarded'])} of {int(m['dreams_kept'])} kept dreams rewarded "
            f"at {int(m['weak_facts'])} weak facts; slot {self.dreamer.slot}"
        )


def run(config: AttemptConfig, *, stop_after: Callable[[DreamState], bool] | None = None) -> AttemptResult:
    """The dreaming step: consolidated model in, consolidated model + dreaming slot out.

    ``stop_after`` (tests only) ends the attempt early, as a preemption would,
    after the checkpoint it names has been written.
    """
    return run_workload(Dreaming(config, stop_after=stop_after))
