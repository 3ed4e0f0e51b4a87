"""Promotion on the real API server: generation 0, record → promote, exactly-once
across a restart, racing promotions (one winner, no lost generation), and the
serving hand-off to an InferenceService, a Deployment and a ConfigMap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from reverie.controller import metrics, promotion, serving
from reverie.controller.kube import CONFIGMAPS, JOBS, MODELLINEAGES, Kube
from reverie.controller.lineage_status import LineageNotFound

from .conftest import condition, eventually, finish_export, lineage_manifest, lineage_status

pytestmark = pytest.mark.cluster
# Where the champion's servable forms are written (store file:///store, lineage demo).
MERGED = "file:///store/demo/servable/gen-1/merged"
ADAPTER = "file:///store/demo/servable/gen-1/adapter"


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def make_lineage(api: Kube, namespace: str, name: str = "demo", **spec: Any) -> None:
    await api.create(MODELLINEAGES, namespace, lineage_manifest(name, namespace, **spec))


async def record(api: Kube, namespace: str, cycle: str, *, parent: str | None = "gen-0", lineage: str = "demo") -> str:
    return await promotion.record_candidate(
        api,
        namespace=namespace,
        lineage=lineage,
        cycle=cycle,
        uri=f"file:///store/demo/{cycle}/dreaming",
        content_hash=f"sha256:{cycle}",
        parent=parent,
        scores={"retention": 0.91, "knowledge_incorporation": 0.8},
    )


async def test_record_then_promote_moves_the_champion_and_keeps_the_history(api: Kube, namespace: str) -> None:
    await make_lineage(api, namespace)
    before = sample("reverie_promotions_total", namespace=namespace, lineage="demo")
    gen = await record(api, namespace, "c1")
    assert gen == "gen-1"
    status = await lineage_status(api, namespace, "demo")
    assert [(g["name"], g["state"]) for g in status["generations"]] == [("gen-0", "Champion"), ("gen-1", "Candidate")]
    result = await promotion.promote(api, namespace=namespace, lineage="demo", cycle="c1")
    assert result.kind == "Promoted"
    status = await lineage_status(api, namespace, "demo")
    assert status["champion"] == "gen-1" and status["championUri"] == "file:///store/demo/c1/dreaming"
    g1 = status["generations"][1]
    assert (g1["parent"], g1["cycle"], g1["contentHash"], g1["scores"]["retention"]) == (
        "gen-0",
        "c1",
        "sha256:c1",
        0.91,
    )
    assert g1["promotedAt"] and status["generations"][0]["state"] == "Retired"
    assert sample("reverie_promotions_total", namespace=namespace, lineage="demo") == before + 1
    assert sample("reverie_champion_info", namespace=namespace, lineage="demo", generation="gen-1") == 1
    assert sample("reverie_champion_generation", namespace=namespace, lineage="demo") == 1


async def test_restart_between_record_and_promote_completes_exactly_once(
    cluster: Any, api: Kube, namespace: str
) -> None:
    await make_lineage(api, namespace)
    before = sample("reverie_promotions_total", namespace=namespace, lineage="demo")
    # The first operator records the candidate and dies before promoting ...
    assert await record(api, namespace, "c1") == "gen-1"
    await api.close()
    # ... the restarted one (a new client, no memory) replays the cycle's actions.
    restarted = Kube.from_kubeconfig(str(cluster.kubeconfig))
    try:
        assert await record(restarted, namespace, "c1") == "gen-1"
        first = await promotion.promote(restarted, namespace=namespace, lineage="demo", cycle="c1")
        # and dies again after the promotion landed but before the cycle's status said so.
        again = await promotion.promote(restarted, namespace=namespace, lineage="demo", cycle="c1")
    finally:
        await restarted.close()
    assert (first.kind, again.kind) == ("Promoted", "AlreadyChampion") and again.promoted
    status = await lineage_status(api, namespace, "demo")
    assert [g["name"] for g in status["generations"]] == ["gen-0", "gen-1"]
    assert status["nextGeneration"] == 2 and status["champion"] == "gen-1"
    assert sample("reverie_promotions_total", namespace=namespace, lineage="demo") == before + 1


class InterleavedKube(Kube):
    """A client whose first status write is preceded by another writer's complete update.

    It read the lineage before the other writer wrote, so its PUT carries a stale
    resourceVersion: the API server answers 409 and it must retry against fresh state.
    """

    def __init__(self, configuration: Any, before_first_write: Any) -> None:
        super().__init__(configuration)
        self.before_first_write = before_first_write
        self.status_writes = 0

    async def replace_status(self, res: Any, namespace: str | None, obj: Any) -> Any:
        self.status_writes += 1
        if self.status_writes == 1:
            await self.before_first_write()
        return await super().replace_status(res, namespace, obj)


async def test_two_racing_promotions_have_exactly_one_winner(cluster: Any, api: Kube, namespace: str) -> None:
    await make_lineage(api, namespace)
    await record(api, namespace, "a")
    await record(api, namespace, "b")
    b_result: list[Any] = []

    async def b_promotes_first() -> None:
        b_result.append(await promotion.promote(api, namespace=namespace, lineage="demo", cycle="b"))

    racer = InterleavedKube(Kube.from_kubeconfig(str(cluster.kubeconfig)).configuration, b_promotes_first)
    try:
        a_result = await promotion.promote(racer, namespace=namespace, lineage="demo", cycle="a")
    finally:
        await racer.close()
    # a's first PUT was stale (409); its retry saw b's promotion and lost the compare-and-set.
    assert racer.status_writes == 2
    assert b_result[0].kind == "Promoted" and b_result[0].generation == "gen-2"
    assert a_result.kind == "StaleParent" and "champion is now gen-2" in a_result.message
    status = await lineage_status(api, namespace, "demo")
    states = {g["name"]: g["state"] for g in status["generations"]}
    assert states == {"gen-0": "Retired", "gen-1": "Rejected", "gen-2": "Champion"}


async def test_gathered_promotions_from_two_clients_have_one_winner(cluster: Any, api: Kube, namespace: str) -> None:
    await make_lineage(api, namespace)
    await record(api, namespace, "a")
    await record(api, namespace, "b")
    other = Kube.from_kubeconfig(str(cluster.kubeconfig))
    try:
        ra, rb = await asyncio.gather(
            promotion.promote(api, namespace=namespace, lineage="demo", cycle="a"),
            promotion.promote(other, namespace=namespace, lineage="demo", cycle="b"),
        )
    finally:
        await other.close()
    assert sorted([ra.kind, rb.kind]) == ["Promoted", "StaleParent"]
    status = await lineage_status(api, namespace, "demo")
    assert [g["state"] for g in status["generations"]].count("Champion") == 1


async def test_a_conflicting_record_is_retried_and_no_generation_is_lost(
    cluster: Any, api: Kube, namespace: str
) -> None:
    await make_lineage(api, namespace)
    await promotion.ensure_base(api, namespace=namespace, lineage="demo")
    other: list[str] = []

    async def b_records_first() -> None:
        other.append(await record(api, namespace, "b"))

    racer = InterleavedKube(Kube.from_kubeconfig(str(cluster.kubeconfig)).configuration, b_records_first)
    try:
        mine = await record(racer, namespace, "a")
    finally:
        await racer.close()
    assert racer.status_writes == 2
    assert (other[0], mine) == ("gen-1", "gen-2")
    status = await lineage_status(api, namespace, "demo")
    assert [(g["name"], g["cycle"]) for g in status["generations"][1:]] == [("gen-1", "b"), ("gen-2", "a")]
    assert status["nextGeneration"] == 3


async def test_many_concurrent_records_get_distinct_generations(cluster: Any, api: Kube, namespace: str) -> None:
    await make_lineage(api, namespace)
    clients = [Kube.from_kubeconfig(str(cluster.kubeconfig)) for _ in range(6)]
    try:
        names = await asyncio.gather(*(record(c, namespace, f"c{i}") for i, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()
    assert sorted(names) == sorted(f"gen-{i}" for i in range(1, 7))
    status = await lineage_status(api, namespace, "demo")
    assert len(status["generations"]) == 7 and status["nextGeneration"] == 7


async def test_reject_marks_the_candidate(api: Kube, namespace: str) -> None:
    await make_lineage(api, namespace)
    await record(api, namespace, "c1")
    await promotion.reject(api, namespace=namespace, lineage="demo", cycle="c1")
    status = await lineage_status(api, namespace, "demo")
    assert status["generations"][1]["state"] == "Rejected" and status["champion"] == "gen-0"


async def test_promotion_into_a_missing_lineage_says_so(api: Kube, namespace: str) -> None:
    with pytest.raises(LineageNotFound, match="not found"):
        await record(api, namespace, "c1", lineage="nope")


async def test_two_hundred_promotions_keep_the_object_small(api: Kube, namespace: str) -> None:
    await make_lineage(api, namespace, historyLimit=20)
    parent = "gen-0"
    for i in range(1, 41):  # 40 real round trips; the pure test covers 200
        gen = await record(api, namespace, f"lineage-cycle-{i:04d}", parent=parent)
        result = await promotion.promote(api, namespace=namespace, lineage="demo", cycle=f"lineage-cycle-{i:04d}")
        assert result.kind == "Promoted"
        parent = gen
    obj = await api.get(MODELLINEAGES, namespace, "demo")
    assert len(obj["status"]["generations"]) == 20 and obj["status"]["dropped"]["count"] == 21
    assert len(json.dumps(obj)) < 32_000


# --- serving hand-off --------------------------------------------------------------
async def test_inference_service_storage_uri_follows_the_champion(
    api: Kube, namespace: str, inference_service_crd: str
) -> None:
    await api.create(
        serving.INFERENCESERVICES,
        namespace,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "chat"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": "file:///old"}}},
        },
    )
    await make_lineage(api, namespace, servingTarget={"kind": "InferenceService", "name": "chat"})
    await promotion.ensure_base(api, namespace=namespace, lineage="demo")
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "Synced"  # gen-0: the base folder
    isvc = await api.get(serving.INFERENCESERVICES, namespace, "chat")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "builtin:tiny"
    await record(api, namespace, "c1")
    await promotion.promote(api, namespace=namespace, lineage="demo", cycle="c1")
    # The champion's folder is not servable (its slots would be ignored): the target waits for the merged form.
    status = await lineage_status(api, namespace, "demo")
    synced = condition(status, "ServingSynced")
    assert synced and synced["status"] == "False" and synced["reason"] == "Exporting"
    assert "keeps serving builtin:tiny" in synced["message"]
    isvc = await api.get(serving.INFERENCESERVICES, namespace, "chat")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "builtin:tiny"
    job = await finish_export(api, namespace, "demo-serve-gen-1-merged")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["reverie", "export", "file:///store/demo/c1/dreaming", MERGED, "--form", "merged"]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelLineage"
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "Synced"
    isvc = await api.get(serving.INFERENCESERVICES, namespace, "chat")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == MERGED
    assert isvc["spec"]["predictor"]["model"]["modelFormat"] == {"name": "huggingface"}  # nothing else touched
    status = await lineage_status(api, namespace, "demo")
    synced = condition(status, "ServingSynced")
    assert synced and synced["status"] == "True" and synced["reason"] == "Synced"
    assert status["servingUri"] == MERGED
    assert status["servable"] == {"generation": "gen-1", "form": "merged", "uri": MERGED}


async def test_deployment_env_var_follows_the_champion(api: Kube, namespace: str) -> None:
    await api.create(
        serving.DEPLOYMENTS,
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "server"},
            "spec": {
                "selector": {"matchLabels": {"app": "server"}},
                "template": {
                    "metadata": {"labels": {"app": "server"}},
                    "spec": {
                        "containers": [
                            {"name": "sidecar", "image": "busybox"},
                            {"name": "vllm", "image": "vllm/vllm-openai", "env": [{"name": "KEEP", "value": "1"}]},
                        ]
                    },
                },
            },
        },
    )
    await make_lineage(
        api,
        namespace,
        servingTarget={
            "kind": "Deployment",
            "name": "server",
            "container": "vllm",
            "env": "MODEL_URI",
            "form": "adapter",
        },
    )
    await record(api, namespace, "c1")
    await promotion.promote(api, namespace=namespace, lineage="demo", cycle="c1")
    job = await finish_export(api, namespace, "demo-serve-gen-1-adapter")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-4:] == [
        "--form",
        "adapter",
        "--base-ref",
        "builtin:tiny",
    ]
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "Synced"
    dep = await api.get(serving.DEPLOYMENTS, namespace, "server")
    containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    assert {e["name"]: e["value"] for e in containers["vllm"]["env"]} == {"KEEP": "1", "MODEL_URI": ADAPTER}
    assert "env" not in containers["sidecar"]


async def test_configmap_key_follows_and_a_missing_target_is_a_clear_condition(api: Kube, namespace: str) -> None:
    await make_lineage(api, namespace, servingTarget={"kind": "ConfigMap", "name": "serving", "key": "model"})
    await record(api, namespace, "c1")
    await promotion.promote(api, namespace=namespace, lineage="demo", cycle="c1")
    await finish_export(api, namespace, "demo-serve-gen-1-merged")
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "TargetNotFound"
    status = await lineage_status(api, namespace, "demo")
    synced = condition(status, "ServingSynced")
    assert synced and synced["status"] == "False" and synced["reason"] == "TargetNotFound"
    assert "ConfigMap" in synced["message"] and "serving not found" in synced["message"]
    await api.create(
        CONFIGMAPS,
        namespace,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "serving"}, "data": {"other": "x"}},
    )
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "Synced"
    cm = await api.get(CONFIGMAPS, namespace, "serving")
    assert cm["data"] == {"other": "x", "model": MERGED}
    synced = condition(await lineage_status(api, namespace, "demo"), "ServingSynced")
    assert synced and synced["status"] == "True"


async def test_a_failed_export_keeps_the_old_target_and_says_how_to_retry(api: Kube, namespace: str) -> None:
    await api.create(CONFIGMAPS, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "serving"}})
    await make_lineage(api, namespace, servingTarget={"kind": "ConfigMap", "name": "serving", "key": "model"})
    await promotion.ensure_base(api, namespace=namespace, lineage="demo")
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "Synced"
    await record(api, namespace, "c1")
    await promotion.promote(api, namespace=namespace, lineage="demo", cycle="c1")
    await finish_export(
        api, namespace, "demo-serve-gen-1-merged", ok=False, message="Job has reached the specified backoff limit"
    )
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "ExportFailed"
    synced = condition(await lineage_status(api, namespace, "demo"), "ServingSynced")
    assert synced and synced["status"] == "False" and "kubectl logs job/demo-serve-gen-1-merged" in synced["message"]
    assert (await api.get(CONFIGMAPS, namespace, "serving"))["data"] == {"model": "builtin:tiny"}
    await api.delete(JOBS, namespace, "demo-serve-gen-1-merged")
    await eventually(lambda: _gone(api, namespace, "demo-serve-gen-1-merged"), what="export Job deleted")
    assert await serving.sync_serving(api, namespace=namespace, lineage="demo") == "Exporting", (
        "deleting the Job retries"
    )


async def _gone(api: Kube, namespace: str, name: str) -> bool:
    return await api.get_or_none(JOBS, namespace, name) is None
