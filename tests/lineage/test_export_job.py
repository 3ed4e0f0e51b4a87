"""The export Job that writes a champion's servable form: rendered like a phase Job, named deterministically."""

from __future__ import annotations

from typing import Any

from reverie.api.lineage import ModelLineage
from reverie.controller.export_job import ExportState, job_name, progress_of, render
from reverie.core.serving import hand_off


def lineage(**spec: Any) -> tuple[dict[str, Any], ModelLineage]:
    obj = {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "metadata": {"name": "assistant", "namespace": "ml", "uid": "u-1"},
        "spec": {
            "baseModel": {"uri": "s3://models/base/"},
            "store": {"uri": "/store/reverie", "pvcName": "models", "secretName": "creds"},
            **spec,
        },
        "status": {
            "champion": "gen-3",
            "championUri": "/store/reverie/assistant/c3/dreaming/model",
            "generations": [
                {"name": "gen-0", "uri": "s3://models/base/", "state": "Retired"},
                {
                    "name": "gen-3",
                    "parent": "gen-0",
                    "cycle": "c3",
                    "uri": "/store/reverie/assistant/c3/dreaming/model",
                    "state": "Champion",
                },
            ],
        },
    }
    return obj, ModelLineage.model_validate(obj)


def test_export_job_runs_reverie_export_in_the_trainer_image_with_the_store_mounted() -> None:
    obj, lin = lineage(
        servingTarget={
            "kind": "InferenceService",
            "name": "chat",
            "form": "adapter",
            "export": {"resources": {"limits": {"memory": "8Gi"}}},
        }
    )
    job = render(obj, lin, hand_off(lin))
    assert job["metadata"]["name"] == "assistant-serve-gen-3-adapter"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "name": "assistant",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/reverie-dev/reverie-trainer:0.1.0"
    assert container["command"] == [
        "reverie",
        "export",
        "/store/reverie/assistant/c3/dreaming/model",
        "/store/reverie/assistant/servable/gen-3/adapter",
        "--form",
        "adapter",
        "--base-ref",
        "s3://models/base/",
    ]
    assert {"name": "store", "mountPath": "/store"} in container["volumeMounts"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "models"}} in pod["volumes"]
    assert container["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert container["resources"]["limits"] == {"memory": "8Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["automountServiceAccountToken"] is False
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] > 0


def test_the_schedule_templates_trainer_image_and_placement_are_used() -> None:
    template = {
        "lineageRef": "assistant",
        "memory": {"sources": [{"inline": ["x"]}]},
        "images": {"trainer": "registry.local/trainer:1"},
        "scheduling": {"nodeSelector": {"pool": "cpu"}},
    }
    obj, lin = lineage(
        servingTarget={"kind": "InferenceService", "name": "chat"}, schedule={"cron": "@daily", "template": template}
    )
    pod = render(obj, lin, hand_off(lin))["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.local/trainer:1" and pod["nodeSelector"] == {"pool": "cpu"}
    obj, lin = lineage(
        servingTarget={"kind": "InferenceService", "name": "chat", "export": {"image": "mine:2"}},
        schedule={"cron": "@daily", "template": template},
    )
    assert render(obj, lin, hand_off(lin))["spec"]["template"]["spec"]["containers"][0]["image"] == "mine:2"


def test_job_names_fit_kubernetes_and_stay_distinct() -> None:
    long = "a-very-long-lineage-name-that-goes-on-and-on-and-on-forever"
    names = {job_name(long, "gen-12", form) for form in ("merged", "adapter")} | {job_name(long, "gen-13", "merged")}
    assert len(names) == 3 and all(len(n) <= 52 and n.endswith(("merged", "adapter")) for n in names)


def test_job_progress_is_read_from_its_conditions() -> None:
    assert progress_of({"status": {}}) == ExportState.RUNNING
    assert progress_of({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == ExportState.SUCCEEDED
    assert progress_of({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == ExportState.FAILED
