"""The dreaming phase (paper §2.5, "REM"): the model writes its own curriculum, keeps what helps.

For each task context C — a chunk of this cycle's memories, plus replayed chunks
of earlier generations' memories — and its task measure τ:

1. **Dream.**  The consolidated model generates m dreams with C in view (questions
   and answers, restatements, implications), with a *random extra expert*
   switched on while sampling (the paper's router noise: controlled novelty).
2. **Select.**  Each dream gets a gradient-based importance
   ``g = ‖∇_φ L_SFT(dream)‖₂``: the L2 norm of the gradient of the dream's mean
   token NLL (as closed-book text) with respect to φ, the parameters of the
   dreaming slot that this phase trains (a LoRA slot; at creation its B = 0, so
   in the first round only the B side carries gradient, which is exactly the
   direction the first update would move).  The top-k dreams by g are kept,
   plus b more drawn uniformly from the rest (diversity).
3. **Reward.**  Each kept dream is applied as an *isolated* LoRA update — a fresh
   probe adapter on top of the current model, ``probe_steps`` SFT steps on the
   dream alone — and rewarded 1 if the updated model improves τ, else 0.  The
   probe is then deleted; dreams never see each other's updates.
4. **Learn (ReST-EM).**  E-step = steps 1–3; M-step = SFT of the dreaming slot on
   the rewarded dreams, in two forms: ``(dream prompt with C → dream)``, which
   trains the dream *generator* (the next round dreams better), and the dream
   alone as closed-book text, which folds what the dream taught into the
   weights.  ``rest_em_iterations`` rounds; the output generation is the
   consolidated model plus this slot, written like consolidation writes its own.

The task measure τ is self-derived: cloze questions cut from C's own sentences
(:func:`reverie.workloads.data.questions.cloze_questions`), whose answer is the span
the text states — what the teacher, reading C, answers.  τ(model) is the mean
per-token log-likelihood of those answers given the sentence prefix, closed
book.  A log-likelihood is used rather than exact-match accuracy because a few
SFT steps on one dream rarely flip a greedy answer but do move its probability;
the reward stays SEAL's binary ``1[τ(θ') > τ(θ)]``.  τ questions are never shown
to the dream generator, and the evaluation phase asks the memories' own ``qa``
questions when they have them, so dream selection does not see the test.

With ``grpo.enabled`` the generator is trained by TRL's ``GRPOTrainer`` instead
of the ReST-EM M-step (the variant for verifiable domains): the same binary
dream reward, a group-relative advantage over ``num_generations`` dreams per
context, and vLLM generation on GPU (``use_vllm``) when the backend is vllm.

Checkpoints: after each context's E-step and each M-step the phase writes a
checkpoint in consolidation's format (:mod:`reverie.workloads.store.checkpoint`:
``<output_uri>/checkpoints/step-<n>/``, n the progress count, with the dreaming
slot's weights and, in ``state.json``, the dreams, scores and rewards so far),
staged out to a remote store as it is written; a resumed attempt continues
from there and, because every random draw is seeded by (seed, round, context),
produces what an uninterrupted run would have.
"""

from __future__ import annotations

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

from reverie.api.phases import DreamingSpec
from reverie.api.sleepcycle import Step
from reverie.core.contract import PhaseConfig, PhaseResult, ProgressEvent, emit_progress
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import Memory, load_memories, load_memory_uris, question_prompt
from reverie.workloads.data.questions import Question, cloze_questions, normalize_answer, question_text
from reverie.workloads.ml.lm import sft_loss, target_logprobs

# The three kinds of dream the paper names; prompts rotate through them.
DREAM_INSTRUCTIONS: dict[str, str] = {
    "qa": "Write questions about the text above, each followed by its answer.",
    "restatement": "Restate the text above in your own words.",
    "implications": "List implications of the text above.",
}
DREAM_SLOT_NOTE = "dreaming"
PROBE_ADAPTER = "dream-probe"
TAU_QUESTIONS_PER_CONTEXT = 8
DISTRACTORS_PER_QUESTION = 4
M_STEP_BATCH = 8
CHECKPOINT_DIR = "checkpoints"
DREAMING_STATE = "dreaming"  # the DreamState's key in a checkpoint's state.json


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class TaskContext:
    """One task (C, τ): the context text, the cloze questions that define τ, and their distractors."""

    id: str
    text: str
    tau: tuple[Question, ...]
    distractors: tuple[tuple[str, ...], ...] = ()  # per τ question: answers taken from other contexts
    replay: bool = False


