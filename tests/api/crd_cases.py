"""Valid base manifests and the malformed variants the API server must reject.

Each malformed case names the field path the server's error must name and a
fragment of the message that says what to fix.  Shared by the server tests and
by the model tests (the pydantic models must agree with the CRD on every case
they can judge without a cluster).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

LINEAGE_NAME = "assistant"


def sleepcycle(name: str = "night") -> dict[str, Any]:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "SleepCycle",
        "metadata": {"name": name},
        "spec": {
            "lineageRef": LINEAGE_NAME,
            "memory": {"sources": [{"inline": ["The cafe opens at 7:30."]}]},
        },
    }


def modellineage(name: str = LINEAGE_NAME) -> dict[str, Any]:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "builtin:tiny"},
            "store": {"uri": "file:///store"},
        },
    }


_DELETE = object()


def patched(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``base`` with the dotted ``path`` set to ``value`` (or removed, for ``_DELETE``)."""
    out = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return out


@dataclass(frozen=True)
class Malformed:
    """One manifest the API server must reject, and what its error must say."""

    id: str
    manifest: dict[str, Any]
    field: str
    message: str
    # False where only the API server can judge (object names, field types
    # pydantic coerces); the model tests skip those.
    model_rejects: bool = True


def _sc(case_id: str, path: str, value: Any, field: str, message: str, **kw: Any) -> Malformed:
    return Malformed(case_id, patched(sleepcycle(), path, value), field, message, **kw)


def _ml(case_id: str, path: str, value: Any, field: str, message: str, **kw: Any) -> Malformed:
    return Malformed(case_id, patched(modellineage(), path, value), field, message, **kw)


def _scheduled(template_patch: tuple[str, Any] | None = None) -> dict[str, Any]:
    template = sleepcycle()["spec"]
    if template_patch is not None:
        template = patched({"t": template}, "t." + template_patch[0], template_patch[1])["t"]
    return patched(modellineage(), "spec.schedule", {"cron": "0 3 * * *", "template": template})


RESOURCES = "spec.consolidation.runtime.resources"

