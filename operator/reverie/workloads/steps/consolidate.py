"""Consolidation: Knowledge Seeding moves in-context memories into a new expert slot (paper §2.4).

The teacher is the model *before* expansion (base + earlier slots) **with** a
memory in its context: the smaller self holding privileged information.  The
student is the expanded model (same weights + the new slot) **without** it.
Only the new slot is trained.  By default (``teacher: base``) the memory is read
by the lineage's root weights (no slot; the earlier slots, folded into the
weights for the sleep, are taken out for that pass by ``FoldedSlots.unfolded``):
a reader that does not decay as the lineage ages; ``teacher: champion`` reads
with the model before this sleep.  On a lineage's first sleep the two are one.
Two stages:

1. **Off-policy distillation on self-study (λ = 0).**  The teacher writes the
   curriculum D itself (:mod:`reverie.workloads.steps.selfstudy`): prompts of several
   seed kinds about each memory, answered greedily with the memory in view and
   kept only when grounded in it.  Its top-k log-probs on every answer token are
   cached once.  The loss is the forward-KL end of the generalized JSD over that
   top-k, plus cross-entropy on the answer tokens:

       L_distill = mean_t Σ_{v ∈ topk_T(t)} p_T(v) · (log p_T(v) − log p_S(v))      (topk_forward_kl)
                 + w_ce · mean_t − log p_S(y_t)                                       (answer_cross_entropy)

   Forward KL pushes the student by (q − p) straight towards the teacher's
   token, so a fact the student gives ≈ 0 probability can rise; reverse KL and
   on-policy samples cannot (../shared/research/knowledge-injection.md).

2. **On-policy Knowledge Seeding (optional, ``on_policy_steps``)** once the
   student already agrees with the teacher (``on_policy_threshold``):

       L_KS = α · L_JSD + (1 − α) · L_LTI                       (knowledge_seeding_loss)
       L_JSD = mean over completion tokens of JSD_β(p_T ‖ p_S) on sequences the
               student sampled (share λ) or the teacher answered (1 − λ)  (generalized_jsd)
       L_LTI = − mean_i (r_i − mean_group r) · log p_S(ŷ_i | x, d_<c),  ŷ_i completing
               a random prefix of a teacher answer d; r = γ·r_sem + (1 − γ)·r_abs,
               r_abs = 1 − z/max(|ŷ|, |d|) if that ≤ z₀ else 0 (Levenshtein)
                                                                 (imitation_reward, imitation_loss)

In both stages a share ρ of every batch *replays* long-term knowledge: general
requests and earlier sleeps' self-study prompts, with the model before this
sleep (no memory) as the teacher, so the new slot keeps what the model knew.
By default (``replay.anchorGeneral``) the general requests go to the memory
teacher's weights instead (with ``teacher: base``, the lineage's root), so drift
on general text does not carry over from sleep to sleep.

The memories' ``qa`` pairs are evaluation probes: nothing here reads them
(:mod:`reverie.workloads.data.heldout` drops any prompt that contains one).

Why a hand-written loop and not a TRL trainer: the teacher sees a privileged
prompt per row and its targets are cached top-k log-probs; TRL's
``GKDTrainer``/``DistillationTrainer`` give teacher and student the same input,
and ``SDFTTrainer`` takes its top-k over the student's support (it is our
benchmark baseline).  The loop is those few lines, with the same generation
backend interface as dreaming (HF on CPU, vLLM on GPU) and DeepSpeed ZeRO
through :mod:`reverie.workloads.ml.deepspeed_config`.

The fast-weight stand-in (``Roles.memory_teacher``): tests on a model too small
to read its context put the memories in a *fast-weight* adapter instead, which
the teacher has and the student lacks; the teacher prompt then equals the
student prompt.  The algorithm is unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from reverie.api.sleepcycle import Step
from reverie.api.steps import ConsolidationSpec, TeacherChoice, ZeroStage
from reverie.core.contract import (
    CHECKPOINTS_FOLDER,
    CONSOLIDATED_MEMORIES,
    AttemptConfig,
    AttemptResult,
    ProgressEvent,
    checkpoint_root,
    emit_progress,
)
from reverie.workloads.data.memory import Memory, question_prompt
from reverie.workloads.data.questions import answer_matches
from reverie.workloads.ml import distributed
from reverie.workloads.ml.ask import greedy_answers
from reverie.workloads.ml.distributed import World
from reverie.workloads.ml.expansion import FoldedSlots, add_slot, slot_parameters
from reverie.workloads.ml.losses import token_f1
from reverie.workloads.ml.precision import compute_scope, weights_dtype
from reverie.workloads.ml.sampling import HFBackend, SamplingBackend, make_backend
from reverie.workloads.ml.trainer import TorchTrainer, Trainer
from reverie.workloads.steps.knowledge_seeding import (
    KnowledgeSeeding,
    KSState,
    LoopKnobs,
    Roles,
    SelfStudyDistillation,
    StepStats,
    study_cues,
    total_steps,
)
from reverie.workloads.steps.selfstudy import STUDY_DIR, StudyItem, fact_coverage
from reverie.workloads.steps.skeleton import StepInputs, Workload, Written, run_workload, work_dir, write_generation
from reverie.workloads.steps.study_set import StudyContext, StudySet, open_study
from reverie.workloads.store import checkpoint as ckpt
from reverie.workloads.store import store
from reverie.workloads.store.modelio import GenerationError, activate_slots, load_generation, stage_out

# ----------------------------------------------------------------------------- measurement


def closed_book_recall(
    backend: SamplingBackend,
    tokenizer: Any,
    qa: Sequence[tuple[str, str]],
    *,
    adapters: Sequence[str] | None = None,
    contexts: Sequence[str | None] | None = None,
    max_new_tokens: int = 16,
) -> float:
    """Share of questions answered (greedy, the evaluation's matcher); with ``contexts`` the in-context score."""
    if not qa:
        return float("nan")
    said = greedy_answers(
        backend, tokenizer, [q for q, _ in qa], contexts=contexts, adapters=adapters, max_new_tokens=max_new_tokens
    )
    return sum(answer_matches(o, a) for o, (_, a) in zip(said, qa, strict=True)) / len(qa)


def teacher_agreement(
    backend: SamplingBackend,
    tokenizer: Any,
    items: Sequence[StudyItem],
    *,
    adapters: Sequence[str],
    max_new_tokens: int,
    limit: int = 32,
) -> float:
    """Mean token F1 between the student's closed-book answers and the teacher's, on study items (held in)."""
    sample = [i for i in items if not i.replay][:limit]
    if not sample:
        return float("nan")
    out = backend.generate(
        [question_prompt(tokenizer, i.prompt) for i in sample],
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        adapters=adapters,
    )
    return sum(token_f1(o, i.answer) for o, i in zip(out.texts, sample, strict=True)) / len(sample)


def memory_qa(memories: Sequence[Memory], *, limit: int = 24) -> tuple[list[tuple[str, str]], list[str]]:
    """Up to ``limit`` (question, answer) probes spread evenly over the memories' ``qa``, with each one's memory
    text (scoring only).  A quick check of the phase's own effect; the evaluation phase asks every probe."""
    pairs, contexts = [], []
    for m in memories:
        for qa in m.qa:
            pairs.append((qa.q, qa.a))
            contexts.append(m.text)
    if limit <= 0:
        return [], []
    if len(pairs) <= limit:
        return pairs, contexts
    keep = [round(n * len(pairs) / limit) for n in range(limit)]
    return [pairs[k] for k in keep], [contexts[k] for k in keep]


# ----------------------------------------------------------------------------- the step


class ConsolidationError(ValueError):
    """Bad configuration or unreadable inputs: the step fails without touching the base generation."""


KNOBS = LoopKnobs()
COVERAGE_BINS = 4  # the coverage histogram: facts carried by 0, 1, 2, 3 and 4-or-more items


def _emit(event: ProgressEvent) -> None:
    emit_progress(replace(event, phase=Step.CONSOLIDATION.value))  # rank 0's only on N ranks


def check_spec(spec: ConsolidationSpec, world: World) -> None:
    """Settings that only fail against the launched world: named with their fix."""
    if world.size > spec.batch_size:
        raise ConsolidationError(
            f"consolidation.batchSize {spec.batch_size} is smaller than the {world.size} processes; "
            "every process needs at least one sequence per step (raise batchSize or lower procsPerNode/numNodes)"
        )
    if ZeroStage(spec.zero_stage) == ZeroStage.THREE and world.distributed and spec.on_policy_steps > 0:
        raise ConsolidationError(
            "consolidation.onPolicySteps with zeroStage 3 on more than one process is not supported yet "
            "(its per-rank sampling would leave the ZeRO-3 forwards out of lockstep); use zeroStage 0 or 2"
        )


def make_trainer(spec: ConsolidationSpec, model: Any, params: dict[str, torch.nn.Parameter], world: World) -> Trainer:
    """The one optimiser step, as this world runs it: plain torch, DDP, or a DeepSpeed ZeRO engine."""
    zero = ZeroStage(spec.zero_stage)
    if zero == ZeroStage.NONE:
        if world.distributed:
            return distributed.DDPTrainer(
                model, list(params.values()), world=world, lr=spec.learning_rate, max_grad_norm=KNOBS.max_grad_norm
            )
        return TorchTrainer(list(params.values()), lr=spec.learning_rate, max_grad_norm=KNOBS.max_grad_norm)
    # DeepSpeed is an optional dependency (the GPU image): imported only when a ZeRO stage is asked for.
    from reverie.workloads.ml.deepspeed_config import DeepSpeedTrainer, zero_config

    trainer = DeepSpeedTrainer(
        model, list(params.values()), lr=spec.learning_rate, config=zero_config(spec, world_size=world.size)
    )
    if zero == ZeroStage.THREE:
        distributed.assert_partitioned(model, world)
        shares = distributed.all_gather_objects(world, distributed.partitioned_share(model))
        held = [h for h, _ in shares]
        _emit(ProgressEvent("zero3", values={"ranks": world.size, "held": held, "total": shares[0][1]}))
    return trainer


def study_report(study: StudySet, memories: Sequence[Memory]) -> dict[str, float]:
    """Kept (and, in the attempt that built the set, asked) items per kind; how many items carry each fact."""
    own = [i for i in study.items if not i.replay]
    out = {f"selfstudy_kept_{k}": float(n) for k, n in sorted(Counter(i.kind for i in own).items())}
    out |= {f"selfstudy_asked_{k}": float(n) for k, n in sorted(study.asked.items())}
    per_fact = fact_coverage(own, memories)
    out["facts"] = float(len(per_fact))
    for n in range(COVERAGE_BINS):
        out[f"facts_carried_by_{n}"] = float(sum(c == n for c in per_fact))
    out[f"facts_carried_by_{COVERAGE_BINS}_or_more"] = float(sum(c >= COVERAGE_BINS for c in per_fact))
    return out


class Consolidation(Workload):
    """Expand with a new slot, self-study, Knowledge-Seed, save the new generation (module docstring)."""

    step = Step.CONSOLIDATION

    def open(self, inputs: StepInputs) -> None:
        cfg, spec = self.config, self.config.consolidation
        self.spec, self.inputs = spec, inputs
        torch.manual_seed(spec.seed)  # the same seed on every rank: the new slot starts identical everywhere
        self.world = distributed.init_world()
        check_spec(spec, self.world)
        self.device = distributed.device_of(self.world)
        try:
            self.gen = load_generation(cfg.base_uri, dtype=weights_dtype(spec.precision, self.device))
        except GenerationError as exc:
            raise ConsolidationError(f"base generation: {exc}") from exc
        self.earlier = list(self.gen.slots)
        self.model, self.slot = add_slot(
            self.gen.model, rank=spec.expert_rank, target_modules=spec.target_modules, keep_active=self.earlier
        )
        self.params = slot_parameters(self.model, self.slot)
        self.model.to(self.device)
        self.folder = work_dir(cfg)
        self.checkpoint_uri = checkpoint_root(cfg.output_uri)

    def resume(self) -> None:
        # Before the engine exists: ZeRO-3 then partitions the loaded weights. A checkpoint
        # holds the whole slot, so the attempt may run on another number of processes.
        self.state, resumed = KSState(), None
        if self.config.resume_from:
            try:
                resumed = ckpt.load_checkpoint(self.config.resume_from)
                ckpt.restore_slot(resumed, self.params, slot=str(self.slot), uri=self.config.resume_from)
            except ckpt.CheckpointError as exc:
                raise ConsolidationError(str(exc)) from exc
            self.state = KSState(step=resumed.step, history=list(resumed.meta.get("history", [])))
        self.trainer = make_trainer(self.spec, self.model, self.params, self.world)
        if resumed is not None:
            if resumed.optimizer_state is not None and hasattr(self.trainer, "load_state_dict"):
                self.trainer.load_state_dict(resumed.optimizer_state)
            _emit(
                ProgressEvent(
                    "resumed", step=resumed.step, checkpoint=str(resumed.folder), values={"ranks": self.world.size}
                )
            )
        self.first_step = self.state.step
        self._window: list[StepStats] = []

    def forwards(self) -> Any:
        return distributed.local_forwards(self.trainer)

    def open_engines(self) -> None:
        """Sampling backends and the roles: who is student, teacher and memory reader on the one model."""
        model, tok, spec = self.model, self.gen.tokenizer, self.spec
        self.local_backend = HFBackend(model, tok)
        # Generation split across ranks (greedy) or run whole on each (sampled: the same samples as one process).
        self.backend = distributed.ShardedSampling(
            self.local_backend, self.world, sampling="replicate", forwards=self.forwards
        )
        self.teacher_backend: SamplingBackend | None = None
        if os.environ.get("REVERIE_TEACHER_BACKEND", "hf") == "vllm" and self.gen.folder is not None:
            self.teacher_backend = make_backend("vllm", model, tok, folder=self.gen.folder, slots=self.earlier)
        # Earlier slots are frozen for the whole sleep: fold them into the base weights so every
        # forward runs one slot, not all of them (restored exactly before the generation is saved).
        self.folded: FoldedSlots | None = None
        if self.earlier and ZeroStage(spec.zero_stage) == ZeroStage.NONE:
            with contextlib.suppress(TypeError):  # a slot on an embedding stays a separate adapter
                self.folded = FoldedSlots(model, self.earlier)
        base_teacher = spec.teacher == TeacherChoice.BASE
        before_sleep = [] if self.folded else self.earlier  # the adapters that make the model before this sleep
        self.roles = Roles(
            student=[*before_sleep, str(self.slot)],
            teacher=before_sleep,
            memory_teacher=[] if base_teacher else before_sleep,
            reading=self.folded.unfolded if (self.folded and base_teacher) else contextlib.nullcontext,
            anchor_general=spec.replay.anchor_general,
        )

    def open_study(self) -> StudySet:
        """The self-study set: computed once per cycle, reused by every later attempt."""
        ctx = StudyContext(
            model=self.model,
            tokenizer=self.gen.tokenizer,
            backend=self.teacher_backend or self.backend,
            roles=self.roles,
            spec=self.spec,
            world=self.world,
            forwards=self.forwards,
            memories=self.inputs.memories,
            held_out=self.inputs.held_out,
            prior_memory_uris=self.config.prior_memory_uris,
            store_uri=self.config.store_uri,
        )
        study = open_study(ctx, folder=self.folder / STUDY_DIR, uri=store.join(self.config.output_uri, STUDY_DIR))
        replayed = sum(i.replay for i in study.items)
        values = {"items": len(study.items), "replay": replayed, "replay_earlier": len(study.choice.items)}
        _emit(
            ProgressEvent(
                "selfstudy",
                values={**values, **({"reused": True} if study.reused else {}), "seconds": round(study.seconds, 1)},
            )
        )
        if study.memory_items == 0:
            raise ConsolidationError(
                "self-study kept no item: the teacher's answers were not grounded in any memory "
                "(memories need a named subject, e.g. a person or product, for the teacher to write about)",
            )
        return study

    def work(self) -> None:
        with compute_scope(self.spec.precision, self.device):
            self.study_and_train()
        if self.folded is not None:
            self.folded.restore()
            activate_slots(self.model, [*self.earlier, str(self.slot)])

    def study_and_train(self) -> None:
        """Self-study, the recall probes, stage 1, the on-policy stage, the probes again."""
        self.open_engines()
        self.study = self.open_study()
        tok, spec = self.gen.tokenizer, self.spec
        stage1 = SelfStudyDistillation(
            self.model,
            tok,
            items=self.study.items,
            targets=self.study.targets,
            student=self.roles.student,
            spec=spec,
            trainer=self.trainer,
            world=self.world,
        )
        qa, contexts = memory_qa(self.inputs.memories, limit=spec.recall_probes)
        teacher = self.roles.teacher
        self.recall_before = closed_book_recall(self.backend, tok, qa, adapters=teacher) if qa else math.nan
        self.recall_in_context = (
            closed_book_recall(self.backend, tok, qa, adapters=teacher, contexts=contexts) if qa else math.nan
        )
        values = {"slot": self.slot, "memories": len(self.inputs.memories), "items": len(self.study.items)}
        _emit(ProgressEvent("start", total_steps=total_steps(spec), values={**values, "resume_step": self.state.step}))
        started = time.perf_counter()
        stage1.run(self.state, on_step=self.on_step, until=spec.steps)
        self.on_policy_stage()
        self.seconds = time.perf_counter() - started
        self.model.eval()
        self.recall_after = closed_book_recall(self.backend, tok, qa, adapters=self.roles.student) if qa else math.nan

    def on_policy_stage(self) -> None:
        """Stage 2, when configured and the student already agrees with the teacher."""
        spec, tok, items = self.spec, self.gen.tokenizer, self.study.items
        # The agreement only decides whether the on-policy stage runs: not measured when none is configured.
        self.agreement, self.on_policy_ran = math.nan, 0.0
        if spec.on_policy_steps <= 0:
            return
        self.agreement = teacher_agreement(
            self.backend, tok, items, adapters=self.roles.student, max_new_tokens=spec.max_new_tokens
        )
        if self.agreement < spec.on_policy_threshold:
            return
        mem_cues, rep_cues = study_cues(items, tok, {m.id: m for m in self.inputs.memories}, reads=self.roles.reads)
        # Student samples are each rank's own (its share of the cues); teacher answers cover the whole batch.
        ks = KnowledgeSeeding(
            self.model,
            tok,
            self.local_backend,
            roles=self.roles,
            spec=spec,
            memory=mem_cues,
            replay=rep_cues,
            trainer=self.trainer,
            knobs=KNOBS,
            teacher_backend=self.teacher_backend or self.backend,
            world=self.world,
        )
        ks.prefetch_teacher_answers()
        ks.run(self.state, on_step=self.on_step, until=total_steps(spec))
        self.on_policy_ran = 1.0

    def on_step(self, stats: StepStats, st: KSState) -> None:
        """A progress line every ``log_every`` steps; a checkpoint every ``checkpointEvery``."""
        self._window.append(stats)
        total = total_steps(self.spec)
        if st.step % KNOBS.log_every == 0 or st.step == total:
            secs = sum(w.seconds for w in self._window)
            rate = sum(w.tokens for w in self._window) / max(secs, 1e-9)
            losses = {k: round(getattr(stats, k), 6) for k in ("loss", "distill", "ce", "imitation")}
            values = {**losses, "reward": round(stats.reward, 4), "tokens_per_s": round(rate, 1)}
            _emit(ProgressEvent(step=st.step, total_steps=total, values=values))
            self._window = []
        if st.step % self.spec.checkpoint_every == 0 and st.step < total:
            self.save_checkpoint(st)

    def save_checkpoint(self, st: KSState) -> None:
        opt = self.trainer.state_dict() if hasattr(self.trainer, "state_dict") else None
        # Every rank takes part in the gather (ZeRO-3 shards); rank 0 alone writes.
        slot_state = distributed.gathered_state(self.params)
        root = self.folder / CHECKPOINTS_FOLDER

        def write_checkpoint() -> Path:
            meta = {"seed": self.spec.seed, "history": st.history, "ranks": self.world.size}
            folder = ckpt.save_checkpoint(
                root, step=st.step, slot=str(self.slot), slot_state=slot_state, optimizer_state=opt, meta=meta
            )
            if store.is_remote(self.config.output_uri):
                stage_out(root, str(self.checkpoint_uri))
            return folder

        folder = distributed.on_main(self.world, write_checkpoint)
        _emit(ProgressEvent("checkpoint", step=st.step, checkpoint=str(folder)))

    def write(self) -> Written:
        cfg, memories = self.config, self.inputs.memories
        note = {
            "name": self.slot,
            "cycle": cfg.cycle,
            "lineage": cfg.lineage,
            "parent": cfg.base_generation,
            "memories": [m.id for m in memories][:256],
            "rank": self.spec.expert_rank,
        }
        # Kept beside the model: later cycles replay this sleep's self-study prompts and score
        # retention on its memories (AttemptConfig.prior_memory_uris).
        learned = "".join(json.dumps(m.to_json()) + "\n" for m in memories)
        # ZeRO-3: every rank gathers the whole model (not the empty shards) before rank 0 saves it.
        with self.forwards():
            return write_generation(
                cfg,
                self.model,
                self.gen.tokenizer,
                slots=[*self.earlier, str(self.slot)],
                ledger=self.gen.ledger,
                slot_note=note,
                files={CONSOLIDATED_MEMORIES: learned},
            )

    def metrics(self) -> dict[str, float]:
        history, study = self.state.history, self.study
        tail = history[-max(1, len(history) // 10) :]

        def tail_mean(key: str) -> float:
            return sum(h.get(key, 0.0) for h in tail) / len(tail) if tail else math.nan

        tokens, secs = sum(h["tokens"] for h in history), sum(h["seconds"] for h in history)
        return {
            "consolidation_loss": tail_mean("loss"),
            "distill_loss": tail_mean("distill"),
            "answer_ce": tail_mean("ce"),
            "imitation_loss": tail_mean("imitation"),
            "imitation_reward": tail_mean("reward"),
            "steps": float(self.state.step),
            "steps_this_attempt": float(self.state.step - self.first_step),
            "seconds": self.seconds,
            "selfstudy_seconds": study.seconds,
            "selfstudy_items": float(study.memory_items),
            "replay_items": float(len(study.items) - study.memory_items),
            "replay_earlier_items": float(len(study.choice.items)),
            "replay_bytes": float(study.replay_bytes),
            "replay_probe_seconds": study.probe_seconds,
            "teacher_items": float(study.teacher_items),
            "teacher_agreement": self.agreement,
            "on_policy_stage": self.on_policy_ran,
            "tokens_per_s": tokens / max(secs, 1e-9),
            "memories": float(len(self.inputs.memories)),
            "memory_recall_before": self.recall_before,
            "memory_recall_after": self.recall_after,
            "memory_recall_in_context": self.recall_in_context,
            **study_report(study, self.inputs.memories),
        }

    def message(self) -> str:
        return f"consolidated {len(self.inputs.memories)} memories into {self.slot}"


def run(config: AttemptConfig) -> AttemptResult:
    """The consolidation step: expand, Knowledge-Seed, save the new generation; returns a ``AttemptResult``.

    Reads ``config.base_uri`` (never writes there) and the memory set; writes the
    self-study set to ``<output_uri>/selfstudy``, the new generation to
    ``<output_uri>/model`` and checkpoints to ``<output_uri>/checkpoints``;
    resumes from ``config.resume_from`` when set (the self-study set is reused).
    Raises :class:`ConsolidationError` (bad inputs) with a message for the result.
    """
    return run_workload(Consolidation(config))