@dataclass
class Dream:
    """One sampled dream and what happened to it."""

    context_id: str
    kind: str
    text: str
    round: int
    importance: float | None = None
    kept: str | None = None  # "topk" | "random" | None (rejected)
    reward: int | None = None
    tau_gain: float | None = None


@dataclass
class DreamState:
    """Everything a resumed attempt needs (written as JSON after every unit of work)."""

    round: int = 0
    contexts_done: list[str] = field(default_factory=list)  # of the current round's E-step
    m_step_done: bool = False
    dreams: list[Dream] = field(default_factory=list)
    round_stats: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "contextsDone": self.contexts_done,
            "mStepDone": self.m_step_done,
            "dreams": [asdict(d) for d in self.dreams],
            "roundStats": self.round_stats,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DreamState:
        return cls(
            round=raw["round"],
            contexts_done=list(raw["contextsDone"]),
            m_step_done=raw["mStepDone"],
            dreams=[Dream(**d) for d in raw["dreams"]],
            round_stats=list(raw["roundStats"]),
        )


def task_contexts(
    memories: Sequence[Memory],
    prior: Sequence[Memory],
    *,
    chunk_documents: int,
    replay_ratio: float,
    seed: int,
    tau_questions: int = TAU_QUESTIONS_PER_CONTEXT,
    distractors: int = DISTRACTORS_PER_QUESTION,
    held_out: HeldOut | None = None,
) -> list[TaskContext]:
    """This cycle's memory chunks, then replayed chunks of earlier memories.

    Replay keeps dreaming from drifting away from what earlier sleeps stored:
    ρ/(1−ρ) replayed chunks per current chunk (ρ = consolidation.replayRatio,
    the same share consolidation rehearses), drawn with a seeded RNG.  Chunks
    without a usable cloze question have no τ and are skipped.  Each τ question
    gets up to ``distractors`` wrong answers: answers of other contexts' questions.
    A τ question that evaluation asks too (a memory without ``qa`` is evaluated
    on its cloze questions) is dropped: ``held_out`` holds the evaluation's probes.
    """

    def chunks(mems: Sequence[Memory], tag: str, replay: bool) -> list[tuple[str, str, tuple[Question, ...], bool]]:
        out = []
        for i in range(0, len(mems), chunk_documents):
            group = mems[i : i + chunk_documents]
            text = "\n\n".join(m.text for m in group)
            cid = f"{tag}{i // chunk_documents}:" + "+".join(m.id for m in group)
            tau = tuple(
                q
                for m in group
                for q in cloze_questions(m.id, m.text, limit=tau_questions)
                if held_out is None or held_out.allows(question_text(q))
            )[:tau_questions]
            if tau:
                out.append((cid, text, tau, replay))
        return out

    picked = chunks(memories, "c", False)
    pool = chunks(prior, "r", True) if prior else []
    if pool and replay_ratio > 0:
        want = min(len(pool), math.ceil(len(picked) * replay_ratio / (1 - replay_ratio)))
        picked += [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), want))]
    # Distractors come from every memory, replayed or not: long-term memory is
    # where the plausible wrong answers live.
    answers = sorted({q.answer for _, _, t, _ in chunks(memories, "c", False) + pool for q in t})
    rng = random.Random(seed + 1)
    out: list[TaskContext] = []
    for cid, text, tau, replay in picked:
        dis = tuple(
            tuple(rng.sample(cands, min(distractors, len(cands))))
            for q in tau
            for cands in [[a for a in answers if normalize_answer(a) != normalize_answer(q.answer)]]
        )
        out.append(TaskContext(id=cid, text=text, tau=tau, distractors=dis, replay=replay))
    return out


