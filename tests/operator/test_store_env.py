"""What a phase pod gets from the lineage's spec.store (no cluster needed; the rendered Job is
checked against the real API server in test_cycle_features.py)."""

from __future__ import annotations

from typing import Any

from reverie.api.lineage import ModelLineage
from reverie.controller.jobs import STAGING_CACHE_IN_POD, STAGING_CACHE_MOUNT, _store_env


def rendered(store: dict[str, Any], base: str = "s3://models/base/") -> tuple[dict[str, str], list[Any], list[Any]]:
    lineage = ModelLineage.model_validate(
        {"metadata": {"name": "lin"}, "spec": {"baseModel": {"uri": base}, "store": store}}
    )
    mounts: list[Any] = []
    volumes: list[Any] = []
    env = _store_env(lineage, mounts=mounts, volumes=volumes)
    return {e["name"]: e["value"] for e in env}, mounts, volumes


def test_without_a_staging_cache_each_pod_stages_into_its_tmp() -> None:
    env, mounts, volumes = rendered({"uri": "s3://reverie-store/"})
    assert env == {"REVERIE_STAGING_CACHE": STAGING_CACHE_IN_POD} and not mounts and not volumes


def test_the_endpoint_becomes_the_aws_variable_botocore_reads() -> None:
    env, _, _ = rendered({"uri": "s3://reverie-store/", "endpoint": "http://minio.minio.svc:9000"})
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.minio.svc:9000"


def test_a_staging_cache_on_a_pvc_is_mounted_with_its_size() -> None:
    env, mounts, volumes = rendered({"uri": "s3://r/", "stagingCache": {"pvcName": "cache", "maxSize": "1Gi"}})
    assert env["REVERIE_STAGING_CACHE"] == STAGING_CACHE_MOUNT and env["REVERIE_STAGING_CACHE_MAX_BYTES"] == str(2**30)
    assert mounts == [{"name": "staging-cache", "mountPath": STAGING_CACHE_MOUNT}]
    assert volumes == [{"name": "staging-cache", "persistentVolumeClaim": {"claimName": "cache"}}]


def test_an_hf_base_model_turns_the_images_offline_default_off() -> None:
    env, _, _ = rendered({"uri": "s3://r/"}, base="hf://Qwen/Qwen2.5-0.5B-Instruct@main")
    assert env["HF_HUB_OFFLINE"] == "0"
    assert "HF_HUB_OFFLINE" not in rendered({"uri": "s3://r/"})[0]
