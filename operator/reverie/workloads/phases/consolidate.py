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
   curriculum D itself (:mod:`reverie.workloads.phases.selfstudy`): prompts of several
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
import hashlib
import json
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from reverie.api.phases import ConsolidationSpec, ReplayChoice, TeacherChoice, ZeroStage
from reverie.api.sleepcycle import Step
from reverie.core.contract import CONSOLIDATED_MEMORIES, PhaseConfig, PhaseResult, ProgressEvent, emit_progress
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import (
    Memory,
    MemorySetError,
    load_memories,
    load_memory_uris,
    question_prompt,
    read_memory_uri,
    resolve_uri,
)
from reverie.workloads.data.questions import answer_matches
from reverie.workloads.ml import distributed
from reverie.workloads.ml.ask import greedy_answers
from reverie.workloads.ml.distributed import World
from reverie.workloads.ml.expansion import FoldedSlots, add_slot, slot_parameters
from reverie.workloads.ml.lm import answer_cross_entropy, completion_logits, encode, sequence_logprobs
from reverie.workloads.ml.sampling import HFBackend, SamplingBackend, active_adapters, make_backend
from reverie.workloads.ml.trainer import TorchTrainer, Trainer
from reverie.workloads.phases import replay
from reverie.workloads.phases.selfstudy import (
    STUDY_DIR,
    TARGETS_FILE,
    StudyItem,
    TeacherTargets,
    load_study,
    replay_items,
    save_study,
    sharded_teacher_targets,
    summary_prompts,
    synthesize,
)
from reverie.workloads.store import checkpoint as ckpt
from reverie.workloads.store import objects, store
from reverie.workloads.store.modelio import (
    GenerationError,
    activate_slots,
    content_hash,
    is_remote,
    load_generation,
    local_path,
    save_generation,
    stage_out,
)

# ----------------------------------------------------------------------------- settings


def _spec_default(name: str) -> Any:
    """The documented default of a ``ConsolidationSpec`` knob: one source of truth for both."""
    return ConsolidationSpec.model_fields[name].default


# KSSettings field -> ConsolidationSpec field.
_FROM_SPEC = {
    "alpha": "alpha",
    "beta": "beta",
    "lam": "lam",
    "gamma": "gamma",
    "z0": "z0",
    "replay_ratio": "replay_ratio",
    "steps": "steps",
    "on_policy_steps": "on_policy_steps",
    "on_policy_threshold": "on_policy_threshold",
    "items_per_memory": "items_per_memory",
    "top_k": "top_k",
    "ce_weight": "ce_weight",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "max_new_tokens": "max_new_tokens",
    "temperature": "temperature",
    "group_size": "imitation_group_size",
    "seed": "seed",
    "checkpoint_every": "checkpoint_every",
}


@dataclass
class KSSettings:
    """Knowledge Seeding knobs (the paper's names), defaulting to ``ConsolidationSpec``'s documented defaults."""

    alpha: float = _spec_default("alpha")
    beta: float = _spec_default("beta")
    lam: float = _spec_default("lam")
    gamma: float = _spec_default("gamma")
    z0: float = _spec_default("z0")
    replay_ratio: float = _spec_default("replay_ratio")
    steps: int = _spec_default("steps")
    on_policy_steps: int = _spec_default("on_policy_steps")
    on_policy_threshold: float = _spec_default("on_policy_threshold")
    items_per_memory: int = _spec_default("items_per_memory")
    top_k: int = _spec_default("top_k")
    ce_weight: float = _spec_default("ce_weight")
    batch_size: int = _spec_default("batch_size")
    learning_rate: float = _spec_default("learning_rate")
    max_new_tokens: int = _spec_default("max_new_tokens")
    temperature: float = _spec_default("temperature")
    group_size: int = _spec_default("imitation_group_size")
    seed: int = _spec_default("seed")
    checkpoint_every: int = _spec_default("checkpoint_every")
    # Workload-level knobs (not in the CRD): greedy teacher answers, LTI prompts per step, clipping, logging.
    teacher_temperature: float = 0.0
    lti_prompts: int = 4
    max_grad_norm: float = 1.0
    log_every: int = 10

    @classmethod
    def from_spec(cls, spec: ConsolidationSpec, **overrides: Any) -> KSSettings:
        s = cls(**{ours: getattr(spec, theirs) for ours, theirs in _FROM_SPEC.items()})
        for k, v in overrides.items():
            setattr(s, k, v)
        return s

    @property
    def total_steps(self) -> int:
        return self.steps + self.on_policy_steps


