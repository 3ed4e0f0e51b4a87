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


def test_every_job_the_operator_renders_carries_the_stores_environment() -> None:
    # One pod builder (jobs.workload_pod) for phase Jobs and the serving export Job: an S3-compatible
    # store's endpoint, its Secret, the PVC and the staging cache reach every workload container alike.
    from reverie.api.base import Scheduling, StepRuntime
    from reverie.api.sleepcycle import Step
    from reverie.api.steps import MemorySource, MemorySpec
    from reverie.controller import export_job, jobs
    from reverie.core.actions import CreateJob
    from reverie.core.contract import AttemptConfig
    from reverie.core.serving import hand_off

    store = {
        "uri": "s3://reverie-store/",
        "endpoint": "http://minio.minio.svc:9000",
        "secretName": "store-creds",
        "pvcName": "scratch",
        "stagingCache": {"pvcName": "cache", "maxSize": "1Gi"},
    }
    obj = {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "metadata": {"name": "lin", "namespace": "ml", "uid": "u-1"},
        "spec": {
            "baseModel": {"uri": "s3://models/base/"},
            "store": store,
            "servingTarget": {"kind": "ConfigMap", "name": "serving", "key": "model"},
        },
        "status": {
            "champion": "gen-1",
            "championUri": "s3://reverie-store/lin/c1/evaluation/model",
            "generations": [
                {"name": "gen-0", "uri": "s3://models/base/", "state": "Retired"},
                {
                    "name": "gen-1",
                    "parent": "gen-0",
                    "cycle": "c1",
                    "uri": "s3://reverie-store/lin/c1/m",
                    "state": "Champion",
                },
            ],
        },
    }
    lineage = ModelLineage.model_validate(obj)
    workloads = []
    for step in Step:
        config = AttemptConfig(
            step=step,
            cycle="c1",
            lineage="lin",
            store_uri=store["uri"],
            output_uri=f"s3://reverie-store/lin/c1/{step.value}",
            base_generation="gen-0",
            base_uri="s3://models/base/",
            memory=MemorySpec(sources=[MemorySource(inline=["x"])]),
        )
        for runtime in ({}, {"procsPerNode": 2}, {"numNodes": 2}):
            create = CreateJob(
                step=step,
                attempt=1,
                job_name=f"c1-{step.value}-1",
                config=config,
                runtime=StepRuntime.model_validate(runtime),
                image="img",
            )
            owner = jobs.Owner(name="c1", namespace="ml", uid="u-2")
            workloads.append(jobs.render(create, owner=owner, lineage=lineage, scheduling=Scheduling()).workload)
    workloads.append(export_job.render(obj, lineage, hand_off(lineage)))
    assert len(workloads) == 3 * len(Step) + 1
    for job in workloads:
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.minio.svc:9000", job["metadata"]["name"]
        assert env["REVERIE_STAGING_CACHE"] == STAGING_CACHE_MOUNT and env["HOME"] == "/tmp"
        assert container["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
        assert {"name": "store", "mountPath": "/store"} in container["volumeMounts"]
        assert {"name": "store", "persistentVolumeClaim": {"claimName": "scratch"}} in pod["volumes"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["automountServiceAccountToken"] is False