def dream_prompt(tokenizer: Any, context: str, kind: str) -> str:
    """The generator's prompt: the context, then the instruction for this kind of dream."""
    return question_prompt(tokenizer, DREAM_INSTRUCTIONS[kind], context=context)


def dream_kinds(m: int, *, offset: int = 0) -> list[str]:
    kinds = list(DREAM_INSTRUCTIONS)
    return [kinds[(offset + i) % len(kinds)] for i in range(m)]


def unit_seed(seed: int, round_: int, context_index: int, stream: int) -> int:
    """One seed per (round, context, stream): a resumed run redraws exactly what it would have drawn."""
    return (seed * 1_000_003 + round_ * 10_007 + context_index * 101 + stream) % (2**31 - 1)


# --------------------------------------------------------------------------- #
# Losses and the task measure (the math, written out)
# --------------------------------------------------------------------------- #


@torch.no_grad()
def answer_logprob(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Log-likelihood (summed over its tokens) of each answer after its prefix (closed book, raw text)."""
    return target_logprobs(model, tokenizer, [(prefix, " " + answer) for prefix, answer in pairs])


def task_measure(model: Any, tokenizer: Any, ctx: TaskContext) -> float:
    """τ: mean over the context's questions of the log-likelihood margin of the true answer.

    margin(q) = ℓ(answer | prefix) − mean_d ℓ(d | prefix), ℓ the log-likelihood
    of the answer's tokens and d the distractors (answers of other memories).  The margin
    measures *binding*: a dream that only teaches the sentence pattern ("X lives
    in <some town>") raises every candidate alike and leaves τ unchanged, while
    a dream that states the right fact raises the answer over the distractors.
    Without distractors (a single context) τ is ℓ(answer | prefix).
    """
    was_training = model.training
    model.eval()
    pairs: list[tuple[str, str]] = []
    owners: list[tuple[int, bool]] = []  # (question index, is the true answer)
    for i, q in enumerate(ctx.tau):
        pairs.append((q.question, q.answer))
        owners.append((i, True))
        for d in ctx.distractors[i] if i < len(ctx.distractors) else ():
            pairs.append((q.question, d))
            owners.append((i, False))
    scores = answer_logprob(model, tokenizer, pairs)
    model.train(was_training)
    margins = []
    for i in range(len(ctx.tau)):
        true = [s for (j, t), s in zip(owners, scores, strict=True) if j == i and t]
        wrong = [s for (j, t), s in zip(owners, scores, strict=True) if j == i and not t]
        margins.append(true[0] - (sum(wrong) / len(wrong) if wrong else 0.0))
    return sum(margins) / len(margins)


def importance(model: Any, tokenizer: Any, text: str, params: Sequence[torch.nn.Parameter]) -> float:
    """g = ‖∇_φ L_SFT(dream)‖₂ over the dreaming slot's parameters φ."""
    for p in params:
        p.grad = None
    loss = sft_loss(model, tokenizer, [("", text)])
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


# --------------------------------------------------------------------------- #
# Isolated inner update and the dreaming slot
# --------------------------------------------------------------------------- #


def _sgd(params: Sequence[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=0.0)


def isolated_update_gain(
    model: Any,
    tokenizer: Any,
    dream: str,
    ctx: TaskContext,
    *,
    tau_before: float,
    spec: DreamingSpec,
    target_modules: Sequence[str],
    seed: int,
) -> float:
    """τ(θ') − τ(θ) after ``probe_steps`` LoRA SFT steps on ``dream`` alone; the probe is then removed."""
    from reverie.workloads.ml.expansion import add_slot
    from reverie.workloads.store.modelio import activate_slots

    active = list(model.base_model.active_adapters)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    torch.manual_seed(seed)  # the probe's A init
    model, _ = add_slot(
        model, rank=spec.probe_rank, target_modules=target_modules, name=PROBE_ADAPTER, keep_active=active
    )
    params = [p for n, p in model.named_parameters() if f".{PROBE_ADAPTER}." in n]
    opt = _sgd(params, spec.inner_learning_rate)
    model.train()
    for _ in range(spec.probe_steps):
        loss = sft_loss(model, tokenizer, [("", dream)])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    model.eval()
    gain = task_measure(model, tokenizer, ctx) - tau_before
    model.delete_adapter(PROBE_ADAPTER)
    activate_slots(model, active)
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, False))
    return gain


def m_step(
    model: Any,
    tokenizer: Any,
    slot: str,
    *,
    generator_pairs: Sequence[tuple[str, str]],
    fold_texts: Sequence[str],
    spec: DreamingSpec,
    seed: int,
) -> float:
    """ReST-EM M-step: SFT the dreaming slot on rewarded dreams; returns the last loss.

    Each rewarded dream appears twice: as the generator's target after its
    prompt (learning to dream better) and as closed-book text (folding what it
    taught into the weights).  Every example is seen ``m_step_epochs`` times, in
    batches of 8, at ``inner_learning_rate``.
    """
    from reverie.workloads.ml.expansion import freeze_all_but

    examples = [*generator_pairs, *(("", t) for t in fold_texts)]
    if not examples:
        return math.nan
    params = freeze_all_but(model, slot)
    opt = _sgd(params, spec.inner_learning_rate)
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
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    model.eval()
    return float(loss.detach())


# --------------------------------------------------------------------------- #
# One round: E-step over the contexts
# --------------------------------------------------------------------------- #


@dataclass
class Dreamer:
    """The model being dreamed with, its tokenizer and backend, and the phase knobs."""

    model: Any
    tokenizer: Any
    backend: Any
    spec: DreamingSpec
    slot: str
    target_modules: Sequence[str]
    backend_round: int = -1
    held_out: HeldOut | None = None  # evaluation probes: a dream that contains one is never trained on

    def slot_params(self) -> list[torch.nn.Parameter]:
        from reverie.workloads.ml.expansion import slot_parameters

        return list(slot_parameters(self.model, self.slot).values())

    def sync_backend(self, round_: int) -> None:
        """vLLM serves folders, not in-memory weights: write the current generation once per round.

        The dreaming slot changes only in M-steps, between rounds, so one engine
        per round samples exactly the model the round's E-step rewards.
        """
        if self.spec.backend != "vllm" or self.backend_round == round_:
            return
        from reverie.workloads.ml.sampling import make_backend
        from reverie.workloads.store.modelio import save_generation

        slots = list(self.model.peft_config)
        folder = save_generation(
            self.model, self.tokenizer, Path(tempfile.mkdtemp(prefix="reverie-dream-")) / "g", slots=slots
        )
        self.backend = make_backend("vllm", self.model, self.tokenizer, folder=folder, slots=slots)
        self.backend_round = round_

    def sample(self, contexts: Sequence[TaskContext], *, round_: int, indices: Sequence[int]) -> list[Dream]:
        """m dreams per context, random extra expert on (one batched call per context, seeded per unit)."""
        self.sync_backend(round_)
        out: list[Dream] = []
        for idx, ctx in zip(indices, contexts, strict=True):
            kinds = dream_kinds(self.spec.dreams_per_context, offset=idx)
            prompts = [dream_prompt(self.tokenizer, ctx.text, k) for k in kinds]
            gen = self.backend.generate(
                prompts,
                max_new_tokens=self.spec.max_new_tokens,
                temperature=self.spec.temperature,
                top_p=self.spec.top_p,
                seed=unit_seed(self.spec.seed, round_, idx, 0),
                noise_scale=self.spec.noise_expert_scale,
            )
            texts = [t if self.held_out is None or self.held_out.allows(t) else "" for t in gen.texts]
            out += [Dream(context_id=ctx.id, kind=k, text=t, round=round_) for k, t in zip(kinds, texts, strict=True)]
        return out

    def e_step_context(self, ctx: TaskContext, *, round_: int, index: int) -> list[Dream]:
        """Dream, score, keep top-k + b random, reward each kept dream by an isolated update."""
        dreams = self.sample([ctx], round_=round_, indices=[index])
        params = self.slot_params()
        for d in dreams:
            d.importance = importance(self.model, self.tokenizer, d.text, params) if d.text.strip() else 0.0
        kept = select(
            dreams,
            k=self.spec.top_k,
            b=self.spec.random_extra,
            rng=random.Random(unit_seed(self.spec.seed, round_, index, 1)),
        )
        tau_before = task_measure(self.model, self.tokenizer, ctx)
        for j, d in enumerate(kept):
            if not d.text.strip():
                d.reward, d.tau_gain = 0, 0.0
                continue
            gain = isolated_update_gain(
                self.model,
                self.tokenizer,
                d.text,
                ctx,
                tau_before=tau_before,
                spec=self.spec,
                target_modules=self.target_modules,
                seed=unit_seed(self.spec.seed, round_, index, 2 + j),
            )
            d.tau_gain = gain
            d.reward = int(gain > 0.0)
        return dreams


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
    emit_progress(
        ProgressEvent(
            phase=Step.DREAMING.value,
            step=step,
            total_steps=total,  # rank 0's only on N ranks
            checkpoint=values.pop("checkpoint", None),
            values=values,
        )
    )


def _save_state(root: Path, state: DreamState, dreamer: Dreamer, *, unit: int) -> Path:
    """Checkpoint ``unit`` (the progress count): the dreaming slot's weights and the state, together.

    The slot changes in M-steps and the state after every context; one
    checkpoint holds both (:func:`reverie.workloads.store.checkpoint.save_checkpoint`
    switches ``latest`` atomically), so a crash anywhere leaves the previous
    consistent pair in place.
    """
    from reverie.workloads.ml.expansion import slot_parameters
    from reverie.workloads.store.checkpoint import save_checkpoint

    weights = {k: v.detach() for k, v in slot_parameters(dreamer.model, dreamer.slot).items()}
    return save_checkpoint(
        root, step=unit, slot=dreamer.slot, slot_state=weights, meta={DREAMING_STATE: state.to_json()}
    )


def _load_state(uri: str, dreamer: Dreamer) -> DreamState | None:
    """The state of the newest checkpoint at ``uri`` (local or in the store), its slot weights loaded; None if none."""
    from reverie.workloads.ml.expansion import slot_parameters
    from reverie.workloads.store.checkpoint import CheckpointError, load_checkpoint

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


def _local_dir(uri: str) -> Path:
    """The local folder for ``uri``: itself, or for a store URI a new working folder (staged out as it fills)."""
    from reverie.workloads.store import store

    if not store.is_remote(uri):
        return store.local_path(uri)
    return store.local_workdir(uri, prefix="reverie-dreaming-")


def open_dreamer(model_uri: str, *, spec: DreamingSpec, target_modules: Sequence[str]) -> tuple[Dreamer, Any]:
    """Load the consolidated generation and add the dreaming slot (B = 0: nothing changes yet)."""
    from reverie.workloads.ml.expansion import add_slot
    from reverie.workloads.ml.sampling import make_backend
    from reverie.workloads.store.modelio import load_generation

    gen = load_generation(model_uri)
    torch.manual_seed(spec.seed)
    model, slot = add_slot(gen.model, rank=spec.slot_rank, target_modules=target_modules, keep_active=list(gen.slots))
    model.eval()
    # With backend vllm the HF backend is replaced, round by round, by a vLLM
    # engine on a snapshot of the current weights (Dreamer.sync_backend).
    backend = make_backend("hf", model, gen.tokenizer)
    return Dreamer(
        model=model, tokenizer=gen.tokenizer, backend=backend, spec=spec, slot=slot, target_modules=target_modules
    ), gen


def dream_rounds(
    dreamer: Dreamer,
    contexts: Sequence[TaskContext],
    *,
    ckpt: Path | None,
    state: DreamState | None = None,
    stop_after: Callable[[DreamState], bool] | None = None,
    on_checkpoint: Callable[[], object] | None = None,
) -> DreamState:
    """ReST-EM rounds over the contexts, checkpointing after every context and M-step.

    ``on_checkpoint`` runs after each checkpoint is written (to upload it when the store is remote).
    """
    from reverie.workloads.ml import distributed

    world = distributed.world_from_env()
    spec = dreamer.spec
    rounds = max(1, spec.rest_em_iterations)
    state = state or DreamState()
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
            dreamt = dreamer.e_step_context(mine[1], round_=r, index=mine[0]) if mine else []
            for ctx_id, dreams in distributed.all_gather_objects(world, (mine[1].id if mine else None, dreamt)):
                if ctx_id is not None:
                    state.dreams += dreams
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
                checkpoint=str(ckpt) if ckpt else None,
            )
            if stop_after and stop_after(state):
                return state
        this_round = [d for d in state.dreams if d.round == r]
        rewarded = [d for d in this_round if d.reward]
        by_id = {c.id: c for c in contexts}
        if spec.grpo.enabled:
            loss = grpo_step(dreamer, contexts, round_=r)
        else:
            # The generator learns only from this round's successes (ReST-EM's E/M
            # alternation); the fold keeps every success so far, so a later round
            # does not forget what an earlier one taught.
            pairs = (
                [
                    (
                        dream_prompt(dreamer.tokenizer, by_id[d.context_id].text, d.kind),
                        d.text + dreamer.tokenizer.eos_token,
                    )
                    for d in rewarded
                ]
                if spec.rest_em_iterations > 0
                else []
            )
            folds = [d.text + dreamer.tokenizer.eos_token for d in state.dreams if d.reward]
            loss = m_step(
                dreamer.model,
                dreamer.tokenizer,
                dreamer.slot,
                generator_pairs=pairs,
                fold_texts=folds,
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


def grpo_step(dreamer: Dreamer, contexts: Sequence[TaskContext], *, round_: int) -> float:
    """Train the generator with TRL GRPO on the binary dream reward (vLLM generation on GPU)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]

    spec, tok = dreamer.spec, dreamer.tokenizer
    by_id = {c.id: c for c in contexts}
    prompts, ids = [], []
    for idx, ctx in enumerate(contexts):
        kind = dream_kinds(1, offset=idx + round_)[0]
        prompts.append(dream_prompt(tok, ctx.text, kind))
        ids.append(ctx.id)
    tau_before = {c.id: task_measure(dreamer.model, tok, c) for c in contexts}

    def dream_reward(completions: list[str], context_id: list[str], **_: Any) -> list[float | None]:
        # Isolated inner updates run on the policy model itself with a probe
        # adapter, after TRL's generation and before its loss: the trained
        # slot's weights are the current policy's, which is what τ must see.
        out: list[float | None] = []
        for j, (text, cid) in enumerate(zip(completions, context_id, strict=True)):
            if not text.strip():
                out.append(0.0)
                continue
            gain = isolated_update_gain(
                dreamer.model,
                tok,
                text,
                by_id[cid],
                tau_before=tau_before[cid],
                spec=spec,
                target_modules=dreamer.target_modules,
                seed=unit_seed(spec.seed, round_, j, 7),
            )
            out.append(float(gain > 0.0))
        return out

    use_vllm = spec.backend == "vllm"
    n = spec.grpo.num_generations
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="reverie-grpo-"),
        per_device_train_batch_size=n,
        num_generations=n,
        max_completion_length=spec.max_new_tokens,
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
    from reverie.workloads.ml.expansion import freeze_all_but

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


def run(config: PhaseConfig, *, stop_after: Callable[[DreamState], bool] | None = None) -> PhaseResult:
    """The dreaming phase: consolidated model in, consolidated model + dreaming slot out.

    ``stop_after`` (tests only) ends the attempt early, as a preemption would,
    after the checkpoint it names has been written.
    """
    from reverie.workloads.store import objects
    from reverie.workloads.store.modelio import content_hash, save_generation, stage_out

    spec = config.dreaming
    source = config.inputs.get("consolidation")
    if not source:
        raise ValueError(
            f"dreaming needs inputs['consolidation'] (the consolidated model); got {sorted(config.inputs)}"
        )
    t0 = time.monotonic()
    out_dir = _local_dir(config.output_uri)
    ckpt = out_dir / CHECKPOINT_DIR
    remote_ckpt = f"{config.output_uri.rstrip('/')}/{CHECKPOINT_DIR}"
    memories = load_memories(config.memory, store_uri=config.store_uri)
    prior = load_memory_uris(config.prior_memory_uris, store_uri=config.store_uri)
    held_out = HeldOut.of([*memories, *prior], questions_per_memory=config.evaluation.questions_per_memory)
    contexts = task_contexts(
        memories,
        prior,
        chunk_documents=config.memory.chunk_documents,
        replay_ratio=config.consolidation.replay_ratio,
        seed=spec.seed,
        held_out=held_out,
    )
    if not contexts:
        raise ValueError("dreaming found no task context with a usable question (every memory is too short)")
    dreamer, gen = open_dreamer(source, spec=spec, target_modules=config.consolidation.target_modules)
    dreamer.held_out = held_out
    state = None
    # The previous attempt's checkpoint (resume_from), else one an earlier run of this attempt left.
    for candidate in dict.fromkeys([*([config.resume_from] if config.resume_from else []), remote_ckpt]):
        state = _load_state(candidate, dreamer)
        if state is not None:
            _log(f"dreaming: resumed from {candidate} at round {state.round}, {len(state.contexts_done)} contexts done")
            break
    tau_before = (
        sum(task_measure(gen.model, dreamer.tokenizer, c) for c in contexts) / len(contexts) if state is None else None
    )
    state = dream_rounds(
        dreamer,
        contexts,
        ckpt=ckpt,
        state=state,
        stop_after=stop_after,
        on_checkpoint=lambda: stage_out(ckpt, remote_ckpt),
    )
    if state.round < max(1, spec.rest_em_iterations):
        return PhaseResult(
            step=Step.DREAMING, status="Failed", message="stopped before the last round", checkpoint_uri=remote_ckpt
        )
    tau_after = sum(task_measure(dreamer.model, dreamer.tokenizer, c) for c in contexts) / len(contexts)
    ledger = dict(gen.ledger)
    notes = {
        "name": dreamer.slot,
        "phase": DREAM_SLOT_NOTE,
        "cycle": config.cycle,
        "rewardedDreams": sum(1 for d in state.dreams if d.reward),
    }
    ledger["slots"] = [*ledger.get("slots", []), notes]
    # Same layout as consolidation: the generation in <output>/model, the record
    # of every dream beside it, checkpoints kept until the cycle is cleaned up.
    from reverie.workloads.ml import distributed

    def write_generation() -> tuple[str, str]:
        model_uri = f"{config.output_uri.rstrip('/')}/model"
        # Thin, as consolidation's: the lineage's object area already holds the base and earlier slots.
        folder = save_generation(
            dreamer.model,
            dreamer.tokenizer,
            model_uri,
            slots=[*gen.slots, dreamer.slot],
            ledger=ledger,
            objects_uri=objects.area(config.store_uri, config.lineage),
        )
        (out_dir / "dreams.jsonl").write_text("".join(json.dumps(asdict(d)) + "\n" for d in state.dreams))
        stage_out(out_dir / "dreams.jsonl", f"{config.output_uri.rstrip('/')}/dreams.jsonl")
        return model_uri, content_hash(folder)

    # Every rank holds the same model (same dreams, same M-step); rank 0 alone writes it.
    model_uri, digest = distributed.on_main(distributed.world_from_env(), write_generation)
    metrics: dict[str, float] = {
        "contexts": float(len(contexts)),
        "dreams_generated": float(len(state.dreams)),
        "dreams_kept": float(sum(1 for d in state.dreams if d.kept)),
        "dreams_rewarded": float(sum(1 for d in state.dreams if d.reward)),
        "tau_after": tau_after,
        "wall_seconds": time.monotonic() - t0,
    }
    if tau_before is not None:
        metrics["tau_before"] = tau_before
    for s in state.round_stats:
        if math.isfinite(s["rewardedRate"]):
            metrics[f"rewarded_rate_round_{int(s['round'])}"] = s["rewardedRate"]
    return PhaseResult(
        step=Step.DREAMING,
        status="Succeeded",
        message=f"{int(metrics['dreams_rewarded'])} of {int(metrics['dreams_kept'])} kept dreams rewarded "
        f"over {len(state.round_stats)} round(s); slot {dreamer.slot}",
        metrics=metrics,
        output_uri=model_uri,
        content_hash=digest,
        slot=dreamer.slot,
    )