# ----------------------------------------------------------------------------- the losses


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Token-mean generalized JSD_β(p_T ‖ p_S) (GKD, Agarwal et al. 2024).

    With M = β·p_T + (1 − β)·p_S:  JSD_β = β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M).
    β → 0 behaves like forward KL(p_T ‖ p_S), β = 1 is taken as reverse KL(p_S ‖ p_T)
    (the limits used by GKD and TRL, where the mixture form degenerates to 0).
    ``mask`` (batch × length) selects completion tokens.
    """
    s = F.log_softmax(student_logits.float(), -1)
    t = F.log_softmax(teacher_logits.float(), -1)
    if beta <= 0.0:
        per_token = (t.exp() * (t - s)).sum(-1)
    elif beta >= 1.0:
        per_token = (s.exp() * (s - t)).sum(-1)
    else:
        log_m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), 0)
        per_token = beta * (t.exp() * (t - log_m)).sum(-1) + (1 - beta) * (s.exp() * (s - log_m)).sum(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


def normalized_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance over characters divided by the longer length (0 identical, 1 disjoint)."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(a, b))


_WORD = re.compile(r"\w+")


def token_f1(a: str, b: str) -> float:
    """Word-overlap F1: the default CPU semantic-equivalence judge."""
    x, y = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    if not x or not y:
        return float(x == y)
    common = sum(min(x.count(w), y.count(w)) for w in set(x))
    if common == 0:
        return 0.0
    p, r = common / len(x), common / len(y)
    return 2 * p * r / (p + r)


class SemanticJudge(Protocol):
    """Decides whether two texts mean the same: 1.0 yes, 0.0 no (the paper's frozen reward model)."""

    def __call__(self, completion: str, reference: str) -> float: ...


def overlap_judge(completion: str, reference: str, *, threshold: float = 0.8) -> float:
    """Same meaning iff word-overlap F1 ≥ ``threshold`` (cheap, deterministic, CPU)."""
    return 1.0 if token_f1(completion, reference) >= threshold else 0.0


def imitation_reward(
    completion: str,
    reference: str,
    *,
    gamma: float,
    z0: float,
    judge: SemanticJudge = overlap_judge,
) -> float:
    """r = γ·r_sem + (1 − γ)·r_abs, with r_abs = 1 − z/max(|ŷ|, |d|) when that normalized z ≤ z₀, else 0."""
    z = normalized_edit_distance(completion, reference)
    r_abs = 1.0 - z if z <= z0 else 0.0
    return gamma * judge(completion, reference) + (1.0 - gamma) * r_abs


def imitation_loss(logp_sums: torch.Tensor, rewards: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Group-baseline policy gradient: −mean((r − mean_group r) · log p(ŷ)); rewards carry no gradient."""
    r = rewards.view(-1, group_size)
    advantage = (r - r.mean(dim=1, keepdim=True)).view(-1).detach()
    return -(advantage * logp_sums).mean()


def knowledge_seeding_loss(distill: torch.Tensor, imitation: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """L_KS = α · L_distill + (1 − α) · L_LTI (paper §3.3, written as a loss to minimise)."""
    return alpha * distill + (1.0 - alpha) * imitation


def topk_forward_kl(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Token-mean forward KL(p_T ‖ p_S) over the teacher's cached top-k (the β → 0 end of JSD_β).

    Σ_{v ∈ topk} p_T(v) · (log p_T(v) − log p_S(v)); padding slots carry log p_T = −inf (weight 0).
    The gradient on the student's logits is p_S − p_T (restricted): it raises a
    token the teacher wants even where the student gives it ≈ 0.
    """
    s = F.log_softmax(student_logits.float(), -1).gather(-1, topk_ids)
    p = topk_logprobs.exp()
    per_token = (p * (topk_logprobs.clamp(min=-1e4) - s)).sum(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Cue:
    """One prompt of the on-policy stage: what the student sees, what the teacher sees, which teacher answers."""

    student_prompt: str
    teacher_prompt: str
    replay: bool = False


def teacher_prompt_of(item: StudyItem, tokenizer: Any, memories: dict[str, Memory], *, in_context: bool = True) -> str:
    """The teacher's view of an item: its memory in the user turn (replay items: no memory)."""
    memory = memories.get(item.memory_id) if not item.replay and in_context else None
    return question_prompt(tokenizer, item.prompt, context=memory.text if memory else None)


def study_cues(
    items: Sequence[StudyItem],
    tokenizer: Any,
    memories: dict[str, Memory],
    *,
    in_context: bool = True,
) -> tuple[list[Cue], list[Cue]]:
    """The self-study items as on-policy cues: (memory cues, replay cues)."""
    cues = [
        Cue(
            question_prompt(tokenizer, i.prompt),
            teacher_prompt_of(i, tokenizer, memories, in_context=in_context),
            replay=i.replay,
        )
        for i in items
    ]
    return [c for c in cues if not c.replay], [c for c in cues if c.replay]


def step_rng(seed: int, step: int, stream: str) -> random.Random:
    """A per-step RNG: the data order depends only on (seed, step), so a resumed run replays it exactly."""
    h = hashlib.sha256(f"{seed}:{step}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def step_rows(n_memory: int, n_replay: int, *, step: int, settings: KSSettings) -> tuple[list[int], list[int]]:
    """The step's rows: round(ρ·B) replay rows, the rest memory rows, sampled with replacement."""
    rng = step_rng(settings.seed, step, "batch")
    k_replay = round(settings.replay_ratio * settings.batch_size) if n_replay else 0
    k_memory = settings.batch_size - k_replay
    return [rng.randrange(n_memory) for _ in range(k_memory)], [rng.randrange(n_replay) for _ in range(k_replay)]


def step_batch(memory: Sequence[Cue], replay: Sequence[Cue], *, step: int, settings: KSSettings) -> list[Cue]:
    """The on-policy step's cues (same sampling as :func:`step_rows`)."""
    mem_rows, rep_rows = step_rows(len(memory), len(replay), step=step, settings=settings)
    return [memory[i] for i in mem_rows] + [replay[i] for i in rep_rows]


def with_eos(ids: Sequence[int], *, eos: int, max_new_tokens: int) -> list[int]:
    """A completion that stopped before the budget ended with eos: score that eos too."""
    return [*ids, eos] if len(ids) < max_new_tokens else list(ids)


# ----------------------------------------------------------------------------- the loops


@dataclass
class Roles:
    """Which expert slots each role uses on the one shared model."""

    student: list[str]  # earlier slots + the new slot
    teacher: list[str]  # earlier slots (the smaller self)
    memory_teacher: list[str]  # teacher on memory cues (+ the fast-weight adapter in the stand-in)
    # The weights the memory teacher reads with (the exact base, when earlier slots are folded in).
    reading: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


@dataclass
class StepStats:
    step: int
    loss: float
    distill: float
    imitation: float
    reward: float
    tokens: int
    seconds: float
    ce: float = 0.0


@dataclass
class KSState:
    """Resumable state of the loop: the next step to run and the running history."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def run_steps(
    step: Callable[[int], StepStats],
    state: KSState,
    *,
    until: int,
    on_step: Callable[[StepStats, KSState], None] | None = None,
) -> KSState:
    """Run ``step`` from ``state.step`` up to ``until``, recording each step's stats in the history."""
    while state.step < until:
        stats = step(state.step)
        state.step += 1
        state.history.append({k: v for k, v in asdict(stats).items() if k != "step"})
        if on_step is not None:
            on_step(stats, state)
    return state


class KnowledgeSeeding:
    """One sleep's Knowledge Seeding over a shared model whose roles differ only by active slots."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        backend: SamplingBackend,
        *,
        roles: Roles,
        settings: KSSettings,
        memory: Sequence[Cue],
        replay: Sequence[Cue],
        trainer: Trainer,
        judge: SemanticJudge = overlap_judge,
        teacher_backend: SamplingBackend | None = None,
        world: World | None = None,
    ) -> None:
        if not memory:
            raise ValueError("Knowledge Seeding needs at least one memory cue")
        self.model, self.tok, self.backend = model, tokenizer, backend
        self.roles, self.s = roles, settings
        self.memory, self.replay = list(memory), list(replay)
        self.trainer, self.judge = trainer, judge
        # The teacher is frozen, so its answers may come from a separate engine (vLLM on GPU);
        # the student's samples must come from the training weights.
        self.teacher_backend = teacher_backend or backend
        self._answer_cache: dict[Cue, list[int]] = {}
        # On N ranks each takes a share of the step's cues; the student's forward goes through DDP.
        self.world = world or World()
        self.forward = distributed.forward_model(trainer, model)

    # -- teacher answers D_T (cached when greedy: the same cue always gives the same answer)
    def teacher_answers(self, cues: Sequence[Cue], *, step: int) -> list[list[int]]:
        greedy = self.s.teacher_temperature <= 0
        todo = [c for c in dict.fromkeys(cues) if not (greedy and c in self._answer_cache)]
        fresh: dict[Cue, list[int]] = {}
        for rehearsed in (False, True):
            group = [c for c in todo if c.replay == rehearsed]
            if not group:
                continue
            adapters = self.roles.teacher if rehearsed else self.roles.memory_teacher
            with contextlib.nullcontext() if rehearsed else self.roles.reading():
                out = self.teacher_backend.generate(
                    [c.teacher_prompt for c in group],
                    max_new_tokens=self.s.max_new_tokens,
                    temperature=self.s.teacher_temperature,
                    seed=self.s.seed * 1_000_003 + step,
                    adapters=adapters,
                )
            fresh.update(zip(group, out.token_ids, strict=True))
        if greedy:
            self._answer_cache.update(fresh)
            return [self._answer_cache[c] for c in cues]
        return [fresh[c] for c in cues]

    def prefetch_teacher_answers(self) -> None:
        """Greedy teacher: answer every cue once, in large batches, before training starts."""
        if self.s.teacher_temperature <= 0:
            self.teacher_answers([*self.memory, *self.replay], step=0)

    def distill_term(self, cues: Sequence[Cue], answers: Sequence[list[int]], *, step: int) -> tuple[torch.Tensor, int]:
        rng = step_rng(self.s.seed, step, "lambda")
        on_policy = [rng.random() < self.s.lam for _ in cues]
        ys = list(answers)
        rows = [i for i, on in enumerate(on_policy) if on]
        if rows:  # y ~ student(· | x without memory): sampled under no_grad, so no gradient through sampling
            out = self.backend.generate(
                [cues[i].student_prompt for i in rows],
                max_new_tokens=self.s.max_new_tokens,
                temperature=self.s.temperature,
                seed=self.s.seed * 7_000_003 + step,
                adapters=self.roles.student,
            )
            for i, ids in zip(rows, out.token_ids, strict=True):
                ys[i] = ids
        eos, budget = self.tok.eos_token_id, self.s.max_new_tokens
        ys = [with_eos(y, eos=eos, max_new_tokens=budget) for y in ys]
        s_prompts = [encode(self.tok, c.student_prompt) for c in cues]
        t_prompts = [encode(self.tok, c.teacher_prompt) for c in cues]
        with torch.no_grad():
            t_logits = []
            # Replay cues are answered by the teacher without memory; memory cues by the memory teacher.
            for rehearsed in (False, True):
                idx = [i for i, c in enumerate(cues) if c.replay == rehearsed]
                if not idx:
                    continue
                adapters = self.roles.teacher if rehearsed else self.roles.memory_teacher
                reading = contextlib.nullcontext() if rehearsed else self.roles.reading()
                with reading, active_adapters(self.model, adapters):
                    lg, _, _ = completion_logits(
                        self.model, self.tok, [t_prompts[i] for i in idx], [ys[i] for i in idx]
                    )
                t_logits.append((idx, lg))
            width = max(lg.shape[1] for _, lg in t_logits)
            teacher = torch.zeros(len(cues), width, t_logits[0][1].shape[-1], device=t_logits[0][1].device)
            for idx, lg in t_logits:
                teacher[idx, : lg.shape[1]] = lg.float()
        with active_adapters(self.model, self.roles.student):
            s_logits, mask, _ = completion_logits(self.forward, self.tok, s_prompts, ys)
        teacher = teacher[:, : s_logits.shape[1]]
        loss = generalized_jsd(s_logits, teacher, mask, beta=self.s.beta)
        return loss, int(mask.sum())

    def imitation_term(
        self, cues: Sequence[Cue], answers: Sequence[list[int]], *, step: int
    ) -> tuple[torch.Tensor, float, int]:
        rng = step_rng(self.s.seed, step, "lti")
        pool = [(c, d) for c, d in zip(cues, answers, strict=True) if not c.replay and len(d) > 0]
        if not pool:
            return torch.zeros(()), 0.0, 0
        chosen = [pool[rng.randrange(len(pool))] for _ in range(min(self.s.lti_prompts, len(pool)))]
        prompts, refs = [], []
        for cue, d in chosen:
            cut = rng.randrange(len(d))  # random prefix d_<cut of the teacher's answer
            prompts.append(cue.student_prompt + self.tok.decode(d[:cut], skip_special_tokens=True))
            refs.append(self.tok.decode(d[cut:], skip_special_tokens=True))
        g = self.s.group_size
        rep_prompts = [p for p in prompts for _ in range(g)]
        out = self.backend.generate(
            rep_prompts,
            max_new_tokens=self.s.max_new_tokens,
            temperature=self.s.temperature,
            seed=self.s.seed * 9_000_011 + step,
            adapters=self.roles.student,
        )
        rewards = torch.tensor(
            [
                imitation_reward(text, refs[i // g], gamma=self.s.gamma, z0=self.s.z0, judge=self.judge)
                for i, text in enumerate(out.texts)
            ]
        )
        ys = [with_eos(y, eos=self.tok.eos_token_id, max_new_tokens=self.s.max_new_tokens) for y in out.token_ids]
        p_ids = [encode(self.tok, p) for p in rep_prompts]
        with active_adapters(self.model, self.roles.student):
            logits, mask, targets = completion_logits(self.forward, self.tok, p_ids, ys)
        logp = sequence_logprobs(logits, targets, mask)
        loss = imitation_loss(logp, rewards.to(logp.device), group_size=g)
        return loss, float(rewards.mean()), int(mask.sum())

    def step(self, step: int) -> StepStats:
        t0 = time.perf_counter()
        distributed.maybe_inject_fault(self.world, step)
        cues = step_batch(self.memory, self.replay, step=step, settings=self.s)
        answers = self.teacher_answers(cues, step=step)  # every rank, the whole batch: the calls stay in lockstep
        mine = distributed.share(range(len(cues)), self.world)
        cues, answers = [cues[i] for i in mine], [answers[i] for i in mine]
        self.model.train()
        distill, n_tok = self.distill_term(cues, answers, step=step)
        weight, _ = distributed.token_weight(self.world, n_tok)
        imitation, reward, n_lti = (
            self.imitation_term(cues, answers, step=step) if self.s.alpha < 1.0 else (torch.zeros(()), 0.0, 0)
        )
        loss = knowledge_seeding_loss(distill * weight, imitation.to(distill.device), alpha=self.s.alpha)
        self.trainer.backward_and_step(loss)
        self.model.eval()
        n = self.world.size
        total, d, i, r, tok = distributed.all_reduce_sum(
            self.world,
            [
                float(loss.detach()) / n,
                float(distill.detach()) * weight / n,
                float(imitation.detach()) / n,
                reward / n,
                n_tok + n_lti,
            ],
        )
        return StepStats(
            step=step, loss=total, distill=d, imitation=i, reward=r, tokens=int(tok), seconds=time.perf_counter() - t0
        )

    def run(
        self,
        state: KSState,
        *,
        on_step: Callable[[StepStats, KSState], None] | None = None,
        until: int | None = None,
    ) -> KSState:
        return run_steps(self.step, state, until=self.s.steps if until is None else until, on_step=on_step)


class SelfStudyDistillation:
    """Stage 1: forward KL (+ CE) on the teacher's cached self-study answers; one student pass per step."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        items: Sequence[StudyItem],
        targets: TeacherTargets,
        student: Sequence[str],
        settings: KSSettings,
        trainer: Trainer,
        world: World | None = None,
    ) -> None:
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} study items but {len(targets)} teacher targets")
        self.model, self.tok, self.s, self.trainer = model, tokenizer, settings, trainer
        self.student = list(student)
        # On N ranks each takes a share of the step's rows; the student's forward goes through DDP.
        self.world = world or World()
        self.forward = distributed.forward_model(trainer, model)
        self.memory_rows = [n for n, i in enumerate(items) if not i.replay]
        self.replay_rows = [n for n, i in enumerate(items) if i.replay]
        if not self.memory_rows:
            raise ValueError("Knowledge Seeding needs at least one self-study item about the memories")
        self.targets = targets
        self.prompt_ids = [encode(tokenizer, question_prompt(tokenizer, i.prompt)) for i in items]

    def batch(self, step: int) -> list[int]:
        mem, rep = step_rows(len(self.memory_rows), len(self.replay_rows), step=step, settings=self.s)
        return [self.memory_rows[i] for i in mem] + [self.replay_rows[i] for i in rep]

    def losses(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(forward KL over the teacher's top-k, CE on its answer tokens, tokens) for the given items."""
        answers = [self.targets.answer_ids[r] for r in rows]
        with active_adapters(self.model, self.student):
            logits, mask, targets = completion_logits(
                self.forward, self.tok, [self.prompt_ids[r] for r in rows], answers
            )
        width = logits.shape[1]
        ids = self.targets.topk_ids[list(rows), :width].to(logits.device)
        lps = self.targets.topk_logprobs[list(rows), :width].to(logits.device)
        if ids.shape[1] < width:  # the cached targets are padded to the longest answer of the whole set
            raise ValueError("teacher targets are shorter than their answers")
        fkl = topk_forward_kl(logits, ids, lps, mask)
        ce = answer_cross_entropy(logits, targets, mask)
        return fkl, ce, int(mask.sum())

    def step(self, step: int) -> StepStats:
        t0 = time.perf_counter()
        distributed.maybe_inject_fault(self.world, step)
        self.model.train()
        fkl, ce, n_tok = self.losses(distributed.share(self.batch(step), self.world))
        loss = fkl + self.s.ce_weight * ce
        # Σ over ranks of (token share × local mean) is the one-process token mean of the whole batch.
        weight, _ = distributed.token_weight(self.world, n_tok)
        self.trainer.backward_and_step(loss * weight if self.world.distributed else loss)
        self.model.eval()
        n = self.world.size
        total, d, c, tok = distributed.all_reduce_sum(
            self.world,
            [
                float(loss.detach()) * weight / n,
                float(fkl.detach()) * weight / n,
                float(ce.detach()) * weight / n,
                n_tok,
            ],
        )
        return StepStats(
            step=step,
            loss=total,
            distill=d,
            imitation=0.0,
            reward=0.0,
            tokens=int(tok),
            seconds=time.perf_counter() - t0,
            ce=c,
        )

    def run(
        self,
        state: KSState,
        *,
        on_step: Callable[[StepStats, KSState], None] | None = None,
        until: int | None = None,
    ) -> KSState:
        return run_steps(self.step, state, until=self.s.steps if until is None else until, on_step=on_step)


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


# ----------------------------------------------------------------------------- the phase


def _emit(event: ProgressEvent) -> None:
    emit_progress(replace(event, phase=Step.CONSOLIDATION.value))  # rank 0's only on N ranks


def prior_study_items(
    prior_memory_uris: Sequence[str], *, store_uri: str | None, limit: int = 400, seed: int = 0
) -> list[StudyItem]:
    """Replay prompts for earlier memories that have no stored self-study set: summary seeds of their subjects.

    A sleep keeps its items beside its consolidated memories and later sleeps replay
    those, with their cached targets (:mod:`reverie.workloads.phases.replay`); memories
    without them (a base model's own pretraining set, a generation from before
    self-study) are rehearsed through these prompts, answered by the model before
    this sleep.
    """

    out: list[StudyItem] = []
    for uri in prior_memory_uris:
        out += summary_prompts(read_memory_uri(resolve_uri(uri, store_uri=store_uri)))
    if len(out) > limit:
        out = random.Random(seed).sample(out, limit)
    return out


def build_study(
    model: Any,
    tokenizer: Any,
    backend: SamplingBackend,
    *,
    memories: Sequence[Memory],
    prior: Sequence[StudyItem],
    held_out: Any,
    roles: Roles,
    settings: KSSettings,
    in_context: bool = True,
    world: World | None = None,
    forwards: Callable[[], Any] | None = None,
) -> tuple[list[StudyItem], TeacherTargets]:
    """This sleep's self-study set (memory items + replay items) and the teacher's cached top-k on it.

    On N ranks ``backend`` splits the generation and the teacher's passes are split the same way
    (:mod:`reverie.workloads.ml.distributed`); every rank ends with the whole set.
    """
    with roles.reading():
        mem_items = synthesize(
            backend,
            tokenizer,
            memories,
            adapters=roles.memory_teacher,
            items_per_memory=settings.items_per_memory,
            seed=settings.seed,
            max_new_tokens=settings.max_new_tokens,
            in_context=in_context,
            keep=held_out.allows,
        )
    rep_items = replay_items(
        backend,
        tokenizer,
        adapters=roles.teacher,
        max_new_tokens=settings.max_new_tokens,
        prior=[i for i in prior if held_out.allows(i.prompt)],
    )
    items = [i for i in [*mem_items, *rep_items] if held_out.allows(i.prompt) and held_out.allows(i.answer)]
    by_id = {m.id: m for m in memories}

    def targets_of(rows: list[StudyItem]) -> TeacherTargets:
        return sharded_teacher_targets(
            world or World(),
            model,
            tokenizer,
            rows,
            forwards=forwards or contextlib.nullcontext,
            teacher_prompts=[teacher_prompt_of(i, tokenizer, by_id, in_context=in_context) for i in rows],
            adapters_of=lambda i: roles.teacher if i.replay else roles.memory_teacher,
            k=settings.top_k,
            max_tokens=settings.max_new_tokens,
        )

    if roles.reading is contextlib.nullcontext:
        return items, targets_of(items)
    # The memory teacher reads with other weights: its rows in one pass inside them, then the rest.
    mine, rest = [i for i in items if not i.replay], [i for i in items if i.replay]
    with roles.reading():
        targets = targets_of(mine)
    return [*mine, *rest], replay.concat(targets, targets_of(rest)) if rest else targets


def run(config: PhaseConfig) -> PhaseResult:
    """The consolidation phase: expand, Knowledge-Seed, save the new generation; returns a ``PhaseResult``.

    Reads ``config.base_uri`` (never writes there) and the memory set; writes the
    self-study set to ``<output_uri>/selfstudy``, the new generation to
    ``<output_uri>/model`` and checkpoints to ``<output_uri>/checkpoints``;
    resumes from ``config.resume_from`` when set (the self-study set is reused).
    Raises :class:`ConsolidationError` (bad inputs) with a message for the result.
    """
    cfg = config
    spec = cfg.consolidation
    settings = KSSettings.from_spec(spec)
    # The same seed on every rank: the new slot starts identical everywhere.
    torch.manual_seed(settings.seed)
    world = distributed.init_world()
    zero = ZeroStage(spec.zero_stage)
    if world.size > settings.batch_size:
        raise ConsolidationError(
            f"consolidation.batchSize {settings.batch_size} is smaller than the {world.size} processes; "
            "every process needs at least one sequence per step (raise batchSize or lower procsPerNode/numNodes)"
        )
    if zero == ZeroStage.THREE and world.distributed and settings.on_policy_steps > 0:
        raise ConsolidationError(
            "consolidation.onPolicySteps with zeroStage 3 on more than one process is not supported yet "
            "(its per-rank sampling would leave the ZeRO-3 forwards out of lockstep); use zeroStage 0 or 2"
        )
    try:
        memories = load_memories(cfg.memory, store_uri=cfg.store_uri)
        prior = load_memory_uris(cfg.prior_memory_uris, store_uri=cfg.store_uri)
    except MemorySetError as exc:
        raise ConsolidationError(f"memory: {exc}") from exc
    # Every question evaluation will ask — about these memories and earlier ones — is held out.
    held_out = HeldOut.of([*memories, *prior], questions_per_memory=cfg.evaluation.questions_per_memory)
    # bf16 only where it is fast and safe (GPUs); CPU runs stay fp32.
    dtype = torch.bfloat16 if spec.precision == "bf16" and torch.cuda.is_available() else torch.float32
    try:
        gen = load_generation(cfg.base_uri, dtype=dtype)
    except GenerationError as exc:
        raise ConsolidationError(f"base generation: {exc}") from exc
    model, tok = gen.model, gen.tokenizer
    earlier = list(gen.slots)
    model, slot = add_slot(model, rank=spec.expert_rank, target_modules=spec.target_modules, keep_active=earlier)
    params = slot_parameters(model, slot)
    model.to(distributed.device_of(world))

    remote = is_remote(cfg.output_uri)
    work = Path(tempfile.mkdtemp(prefix="reverie-consolidation-")) if remote else local_path(cfg.output_uri)
    ckpt_root = work / "checkpoints"

    # Resume before the engine exists: ZeRO-3 then partitions the loaded weights. A checkpoint
    # holds the whole slot, so the attempt may run on another number of processes.
    state = KSState()
    resumed: ckpt.Checkpoint | None = None
    if cfg.resume_from:
        try:
            resumed = ckpt.load_checkpoint(cfg.resume_from)
        except ckpt.CheckpointError as exc:
            raise ConsolidationError(str(exc)) from exc
        if resumed.slot != slot:
            raise ConsolidationError(
                f"resume_from {cfg.resume_from}: checkpoint is for slot {resumed.slot}, this run adds {slot}"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(resumed.slot_state[name].to(p))
        state = KSState(step=resumed.step, history=list(resumed.meta.get("history", [])))

    trainer: Any
    if zero != ZeroStage.NONE:
        from reverie.workloads.ml.deepspeed_config import DeepSpeedTrainer, zero_config

        trainer = DeepSpeedTrainer(
            model, list(params.values()), lr=settings.learning_rate, config=zero_config(spec, world_size=world.size)
        )
        if zero == ZeroStage.THREE:
            distributed.assert_partitioned(model, world)
            shares = distributed.all_gather_objects(world, distributed.partitioned_share(model))
            _emit(
                ProgressEvent(
                    "zero3", values={"ranks": world.size, "held": [h for h, _ in shares], "total": shares[0][1]}
                )
            )
    elif world.distributed:
        trainer = distributed.DDPTrainer(
            model, list(params.values()), world=world, lr=settings.learning_rate, max_grad_norm=settings.max_grad_norm
        )
    else:
        trainer = TorchTrainer(list(params.values()), lr=settings.learning_rate, max_grad_norm=settings.max_grad_norm)
    if resumed is not None:
        if resumed.optimizer_state is not None and hasattr(trainer, "load_state_dict"):
            trainer.load_state_dict(resumed.optimizer_state)
        _emit(ProgressEvent("resumed", step=resumed.step, checkpoint=str(resumed.folder), values={"ranks": world.size}))

    def forwards() -> Any:
        return distributed.local_forwards(trainer)

    local_backend = HFBackend(model, tok)
    # Generation split across ranks (greedy) or run whole on each (sampled: the same samples as one process).
    backend = distributed.ShardedSampling(local_backend, world, sampling="replicate", forwards=forwards)
    teacher_backend = None
    if os.environ.get("REVERIE_TEACHER_BACKEND", "hf") == "vllm" and gen.folder is not None:
        teacher_backend = make_backend("vllm", model, tok, folder=gen.folder, slots=earlier)
    # Earlier slots are frozen for the whole sleep: fold them into the base weights so every
    # forward runs one slot, not all of them (restored exactly before the generation is saved).
    base_teacher = spec.teacher == TeacherChoice.BASE
    folded: FoldedSlots | None = None
    if earlier and zero == ZeroStage.NONE:
        with contextlib.suppress(TypeError):  # a slot on an embedding stays a separate adapter
            folded = FoldedSlots(model, earlier)
    before_sleep = [] if folded else earlier  # the adapters that make the model before this sleep
    roles = Roles(
        student=[*before_sleep, slot],
        teacher=before_sleep,
        memory_teacher=[] if base_teacher else before_sleep,
        reading=folded.unfolded if (folded and base_teacher) else contextlib.nullcontext,
    )

    # The self-study set: computed once per cycle, reused by every later attempt.
    study_dir = work / STUDY_DIR
    study_uri = cfg.output_uri.rstrip("/") + "/" + STUDY_DIR
    if remote and load_study(study_dir) is None:
        # An earlier attempt's set, if it uploaded one (both files or it counts as absent).
        store.download_tree(study_uri, study_dir)
    study = load_study(study_dir)
    synth_started = time.perf_counter()
    probe_seconds = 0.0
    teacher_items = 0
    if study is None:
        # Replay: a fixed budget of the ancestry's stored items, their teacher targets cached.
        prior_uris = [resolve_uri(u, store_uri=cfg.store_uri) for u in cfg.prior_memory_uris]
        stored, missing = replay.stored_items([replay.study_folder_of(u) for u in prior_uris], allows=held_out.allows)
        fallback = prior_study_items(
            [u for u in prior_uris if replay.study_folder_of(u) in missing], store_uri=None, seed=settings.seed
        )
        probe_started = time.perf_counter()
        losses: dict[str, float] = {}
        if spec.replay.choose == ReplayChoice.FORGOTTEN and len(stored) > spec.replay.items:
            with forwards():  # every rank scores the same probes: the same choice everywhere
                losses = replay.probe_losses(model, tok, stored, adapters=roles.teacher, seed=settings.seed)
        probe_seconds = time.perf_counter() - probe_started
        choice = replay.choose(stored, spec=spec.replay, seed=settings.seed, losses=losses)
        replay_targets = replay.load_targets(choice)
        own_items, own_targets = build_study(
            model,
            tok,
            teacher_backend or backend,
            memories=memories,
            prior=fallback,
            held_out=held_out,
            roles=roles,
            settings=settings,
            world=world,
            forwards=forwards,
        )
        teacher_items = len(own_items)

        def write_study() -> Path:
            folder = work / STUDY_DIR
            folder.mkdir(parents=True, exist_ok=True)
            replay.save_choice(folder, choice)  # before the targets file, which marks the set complete
            save_study(folder, own_items, own_targets)
            if remote:
                store.upload_tree(folder, study_uri, commit_last=(TARGETS_FILE,))
            return folder

        study_dir = distributed.on_main(world, write_study)
    else:
        own_items, own_targets = study
        stored_choice = replay.load_choice(study_dir)
        try:
            choice, expect = stored_choice or (replay.choose([], spec=spec.replay, seed=settings.seed), {})
            replay_targets = replay.load_targets(choice, expect=expect)
        except replay.ReplayError as exc:
            raise ConsolidationError(str(exc)) from exc
    items = [*own_items, *replay.replayed(choice)]
    targets = replay.concat(own_targets, replay_targets)
    _emit(
        ProgressEvent(
            "selfstudy",
            values={
                "items": len(items),
                "replay": sum(i.replay for i in items),
                "replay_earlier": len(choice.items),
                **({"reused": True} if study is not None else {}),
                "seconds": round(time.perf_counter() - synth_started, 1),
            },
        )
    )
    synth_seconds = time.perf_counter() - synth_started
    n_memory_items = sum(not i.replay for i in items)
    if n_memory_items == 0:
        raise ConsolidationError(
            "self-study kept no item: the teacher's answers were not grounded in any memory "
            "(memories need a named subject, e.g. a person or product, for the teacher to write about)",
        )
    stage1 = SelfStudyDistillation(
        model, tok, items=items, targets=targets, student=roles.student, settings=settings, trainer=trainer, world=world
    )

    qa, contexts = memory_qa(memories, limit=spec.recall_probes)
    before = closed_book_recall(backend, tok, qa, adapters=roles.teacher) if qa else float("nan")
    teacher_score = (
        closed_book_recall(backend, tok, qa, adapters=roles.teacher, contexts=contexts) if qa else float("nan")
    )
    _emit(
        ProgressEvent(
            "start",
            total_steps=settings.total_steps,
            values={"slot": slot, "memories": len(memories), "items": len(items), "resume_step": state.step},
        )
    )
    started = time.perf_counter()
    window: list[StepStats] = []

    def on_step(stats: StepStats, st: KSState) -> None:
        window.append(stats)
        if st.step % settings.log_every == 0 or st.step == settings.total_steps:
            secs = sum(w.seconds for w in window)
            _emit(
                ProgressEvent(
                    step=st.step,
                    total_steps=settings.total_steps,
                    values={
                        "loss": round(stats.loss, 6),
                        "distill": round(stats.distill, 6),
                        "ce": round(stats.ce, 6),
                        "imitation": round(stats.imitation, 6),
                        "reward": round(stats.reward, 4),
                        "tokens_per_s": round(sum(w.tokens for w in window) / max(secs, 1e-9), 1),
                    },
                )
            )
            window.clear()
        if st.step % settings.checkpoint_every == 0 and st.step < settings.total_steps:
            opt = trainer.state_dict() if hasattr(trainer, "state_dict") else None
            # Every rank takes part in the gather (ZeRO-3 shards); rank 0 alone writes.
            slot_state = distributed.gathered_state(params)

            def write_checkpoint() -> Path:
                folder = ckpt.save_checkpoint(
                    ckpt_root,
                    step=st.step,
                    slot=slot,
                    slot_state=slot_state,
                    optimizer_state=opt,
                    meta={"seed": settings.seed, "history": st.history, "ranks": world.size},
                )
                if remote:
                    stage_out(ckpt_root, cfg.output_uri.rstrip("/") + "/checkpoints")
                return folder

            folder = distributed.on_main(world, write_checkpoint)
            _emit(ProgressEvent("checkpoint", step=st.step, checkpoint=str(folder)))

    first_step = state.step
    stage1.run(state, on_step=on_step, until=settings.steps)
    # The agreement only decides whether the on-policy stage runs: not measured when none is configured.
    agreement = (
        teacher_agreement(backend, tok, items, adapters=roles.student, max_new_tokens=settings.max_new_tokens)
        if settings.on_policy_steps > 0
        else math.nan
    )
    on_policy_ran = 0.0
    if settings.on_policy_steps > 0 and agreement >= settings.on_policy_threshold:
        by_id = {m.id: m for m in memories}
        mem_cues, rep_cues = study_cues(items, tok, by_id)
        # Student samples are each rank's own (its share of the cues); teacher answers cover the whole batch.
        ks = KnowledgeSeeding(
            model,
            tok,
            local_backend,
            roles=roles,
            settings=settings,
            memory=mem_cues,
            replay=rep_cues,
            trainer=trainer,
            teacher_backend=teacher_backend or backend,
            world=world,
        )
        ks.prefetch_teacher_answers()
        ks.run(state, on_step=on_step, until=settings.total_steps)
        on_policy_ran = 1.0
    seconds = time.perf_counter() - started
    model.eval()
    after = closed_book_recall(backend, tok, qa, adapters=roles.student) if qa else float("nan")
    if folded is not None:
        folded.restore()
        activate_slots(model, [*earlier, slot])

    ledger = dict(gen.ledger)
    ledger["slots"] = [
        *gen.ledger.get("slots", []),
        {
            "name": slot,
            "cycle": cfg.cycle,
            "lineage": cfg.lineage,
            "parent": cfg.base_generation,
            "memories": [m.id for m in memories][:256],
            "rank": spec.expert_rank,
        },
    ]
    model_uri = cfg.output_uri.rstrip("/") + "/model"

    def write_generation() -> str:
        # Thin: only what the lineage's object area lacks (this sleep's slot, small files) is written.
        folder = save_generation(
            model,
            tok,
            model_uri,
            slots=[*earlier, slot],
            ledger=ledger,
            objects_uri=objects.area(cfg.store_uri, cfg.lineage),
        )
        digest = content_hash(folder)
        # Keep what this sleep learned beside the model: later cycles replay its
        # self-study prompts and score retention on its memories (PhaseConfig.prior_memory_uris).
        learned = "".join(json.dumps(m.to_json()) + "\n" for m in memories)
        store.write_text(store.join(cfg.output_uri, CONSOLIDATED_MEMORIES), learned)
        return digest

    # ZeRO-3: every rank gathers the whole model (not the empty shards) before rank 0 saves it.
    with forwards():
        digest = distributed.on_main(world, write_generation)
    tail = state.history[-max(1, len(state.history) // 10) :]

    def tail_mean(key: str) -> float:
        return sum(h.get(key, 0.0) for h in tail) / len(tail) if tail else float("nan")

    metrics = {
        "consolidation_loss": tail_mean("loss"),
        "distill_loss": tail_mean("distill"),
        "answer_ce": tail_mean("ce"),
        "imitation_loss": tail_mean("imitation"),
        "imitation_reward": tail_mean("reward"),
        "steps": float(state.step),
        "steps_this_attempt": float(state.step - first_step),
        "seconds": seconds,
        "selfstudy_seconds": synth_seconds,
        "selfstudy_items": float(n_memory_items),
        "replay_items": float(len(items) - n_memory_items),
        "replay_earlier_items": float(len(choice.items)),
        "replay_bytes": float(replay.nbytes(replay_targets)),
        "replay_probe_seconds": probe_seconds,
        "teacher_items": float(teacher_items),
        "teacher_agreement": agreement,
        "on_policy_stage": on_policy_ran,
        "tokens_per_s": sum(h["tokens"] for h in state.history) / max(sum(h["seconds"] for h in state.history), 1e-9),
        "memories": float(len(memories)),
        "memory_recall_before": before,
        "memory_recall_after": after,
        "memory_recall_in_context": teacher_score,
    }
    # PhaseResult rejects non-finite metrics for this step: drop the ones that do not apply.
    metrics = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
    return PhaseResult(
        step=Step.CONSOLIDATION,
        status="Succeeded",
        message=f"consolidated {len(memories)} memories into {slot}",
        metrics=metrics,
        output_uri=model_uri,
        content_hash=digest,
        slot=slot,
        checkpoint_uri=cfg.output_uri.rstrip("/") + "/checkpoints",
    )


class ConsolidationError(ValueError):
    """Bad configuration or unreadable inputs: the phase fails without touching the base generation."""