MALFORMED: list[Malformed] = [
    # -- SleepCycle: required fields and names
    _sc("sc-no-spec", "spec", _DELETE, "spec", "Required value"),
    _sc("sc-no-lineageRef", "spec.lineageRef", _DELETE, "spec.lineageRef", "Required value"),
    _sc("sc-lineageRef-not-dns", "spec.lineageRef", "My_Lineage", "spec.lineageRef", "should match"),
    _sc("sc-lineageRef-too-long", "spec.lineageRef", "a" * 64, "spec.lineageRef", "Too long"),
    _sc("sc-no-memory", "spec.memory", _DELETE, "spec.memory", "Required value"),
    # Every phase Job and pod carries the cycle's name in a label (at most 63 characters).
    Malformed(
        "sc-name-64", sleepcycle("c" * 64), "metadata.name", "may not be more than 63 characters", model_rejects=False
    ),
    # -- memory
    _sc("sc-memory-no-sources", "spec.memory.sources", [], "spec.memory.sources", "at least 1 items"),
    _sc(
        "sc-memory-two-kinds",
        "spec.memory.sources",
        [{"uri": "a.jsonl", "inline": ["x"]}],
        "spec.memory.sources[0]",
        "exactly one of uri, configMap, inline or inbox",
    ),
    _sc(
        "sc-memory-empty-source",
        "spec.memory.sources",
        [{}],
        "spec.memory.sources[0]",
        "exactly one of uri, configMap, inline or inbox",
    ),
    _sc(
        "sc-memory-inbox-and-uri",
        "spec.memory.sources",
        [{"inbox": True, "uri": "a.jsonl"}],
        "spec.memory.sources[0]",
        "exactly one of uri, configMap, inline or inbox",
    ),
    _sc(
        "sc-memory-inbox-false",
        "spec.memory.sources",
        [{"inbox": False}],
        "spec.memory.sources[0].inbox",
        "inbox may only be true",
    ),
    _sc(
        "sc-memory-configmap-no-name",
        "spec.memory.sources",
        [{"configMap": {"key": "m.jsonl"}}],
        "spec.memory.sources[0].configMap.name",
        "Required value",
    ),
    _sc(
        "sc-memory-chunk-zero",
        "spec.memory.chunkDocuments",
        0,
        "spec.memory.chunkDocuments",
        "greater than or equal to 1",
    ),
    # -- consolidation
    _sc(
        "sc-alpha-above-1", "spec.consolidation", {"alpha": 1.5}, "spec.consolidation.alpha", "less than or equal to 1"
    ),
    _sc(
        "sc-lambda-negative",
        "spec.consolidation",
        {"lambda": -0.1},
        "spec.consolidation.lambda",
        "greater than or equal to 0",
    ),
    _sc("sc-lr-zero", "spec.consolidation", {"learningRate": 0}, "spec.consolidation.learningRate", "greater than 0"),
    _sc(
        "sc-replay-ratio-above-0.9",
        "spec.consolidation",
        {"replayRatio": 0.95},
        "spec.consolidation.replayRatio",
        "less than or equal to 0.9",
    ),
    _sc(
        "sc-zero-stage-1",
        "spec.consolidation",
        {"zeroStage": "1"},
        "spec.consolidation.zeroStage",
        'supported values: "0", "2", "3"',
    ),
    _sc(
        "sc-precision-fp16",
        "spec.consolidation",
        {"precision": "fp16"},
        "spec.consolidation.precision",
        'supported values: "fp32", "bf16"',
    ),
    _sc(
        "sc-steps-string",
        "spec.consolidation",
        {"steps": "many"},
        "spec.consolidation.steps",
        "must be of type integer",
    ),
    _sc(
        "sc-no-target-modules",
        "spec.consolidation",
        {"targetModules": []},
        "spec.consolidation.targetModules",
        "at least 1 items",
    ),
    _sc("sc-unknown-field", "spec.consolidation", {"learnRate": 0.1}, "spec.consolidation.learnRate", "unknown field"),
    # -- runtime and resources
    _sc(
        "sc-runtime-zero-nodes",
        "spec.consolidation",
        {"runtime": {"numNodes": 0}},
        "spec.consolidation.runtime.numNodes",
        "greater than or equal to 1",
    ),
    _sc(
        "sc-runtime-engine",
        "spec.consolidation",
        {"runtime": {"engine": "Pod"}},
        "spec.consolidation.runtime.engine",
        'supported values: "Job", "TrainJob", "JobSet"',
    ),
    _sc(
        "sc-quantity-malformed",
        "spec.consolidation",
        {"runtime": {"resources": {"requests": {"cpu": "lots"}}}},
        f"{RESOURCES}.requests.cpu",
        "should match",
    ),
    _sc(
        "sc-limit-below-request",
        "spec.consolidation",
        {"runtime": {"resources": {"requests": {"memory": "16Gi"}, "limits": {"memory": "8Gi"}}}},
        f"{RESOURCES}.limits",
        "every limit must be >= its request",
    ),
    # -- dreaming
    _sc(
        "sc-dreams-kept-exceed-generated",
        "spec.dreaming",
        {"enabled": True, "dreamsPerContext": 4, "topK": 4, "randomExtra": 1},
        "spec.dreaming.topK",
        "must not exceed dreamsPerContext",
    ),
    _sc(
        "sc-dream-backend",
        "spec.dreaming",
        {"backend": "tgi"},
        "spec.dreaming.backend",
        'supported values: "hf", "vllm"',
    ),
    _sc(
        "sc-dream-temperature-zero", "spec.dreaming", {"temperature": 0}, "spec.dreaming.temperature", "greater than 0"
    ),
    # -- evaluation and gate
    _sc("sc-no-suites", "spec.evaluation", {"suites": []}, "spec.evaluation.suites", "at least 1 items"),
    _sc("sc-unknown-suite", "spec.evaluation", {"suites": ["mmlu"]}, "spec.evaluation.suites[0]", "Unsupported value"),
    _sc(
        "sc-duplicate-suite",
        "spec.evaluation",
        {"suites": ["retention", "retention"]},
        "spec.evaluation.suites[1]",
        "Duplicate value",
    ),
    _sc(
        "sc-gate-rule-prose",
        "spec.evaluation",
        {"gate": {"rules": ["accuracy is good"]}},
        "spec.evaluation.gate.rules[0]",
        "should match",
    ),
    _sc(
        "sc-gate-rule-equals",
        "spec.evaluation",
        {"gate": {"rules": ["retention == champion"]}},
        "spec.evaluation.gate.rules[0]",
        "should match",
    ),
    # -- promotion, retries, lifecycle, scheduling
    _sc(
        "sc-promotion-policy",
        "spec.promotion",
        {"policy": "yolo"},
        "spec.promotion.policy",
        'supported values: "auto", "manual"',
    ),
    _sc(
        "sc-on-inconclusive",
        "spec.promotion",
        {"onInconclusive": "Promote"},
        "spec.promotion.onInconclusive",
        "Unsupported value",
    ),
    _sc(
        "sc-retries-zero", "spec.retries", {"maxAttempts": 0}, "spec.retries.maxAttempts", "greater than or equal to 1"
    ),
    _sc(
        "sc-backoff-cap-below-start",
        "spec.retries",
        {"backoffSeconds": 600, "maxBackoffSeconds": 60},
        "spec.retries.maxBackoffSeconds",
        "maxBackoffSeconds must be >= backoffSeconds",
    ),
    _sc(
        "sc-ttl-negative",
        "spec.ttlSecondsAfterFinished",
        -1,
        "spec.ttlSecondsAfterFinished",
        "greater than or equal to 0",
    ),
    # pydantic reads "yes" as true; the API server insists on a boolean.
    _sc("sc-suspend-string", "spec.suspend", "yes", "spec.suspend", "must be of type boolean", model_rejects=False),
    _sc(
        "sc-toleration-exists-with-value",
        "spec.scheduling",
        {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
        "spec.scheduling.tolerations[0].value",
        "value must be empty when operator is Exists",
    ),
    _sc(
        "sc-toleration-effect",
        "spec.scheduling",
        {"tolerations": [{"key": "gpu", "effect": "Sometimes"}]},
        "spec.scheduling.tolerations[0].effect",
        "Unsupported value",
    ),
    # -- ModelLineage
    _ml("ml-no-base-model", "spec.baseModel", _DELETE, "spec.baseModel", "Required value"),
    _ml(
        "ml-base-model-format",
        "spec.baseModel",
        {"uri": "s3://m/", "format": "gguf"},
        "spec.baseModel.format",
        'supported values: "hf"',
    ),
    _ml("ml-empty-store-uri", "spec.store", {"uri": ""}, "spec.store.uri", "at least 1 chars long"),
    _ml(
        "ml-inbox-zero-per-sleep",
        "spec.memory",
        {"inbox": {"maxPerSleep": 0}},
        "spec.memory.inbox.maxPerSleep",
        "greater than or equal to 1",
    ),
    _ml("ml-store-endpoint-no-scheme", "spec.store.endpoint", "minio:9000", "spec.store.endpoint", "should match"),
    _ml(
        "ml-staging-cache-two-volumes",
        "spec.store.stagingCache",
        {"hostPath": "/var/cache/r", "pvcName": "c"},
        "spec.store.stagingCache",
        "set hostPath or pvcName, not both",
    ),
    _ml("ml-history-limit-1", "spec.historyLimit", 1, "spec.historyLimit", "greater than or equal to 2"),
    _ml("ml-rollback-not-dns", "spec.rollbackTo", "Gen 1", "spec.rollbackTo", "should match"),
    _ml(
        "ml-serving-deployment-no-env",
        "spec.servingTarget",
        {"kind": "Deployment", "name": "web", "container": "server"},
        "spec.servingTarget",
        "kind Deployment needs container and env",
    ),
    _ml(
        "ml-serving-configmap-no-key",
        "spec.servingTarget",
        {"kind": "ConfigMap", "name": "model"},
        "spec.servingTarget",
        "kind ConfigMap needs key",
    ),
    _ml(
        "ml-serving-kind",
        "spec.servingTarget",
        {"kind": "Service", "name": "web"},
        "spec.servingTarget.kind",
        "Unsupported value",
    ),
    Malformed(
        "ml-cron-prose",
        patched(_scheduled(), "spec.schedule.cron", "every night"),
        "spec.schedule.cron",
        "should match",
    ),
    Malformed(
        "ml-concurrency-policy",
        patched(_scheduled(), "spec.schedule.concurrencyPolicy", "Allow"),
        "spec.schedule.concurrencyPolicy",
        'supported values: "Forbid", "Replace"',
    ),
    Malformed(
        "ml-template-inbox-without-inbox",
        _scheduled(("memory.sources", [{"inbox": True}])),
        "spec.schedule.template.memory.sources",
        "names the inbox but the lineage has none",
    ),
    Malformed(
        "ml-template-other-lineage",
        _scheduled(("lineageRef", "other")),
        "spec.schedule.template.lineageRef",
        "must name this ModelLineage",
        model_rejects=False,
    ),
    # Names that cannot work downstream are refused with the lineage itself: a cycle's lineageRef
    # is at most 63, and a scheduled cycle is named <lineage>-<yyyymmddhhmm>.
    Malformed(
        "ml-name-64", modellineage("l" * 64), "metadata.name", "may not be more than 63 characters", model_rejects=False
    ),
    Malformed(
        "ml-scheduled-name-51",
        patched(patched(_scheduled(), "metadata.name", "l" * 51), "spec.schedule.template.lineageRef", "l" * 51),
        "metadata.name",
        "with spec.schedule may not be more than 50 characters",
        model_rejects=False,
    ),
    Malformed(
        "ml-template-dreaming-rule",
        _scheduled(("dreaming", {"enabled": True, "dreamsPerContext": 1, "topK": 2})),
        "spec.schedule.template.dreaming.topK",
        "must not exceed dreamsPerContext",
    ),
]


# Updates that change an immutable field: (kind, path, new value, field named, message).
IMMUTABLE = [
    ("sleepcycle", "spec.lineageRef", "other", "spec.lineageRef", "lineageRef is immutable"),
    ("sleepcycle", "spec.baseGeneration", "gen-3", "spec.baseGeneration", "baseGeneration is immutable"),
    (
        "sleepcycle",
        "spec.memory",
        {"sources": [{"uri": "other.jsonl"}]},
        "spec.memory",
        "memory is immutable",
    ),
    ("modellineage", "spec.baseModel", {"uri": "s3://other/"}, "spec.baseModel", "baseModel is immutable"),
    ("modellineage", "spec.store", {"uri": "s3://other-store/"}, "spec.store.uri", "store.uri is immutable"),
]
