"""Knowledge Seeding's two training loops over one shared model (paper §2.4, §3.3).

The roles differ only by which expert slots are active (:class:`Roles`): the
student is the model with this sleep's new slot, the teacher the model before
it (reading the memory when a row is about one).  Both loops take the cycle's
``ConsolidationSpec`` as it is (the paper's names: α, β, λ, γ, z₀, ρ) and a few
workload-level knobs the CRD does not expose (:class:`LoopKnobs`).

``SelfStudyDistillation`` — stage 1: forward KL over the teacher's cached top-k
    (+ CE) on the self-study set; one student pass per step.
``KnowledgeSeeding`` — stage 2 (optional): generalized JSD on student samples or
    teacher answers, plus Learning-to-Imitate.

Both draw a step's rows from ``(seed, step)`` alone (:func:`step_rows`): a
resumed attempt replays the same batches, on any number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from reverie.api.steps import ConsolidationSpec
from reverie.workloads.data.memory import Memory, question_prompt
from reverie.workloads.ml import distributed
from reverie.workloads.ml.distributed import World
from reverie.workloads.ml.lm import answer_cross_entropy, completion_logits, encode, sequence_logprobs
from reverie.workloads.ml.losses import (
    SemanticJudge,
    generalized_jsd,
    imitation_loss,
    imitation_reward,
    knowledge_seeding_loss,
    overlap_judge,
    topk_forward_kl,
)
from reverie.workloads.ml.sampling import SamplingBackend, active_adapters
from reverie.workloads.ml.trainer import Trainer
from reverie.workloads.steps.selfstudy import StudyItem, TeacherTargets


@dataclass(frozen=True)
class LoopKnobs:
    """Workload-level knobs of the loops that the CRD does not expose (tests and benches set them)."""

    teacher_temperature: float = 0.0  # greedy teacher answers (cached: the same cue, the same answer)
    lti_prompts: int = 4  # Learning-to-Imitate prefixes per step
    max_grad_norm: float = 1.0
    log_every: int = 10  # steps between progress lines


def total_steps(spec: ConsolidationSpec) -> int:
    """Both stages' optimiser steps."""
    return spec.steps + spec.on_policy_steps


@dataclass(frozen=True)
class Cue:
    """One prompt of the on-policy stage: what the student sees, what the teacher sees, which teacher answers."""

    student_prompt: str
    teacher_prompt: str
    replay: bool = False
    read: bool = True  # answered by the memory teacher's weights (Roles.reads), else by the teacher's


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
    reads: Callable[[StudyItem], bool] = lambda i: not i.replay,
) -> tuple[list[Cue], list[Cue]]:
    """The self-study items as on-policy cues: (memory cues, replay cues); ``reads``: :meth:`Roles.reads`."""
    cues = [
        Cue(
            question_prompt(tokenizer, i.prompt),
            teacher_prompt_of(i, tokenizer, memories, in_context=in_context),
            replay=i.replay,
            read=reads(i),
        )
        for i in items
    ]
    return [c for c in cues if not c.replay], [c for c in cues if c.replay]


def step_rng(seed: int, step: int, stream: str) -> random.Random:
    """A per-step RNG: the data order depends only on (seed, step), so a resumed run replays it exactly."""
    h = hashlib.sha256(f"{seed}:{step}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def step_rows(n_memory: int, n_replay: int, *, step: int, spec: ConsolidationSpec) -> tuple[list[int], list[int]]:
    """The step's rows: round(ρ·B) replay rows, the rest memory rows, sampled with replacement."""
    rng = step_rng(spec.seed, step, "batch")
    k_replay = round(spec.replay_ratio * spec.batch_size) if n_replay else 0
    k_memory = spec.batch_size - k_replay
    return [rng.randrange(n_memory) for _ in range(k_memory)], [rng.randrange(n_replay) for _ in range(k_replay)]


def step_batch(memory: Sequence[Cue], replay: Sequence[Cue], *, step: int, spec: ConsolidationSpec) -> list[Cue]:
    """The on-policy step's cues (same sampling as :func:`step_rows`)."""
    mem_rows, rep_rows = step_rows(len(memory), len(replay), step=step, spec=spec)
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
    # Whether the general replay prompts go to the memory teacher's weights too (ReplaySpec.anchor_general).
    anchor_general: bool = False

    def reads(self, item: StudyItem) -> bool:
        """Whether the memory teacher's weights answer this row (memory rows; anchored general prompts).

        Every other row (earlier sleeps' prompts, and general ones unless anchored) is the teacher's:
        the model before this sleep.
        """
        return not item.replay or (self.anchor_general and item.kind == "general")

    def of(self, read: bool) -> tuple[list[str], contextlib.AbstractContextManager[Any]]:
        """The adapters and the weights (a context) that answer a row: the memory teacher's, or the teacher's."""
        return (self.memory_teacher, self.reading()) if read else (self.teacher, contextlib.nullcontext())


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
        spec: ConsolidationSpec,
        memory: Sequence[Cue],
        replay: Sequence[Cue],
        trainer: Trainer,
        knobs: LoopKnobs | None = None,
        judge: SemanticJudge = overlap_judge,
        teacher_backend: SamplingBackend | None = None,
        world: World | None = None,
    ) -> None:
        if not memory:
            raise ValueError("Knowledge Seeding needs at least one memory cue")
        self.model, self.tok, self.backend = model, tokenizer, backend
        self.roles, self.s, self.knobs = roles, spec, knobs or LoopKnobs()
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
        greedy = self.knobs.teacher_temperature <= 0
        todo = [c for c in dict.fromkeys(cues) if not (greedy and c in self._answer_cache)]
        fresh: dict[Cue, list[int]] = {}
        for read in (True, False):
            group = [c for c in todo if c.read == read]
            if not group:
                continue
            adapters, weights = self.roles.of(read)
            with weights:
                out = self.teacher_backend.generate(
                    [c.teacher_prompt for c in group],
                    max_new_tokens=self.s.max_new_tokens,
                    temperature=self.knobs.teacher_temperature,
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
        if self.knobs.teacher_temperature <= 0:
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
            # Memory cues (and anchored general ones) are answered by the memory teacher, the rest by the teacher.
            for read in (True, False):
                idx = [i for i, c in enumerate(cues) if c.read == read]
                if not idx:
                    continue
                adapters, weights = self.roles.of(read)
                with weights, active_adapters(self.model, adapters):
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
        chosen = [pool[rng.randrange(len(pool))] for _ in range(min(self.knobs.lti_prompts, len(pool)))]
        prompts, refs = [], []
        for cue, d in chosen:
            cut = rng.randrange(len(d))  # random prefix d_<cut of the teacher's answer
            prompts.append(cue.student_prompt + self.tok.decode(d[:cut], skip_special_tokens=True))
            refs.append(self.tok.decode(d[cut:], skip_special_tokens=True))
        g = self.s.imitation_group_size
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
        cues = step_batch(self.memory, self.replay, step=step, spec=self.s)
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
        spec: ConsolidationSpec,
        trainer: Trainer,
        world: World | None = None,
    ) -> None:
        if len(items) != len(targets):
            raise ValueError(f"{len(items)} study items but {len(targets)} teacher targets")
        self.model, self.tok, self.s, self.trainer = model, tokenizer, spec, trainer
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
        mem, rep = step_rows(len(self.memory_rows), len(self.replay_rows), step=step, spec=self.s)
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
