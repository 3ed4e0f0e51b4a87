"""Phase specs of a SleepCycle: memory, consolidation, dreaming, evaluation.

These are also the phase configs a workload receives (rendered into the Job's
ConfigMap), so the knobs keep the paper's names (α, β, λ, γ, z₀, m, k, b).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from reverie.api.base import ApiModel, StepRuntime, cel

# Compute precision of a training step (``workloads/ml/precision.py`` says what each means where).
Precision = Literal["fp32", "bf16"]


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the cycle's namespace."""

    name: str = Field(description="ConfigMap name.", min_length=1, max_length=253)
    key: str = Field(default="memories.jsonl", description="Key holding JSONL memories.", min_length=1, max_length=253)


ONE_MEMORY_KIND = (
    "uri, configMap, inline and inbox are alternatives; "
    "set exactly one of uri, configMap, inline or inbox in each memory source"
)
INBOX_IS_TRUE = "inbox may only be true (the lineage's inbox); remove it to use another kind of source"


class MemorySource(ApiModel):
    """One source of in-context memories; exactly one of uri, configMap, inline, inbox."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "[has(self.uri), has(self.configMap), has(self.inline), has(self.inbox)].filter(x, x).size() == 1",
                ONE_MEMORY_KIND,
            ),
            ("!has(self.inbox) || self.inbox", INBOX_IS_TRUE, ".inbox"),
        )
    )

    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="JSONL file or folder of JSONL files: a path in the store, file://, or s3:// (fsspec).",
    )
    config_map: ConfigMapKeyRef | None = Field(default=None, description="JSONL memories in a ConfigMap key.")
    inline: list[Annotated[str, StringConstraints(min_length=1, max_length=8192)]] | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Memory documents written inline (demos and tests).",
    )
    inbox: bool | None = Field(
        default=None,
        description=(
            "true: the memories in the lineage's inbox (spec.memory.inbox) that the base generation's ancestry "
            "has not consolidated, oldest first, at most maxPerSleep; the set is fixed when the cycle starts."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> MemorySource:
        if [self.uri, self.config_map, self.inline, self.inbox].count(None) != 3:
            raise ValueError(ONE_MEMORY_KIND)
        if self.inbox is False:
            raise ValueError(INBOX_IS_TRUE)
        return self


class MemorySpec(ApiModel):
    """The knowledge the serving model only holds in context, to be consolidated."""

    sources: list[MemorySource] = Field(min_length=1, max_length=64, description="Where the memories come from.")
    chunk_documents: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Documents the teacher sees in context at once (small chunks recall far better).",
    )

    @property
    def uses_inbox(self) -> bool:
        """True when a source is the lineage's inbox (the set is then fixed when the cycle starts)."""
        return any(source.inbox for source in self.sources)


class ZeroStage(StrEnum):
    NONE = "0"
    TWO = "2"
    THREE = "3"


class ReplayChoice(StrEnum):
    FORGOTTEN = "forgotten"
    UNIFORM = "uniform"
    ALL = "all"


class TeacherChoice(StrEnum):
    CHAMPION = "champion"
    BASE = "base"


class ReplaySpec(ApiModel):
    """What a sleep rehearses of earlier sleeps: a fixed budget of their stored self-study items."""

    items: int = Field(
        default=96,
        ge=0,
        le=100_000,
        description="Earlier sleeps' self-study items replayed per sleep, whatever the lineage's age "
        "(0: none; the built-in general prompts are replayed beside them either way). Their teacher "
        "targets were cached when they were made: a replayed item costs no teacher pass.",
    )
    choose: ReplayChoice = Field(
        default=ReplayChoice.FORGOTTEN,
        description="forgotten: items of the earlier memories the model now knows least (its loss on one "
        "stored item per memory) are drawn more often; uniform: every stored item alike; all: every stored "
        "item, ignoring the budget (the cost grows with the lineage's age).",
    )
    general_prompts: int = Field(
        default=20,
        ge=0,
        le=60,
        description="Built-in general requests replayed per sleep (the first N of 60: short questions and "
        "instructions, none from the general-QA evaluation), beside the earlier sleeps' items; they hold "
        "the model's everyday answers in place (0: none). bench/science/RESULTS.md: 60 kept general QA at "
        "100 % over three sleeps of six people (88 % with 20) but not on 20 people a sleep, where "
        "perplexity rose more, so the default stays 20.",
    )
    anchor_general: bool = Field(
        default=True,
        description="Answer the general replay prompts with the memory teacher's weights (with teacher: base, "
        "the lineage's root) instead of the champion's: each new slot is pulled back to the root's general "
        "answers, so drift on general text does not compound sleep over sleep (bench/science/RESULTS.md: "
        "perplexity +4 % instead of +18 % after three sleeps, recall and general QA the same). false: the "
        "champion answers them (each sleep keeps the model as it was before that sleep). With teacher: "
        "champion the two are one.",
    )


