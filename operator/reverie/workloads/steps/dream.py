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
   the dream alone (``probe: update``), or that update to first order from the
   dream's gradient (``probe: gradient``, the default: r = 0.96 with the update
   on SmolLM2-135M, a fraction of its time) — and rewarded 1 when it raises τ, the mean per-token
   log-likelihood of the teacher's answers to this memory's quiz questions
   (held in: the quiz, never evaluation), *and* does not lower the guard — the
   model's own answers to general prompts and the other memories' recitals —
   by more than ``replayTolerance`` nats per token.  Dreams never see each
   other's updates.
5. **Learn (ReST-EM).**  E-step = 1–4; M-step = SFT of the dreaming slot on every
   rewarded dream so far, on the generator pairs of this round's rewarded
   phrasings (the writer prompt → the question: the next round dreams better),
   with the general replay prompts (``consolidation.replay.generalPrompts``) at
   share ρ held to the root by forward KL over the whole vocabulary on the
   root's answers (SFT on general answers cost perplexity +98 % in one M-step
   on SmolLM2-135M; the KL gave −5 %, bench/science/LOG.md).  With
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
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from reverie.api.sleepcycle import Step
from reverie.api.steps import DreamingSpec, SamplingBackendKind, TeacherChoice
from reverie.core.contract import CHECKPOINTS_FOLDER, AttemptConfig, AttemptResult, checkpoint_root, emit_step_progress
from reverie.workloads.data.memory import question_prompt
from reverie.workloads.ml import distributed
from reverie.workloads.ml.ask import greedy_answers
from reverie.workloads.ml.expansion import FoldedSlots, add_slot, freeze_all_but, slot_parameters
from reverie.workloads.ml.sampling import make_backend
from reverie.workloads.steps import selfquiz
from reverie.workloads.steps.dreamer import (
    DREAM_SLOT_NOTE,
    DREAMING_STATE,
    GUARD_GENERAL,
    PHRASING,
    Dream,
    Dreamer,
    DreamState,
    QuizContext,
    chat_pair,
    m_step,
    quiz_contexts,
    rehearsed,
    rewarded_rate,
    unit_seed,
    writer_context,
)
from reverie.workloads.steps.selfstudy import (
    GENERAL_REPLAY_PROMPTS,
    grounded,
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
from reverie.workloads.store.modelio import load_generation, stage_out

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
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What the M-step learns and what it keeps: (SFT rows, general rows held to the root at share ρ).

    SFT rows: every rewarded dream so far and this round's rewarded writer pairs.
    The generator learns only from this round's successes (ReST-EM's E/M
    alternation); the fold keeps every success so far, so a later round does
    not forget what an earlier one taught.  General rows: the general replay
    prompts with the root's answers (``state.anchors``), cycled to a share ρ of
    the whole, trained by forward KL to the root (:func:`~reverie.workloads.steps.dreamer.m_step`).
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
    anchors: list[tuple[str, str]] = []
    if rows and state.anchors and rho > 0:
        n = math.ceil(len(rows) * rho / (1 - rho))
        anchors = [chat_pair(tok, *state.anchors[i % len(state.anchors)]) for i in range(n)]
    return rows, anchors


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
        m_started = time.monotonic()
        if spec.grpo.enabled:
            loss = grpo_step(dreamer, contexts, state, round_=r)
        else:
            examples, anchors = m_step_examples(dreamer, state, contexts, r=r, rho=rho)
            loss = m_step(
                dreamer.model,
                dreamer.tokenizer,
                dreamer.slot,
                examples=examples,
                anchors=anchors,
                root=dreamer.root,
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
                "mStepSeconds": time.monotonic() - m_started,
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
    when an isolated update on the item (``probe``) raises τ without lowering the guard.
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

    def dream_reward(completions: list[str], context_id: list[str], **_: Any) -> list[float | None]:
        # Rewards (Dreamer.reward: an isolated update with a probe adapter, or its first-order
        # estimate) are taken on the policy model itself, after TRL's generation and before its
        # loss: the trained slot's weights are the current policy's, before and after, which is
        # what τ must see.
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
            dream = Dream(context_id=cid, kind=PHRASING, prompt=q, text=answer, round=round_)
            dreamer.reward(ctx, [dream], guard=guards[cid], seeds=[unit_seed(spec.seed, round_, j, 7)])
            out.append(float(dream.reward or 0))
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
        # The general replay the M-step holds to the root: the prompts consolidation replays, the root's answers.
        replayed = list(GENERAL_REPLAY_PROMPTS[: self.config.consolidation.replay.general_prompts])
        with dreamer.root():
            roots = greedy_answers(
                dreamer.backend, dreamer.tokenizer, replayed, adapters=None, max_new_tokens=dreamer.answer_tokens
            )
        return DreamState(
            quiz=quiz,
            guard=[(p, a) for p, a in zip(general, own, strict=True) if a],
            anchors=[(p, a) for p, a in zip(replayed, roots, strict=True) if a],
        )

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
            "m_step_seconds": sum(s.get("mStepSeconds", math.nan) for s in state.round_stats),
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