class ConsolidationSpec(ApiModel):
    """Knowledge Seeding: expand with a new expert slot, then distil the in-context teacher
    (the smaller self) into it: forward KL on the teacher's self-study answers first,
    then optionally on-policy distillation + Learning-to-Imitate."""

    expert_rank: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="d_low, rank of the new low-rank expert slot (32: the rank that injected facts in bench/science).",
    )
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        max_length=16,
        description="Module names that receive the new slot (default: every attention and MLP projection).",
    )
    items_per_memory: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Self-study items kept per memory: teacher-written prompts with grounded teacher answers.",
    )
    fact_floor: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Items each fact of a memory (a clause of a sentence) must be carried by; a fact below it is "
        "topped up with items built from the fact: the blank over it, then the reverse direction (0: no top-up; "
        "2: quickstart recall 0.35 -> 0.60 of a 0.85 bound, bench/science/LOG.md).",
    )
    top_k: int = Field(
        default=20,
        ge=1,
        le=256,
        description="Teacher log-probs cached per answer token for the forward-KL term (Cartridges: 20).",
    )
    ce_weight: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description="Weight of cross-entropy on the teacher's answer tokens beside forward KL (0: KL only).",
    )
    alpha: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="α (on-policy stage): weight of distillation; 1 − α goes to Learning-to-Imitate.",
    )
    beta: float = Field(
        default=0.5, ge=0.0, le=1.0, description="β of the on-policy generalized JSD (0 forward KL, 1 reverse KL)."
    )
    lam: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        alias="lambda",
        description="λ (on-policy stage): share of student-sampled sequences.",
    )
    gamma: float = Field(
        default=0.5, ge=0.0, le=1.0, description="γ: weight of semantic equivalence in the imitation reward."
    )
    z0: float = Field(
        default=0.5, ge=0.0, le=1.0, description="z₀: normalised edit distance above which the edit reward is 0."
    )
    teacher: TeacherChoice = Field(
        default=TeacherChoice.BASE,
        description="Who reads each new memory as the teacher. base: the lineage's root weights with no slot, "
        "whose reading does not decay as the lineage ages (bench/science/RESULTS.md: more new recall and "
        "retention over four sleeps). champion: the model before this sleep, every earlier slot on (the "
        "paper's smaller self). Replayed prompts keep the champion's targets either way; general prompts too "
        "unless replay.anchorGeneral.",
    )
    replay_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=0.9,
        description="ρ: share of each batch that rehearses long-term knowledge (forward KL to the model before the "
        "sleep). 0.5: three sleeps keep every earlier sleep's recall (109 %, 0.25: 72 %) at about the same new recall "
        "(bench/science/RESULTS.md).",
    )
    replay: ReplaySpec = Field(
        default_factory=ReplaySpec,
        description="Which of earlier sleeps' items the replay share rehearses (a fixed budget, see ReplaySpec).",
    )
    steps: int = Field(
        default=120, ge=1, le=1_000_000, description="Optimiser steps of the off-policy (self-study) stage."
    )
    on_policy_steps: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Steps of the second, on-policy stage (generalized JSD + Learning-to-Imitate); 0: off.",
    )
    on_policy_threshold: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="The on-policy stage runs only if the student already agrees this much (token F1) with the teacher.",
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="Sequences per step, in all: on N processes each takes its share (the same rows as one process).",
    )
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0, description="AdamW learning rate of the new slot.")
    max_new_tokens: int = Field(
        default=48, ge=1, le=8192, description="Tokens per teacher answer, on-policy sequence or dream."
    )
    temperature: float = Field(default=1.0, gt=0.0, le=2.0, description="Sampling temperature of on-policy sequences.")
    imitation_group_size: int = Field(
        default=4, ge=2, le=64, description="G: student completions per dream prefix (group baseline)."
    )
    zero_stage: ZeroStage = Field(default=ZeroStage.NONE, description="DeepSpeed ZeRO stage: 0 (plain torch), 2 or 3.")
    precision: Precision = Field(
        default="fp32",
        description="Compute precision of the step: fp32, or bf16 (bf16 weights on GPUs; on CPUs fp32 weights "
        "with bf16 autocast: faster long-sequence steps where the CPU has AVX512-BF16 or AMX).",
    )
    checkpoint_every: int = Field(default=50, ge=1, le=1_000_000, description="Steps between checkpoints.")
    recall_probes: int = Field(
        default=24,
        ge=0,
        le=600,
        description="Held-out questions the phase asks itself before and after training, for a quick recall "
        "figure in its result (memory_recall_*); 0: none (the evaluation phase asks every question anyway).",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of data order and sampling.")
    runtime: StepRuntime = Field(default_factory=StepRuntime, description="Where the consolidation Job runs.")


class SamplingBackendKind(StrEnum):
    HF = "hf"
    VLLM = "vllm"


class DreamProbeKind(StrEnum):
    UPDATE = "update"
    GRADIENT = "gradient"


class GrpoSpec(ApiModel):
    """GRPO variant of dream training, for verifiable domains (TRL, vLLM on GPU)."""

    enabled: bool = Field(default=False, description="Train the dream generator with GRPO instead of ReST-EM.")
    num_generations: int = Field(default=8, ge=2, le=64, description="Completions per prompt.")
    beta: float = Field(default=0.0, ge=0.0, le=1.0, description="KL penalty to the reference model.")


DREAMS_KEPT_EXCEED_GENERATED = (
    "topK + randomExtra must not exceed dreamsPerContext (dreams kept <= dreams generated); "
    "lower topK/randomExtra or raise dreamsPerContext"
)


class DreamingSpec(ApiModel):
    """Dreaming: the model writes its own curriculum, keeps what helps, learns from it."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!self.enabled || self.topK + self.randomExtra <= self.dreamsPerContext",
                DREAMS_KEPT_EXCEED_GENERATED,
                ".topK",
            ),
        )
    )

    enabled: bool = Field(
        default=False,
        description="Run the dreaming phase (false: go straight to evaluation). Off by default: on SmolLM2-135M, "
        "a first sleep of 20 people, it raised held-out recall from 0.37 to 0.61 of a 0.73 bound with perplexity "
        "at the base's, but general QA fell to 82 % and the sleep took 19 min instead of 8 on 2 CPU cores "
        "(bench/science/RESULTS.md).",
    )
    dreams_per_context: int = Field(
        default=4,
        ge=1,
        le=256,
        description="m: candidate dreams per weak fact (the reverse question, the blank, a contrast with the "
        "confused memory, then phrasings the model writes).",
    )
    top_k: int = Field(default=2, ge=0, le=256, description="k: dreams per weak fact kept by gradient importance.")
    random_extra: int = Field(
        default=1, ge=0, le=256, description="b: dreams per weak fact kept at random for diversity."
    )
    quiz_questions: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Self-quiz questions the teacher writes per memory (besides one recital); never an evaluation "
        "question.",
    )
    weak_below: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="A self-quiz answer whose span agreement with the teacher's is below this marks the facts it "
        "missed as weak.",
    )
    facts_per_memory: int = Field(
        default=2, ge=1, le=64, description="Weak facts per memory that dreaming aims at (most missed first)."
    )
    replay_tolerance: float = Field(
        default=0.02,
        ge=0.0,
        le=10.0,
        description="How far (nats per token) a dream's isolated update may lower the guard — the model's own "
        "general answers and other memories' recitals — and still be rewarded.",
    )
    noise_expert_scale: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Scale of the random extra expert switched on while dreaming (0: off).",
    )
    probe_rank: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Rank of a probe: the isolated, throw-away LoRA update that tests one dream.",
    )
    probe_steps: int = Field(default=5, ge=1, le=1000, description="SFT steps of a probe on its one dream.")
    probe: DreamProbeKind = Field(
        default=DreamProbeKind.GRADIENT,
        description="How a kept dream's reward is measured. update: the isolated LoRA update itself (probeSteps "
        "steps on the dream alone, then τ and the guard measured again). gradient: that update's first-order "
        "change, probeSteps·η·⟨∇τ, sign ∇L_dream⟩ (Adam's step) on the dreaming slot, from the gradient the "
        "importance already takes; on SmolLM2-135M it tracked the update's τ gain at r = 0.96 and agreed on 80 of "
        "82 rewards, at a fraction of the time (bench/science/RESULTS.md).",
    )
    slot_rank: int = Field(
        default=8,
        ge=1,
        le=256,
        description="Rank of the dreaming slot: the LoRA expert this step trains and adds to the generation.",
    )
    m_step_epochs: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Passes over the rewarded dreams in each M-step (SFT of the dreaming slot).",
    )
    inner_learning_rate: float = Field(
        default=3e-4,
        gt=0.0,
        le=1.0,
        description="Learning rate of the probes, the M-step and GRPO (1e-3 cost a quarter of the general QA on "
        "SmolLM2-135M; bench/science/LOG.md).",
    )
    rest_em_iterations: int = Field(
        default=1, ge=0, le=20, description="ReST-EM rounds (E: sample and reward, M: SFT on rewarded dreams)."
    )
    backend: SamplingBackendKind = Field(
        default=SamplingBackendKind.HF, description="Sampling backend of the dreams: vllm (GPU image) or hf."
    )
    temperature: float = Field(default=0.8, gt=0.0, le=2.0, description="Dream sampling temperature.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Dream nucleus sampling top-p.")
    max_new_tokens: int = Field(default=64, ge=1, le=8192, description="Tokens per dream.")
    grpo: GrpoSpec = Field(default_factory=GrpoSpec, description="GRPO settings for verifiable domains.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of sampling and selection.")
    runtime: StepRuntime = Field(default_factory=StepRuntime, description="Where the dreaming Job runs.")

    @model_validator(mode="after")
    def _keep_at_most_what_was_dreamt(self) -> DreamingSpec:
        if self.enabled and self.top_k + self.random_extra > self.dreams_per_context:
            raise ValueError(DREAMS_KEPT_EXCEED_GENERATED)
        return self


class Suite(StrEnum):
    KNOWLEDGE_INCORPORATION = "knowledge_incorporation"
    INCONTEXT_UPPER_BOUND = "incontext_upper_bound"
    RETENTION = "retention"
    FEWSHOT = "fewshot"
    PERPLEXITY = "perplexity"


GATE_RULE_PATTERN = (
    r"^\s*[a-z_][a-z0-9_]*\s*(>=|<=|>|<)\s*"
    r"(champion(\s*[+-]\s*[0-9]+(\.[0-9]+)?)?|-?[0-9]+(\.[0-9]+)?)\s*$"
)


GateRule = Annotated[str, StringConstraints(pattern=GATE_RULE_PATTERN, max_length=256)]


class GateSpec(ApiModel):
    """Promotion gate: every rule must hold; missing or NaN metrics never pass."""

    rules: list[GateRule] = Field(
        default_factory=lambda: ["knowledge_incorporation >= champion", "retention >= champion - 0.05"],
        max_length=32,
        description="Rules '<metric> <op> <number>' or '<metric> <op> champion [+|- <number>]', op one of >= > <= <.",
    )


class EvaluationSpec(ApiModel):
    """Evaluation suites whose metrics the gate reads."""

    suites: list[Suite] = Field(
        default_factory=lambda: list(Suite),
        min_length=1,
        max_length=5,
        description="Suites to run.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    questions_per_memory: int = Field(
        default=3, ge=1, le=64, description="Closed-book questions derived per memory document."
    )
    max_new_tokens: int = Field(default=24, ge=1, le=1024, description="Tokens generated per answer.")
    gate: GateSpec = Field(default_factory=GateSpec, description="Rules deciding promotion.")
    runtime: StepRuntime = Field(default_factory=StepRuntime, description="Where the evaluation Job runs.")

    @model_validator(mode="after")
    def _suites_are_a_set(self) -> EvaluationSpec:
        # The CRD lists suites as x-kubernetes-list-type: set; say the same here.
        duplicates = sorted({s for s in self.suites if self.suites.count(s) > 1})
        if duplicates:
            raise ValueError(f"suites lists {', '.join(map(str, duplicates))} more than once; list each suite once")
        return self
