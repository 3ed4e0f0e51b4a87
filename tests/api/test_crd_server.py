"""The generated CRDs, served by a real kube-apiserver and driven with a real kubectl.

What a user meets first: manifests apply, mistakes are rejected with a message
naming the field, status is the operator's alone, ``kubectl get`` and
``kubectl explain`` say something useful.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_cases import (
    IMMUTABLE,
    LINEAGE_NAME,
    MALFORMED,
    Malformed,
    modellineage,
    patched,
    sleepcycle,
)

pytestmark = pytest.mark.cluster

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples"
# Every manifest under examples/, the quickstart's and the smoke run's included.
EXAMPLES = sorted(EXAMPLE_DIR.rglob("*.yaml"))


def apply(cluster: Any, namespace: str, manifest: dict[str, Any], *, dry_run: bool = False, check: bool = True) -> Any:
    args = ["apply", "-n", namespace, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    return cluster.kubectl(*args, input=json.dumps(manifest), check=check)


def get(cluster: Any, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout)


def test_examples_exist() -> None:
    names = {str(p.relative_to(EXAMPLE_DIR)) for p in EXAMPLES}
    assert names >= {"sleepcycle.yaml", "sleepcycle-full.yaml", "modellineage.yaml", "gate-rules.yaml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(EXAMPLE_DIR)))
def test_example_applies_dry_run_then_for_real(cluster: Any, namespace: str, example: Path) -> None:
    dry = cluster.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(example))
    assert "(server dry run)" in dry.stdout
    cluster.kubectl("apply", "-n", namespace, "-f", str(example))
    for document in yaml.safe_load_all(example.read_text()):
        stored = get(cluster, namespace, document["kind"], document["metadata"]["name"])
        # What the user wrote is what is stored (nothing pruned), plus defaults.
        assert _contains(stored["spec"], document["spec"]), f"{example.name}: the server dropped or changed fields"


def _contains(stored: Any, written: Any) -> bool:
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(k in stored and _contains(stored[k], v) for k, v in written.items())
    if isinstance(written, list):
        return isinstance(stored, list) and len(stored) == len(written) and all(map(_contains, stored, written))
    return bool(stored == written)


def test_server_fills_in_the_model_defaults(cluster: Any, namespace: str) -> None:
    from reverie.api import SleepCycle

    apply(cluster, namespace, sleepcycle())
    stored = get(cluster, namespace, "sleepcycle", "night")
    assert stored["spec"] == SleepCycle.model_validate(sleepcycle()).spec.wire()


@pytest.fixture(scope="module")
def dry_run_namespace(cluster: Any) -> Iterator[str]:
    """One namespace for every server-side dry run: nothing is ever stored in it."""
    name = f"dry-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_malformed_manifest_is_rejected_naming_the_field(cluster: Any, dry_run_namespace: str, case: Malformed) -> None:
    done = apply(cluster, dry_run_namespace, case.manifest, dry_run=True, check=False)
    assert done.returncode != 0, f"{case.id}: the API server accepted it:\n{done.stdout}"
    error = done.stderr
    assert case.field in error, f"{case.id}: error does not name {case.field}:\n{error}"
    assert case.message in error, f"{case.id}: error lacks {case.message!r}:\n{error}"


def test_names_at_their_limits_are_accepted(cluster: Any, dry_run_namespace: str) -> None:
    scheduled = patched(
        patched(modellineage("s" * 50), "spec.schedule", {"cron": "@daily", "template": sleepcycle()["spec"]}),
        "spec.schedule.template.lineageRef",
        "s" * 50,
    )
    for manifest in (modellineage("l" * 63), patched(sleepcycle("c" * 63), "spec.lineageRef", "l" * 63), scheduled):
        done = apply(cluster, dry_run_namespace, manifest, dry_run=True, check=False)
        assert done.returncode == 0, done.stderr


def test_at_least_25_malformed_cases() -> None:
    assert len(MALFORMED) >= 25
    assert len({case.id for case in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(
    ("kind", "path", "value", "field", "message"),
    IMMUTABLE,
    ids=lambda v: v if isinstance(v, str) and v.startswith("spec.") else None,
)
def test_immutable_field_cannot_change(
    cluster: Any, namespace: str, kind: str, path: str, value: Any, field: str, message: str
) -> None:
    base = sleepcycle() if kind == "sleepcycle" else modellineage()
    apply(cluster, namespace, base)
    done = apply(cluster, namespace, patched(base, path, value), check=False)
    assert done.returncode != 0, f"changing {path} was accepted"
    assert field in done.stderr and message in done.stderr, done.stderr


def test_mutable_fields_change_and_templates_are_not_frozen(cluster: Any, namespace: str) -> None:
    cycle = sleepcycle()
    apply(cluster, namespace, cycle)
    apply(cluster, namespace, patched(patched(cycle, "spec.suspend", True), "spec.promotion", {"policy": "manual"}))
    stored = get(cluster, namespace, "sleep", "night")
    assert stored["spec"]["suspend"] is True and stored["spec"]["promotion"]["policy"] == "manual"

    # A lineage's schedule template is a SleepCycleSpec, but not a live cycle:
    # its memory may change from one night to the next.
    lineage = patched(modellineage(), "spec.schedule", {"cron": "@daily", "template": sleepcycle()["spec"]})
    apply(cluster, namespace, lineage)
    apply(cluster, namespace, patched(lineage, "spec.schedule.template.memory", {"sources": [{"uri": "new.jsonl"}]}))
    stored = get(cluster, namespace, "mlin", LINEAGE_NAME)
    assert stored["spec"]["schedule"]["template"]["memory"]["sources"] == [{"uri": "new.jsonl"}]


def test_status_written_through_the_main_resource_is_ignored(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, sleepcycle())
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "sleepcycle",
        "night",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"suspend": True}, "status": {"phase": "Succeeded"}}),
    )
    stored = get(cluster, namespace, "sleepcycle", "night")
    assert stored["spec"]["suspend"] is True
    assert "status" not in stored or stored["status"].get("phase") != "Succeeded"


def test_spec_written_through_the_status_subresource_is_ignored(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, sleepcycle())
    before = get(cluster, namespace, "sleepcycle", "night")
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "sleepcycle",
        "night",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"suspend": True}, "status": {"phase": "Dreaming", "message": "m"}}),
    )
    after = get(cluster, namespace, "sleepcycle", "night")
    assert after["status"]["phase"] == "Dreaming"
    assert after["spec"] == before["spec"]
    # A status write does not bump the spec generation.
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_status_subresource_validates_status(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, sleepcycle())
    done = cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "sleepcycle",
        "night",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Sleeping"}}),
        check=False,
    )
    assert done.returncode != 0 and "status.phase" in done.stderr and "Unsupported value" in done.stderr


def _table(cluster: Any, namespace: str, resource: str, *extra: str) -> tuple[list[str], list[str]]:
    lines = cluster.kubectl("get", "-n", namespace, resource, *extra).stdout.splitlines()
    header = lines[0].split()
    return header, lines[1].split()


def test_kubectl_get_sleep_shows_the_printer_columns(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, sleepcycle())
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "sleep",
        "night",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Succeeded", "generation": "gen-2", "gate": {"outcome": "Passed"}}}),
    )
    header, row = _table(cluster, namespace, "sleep")
    assert header == ["NAME", "LINEAGE", "PHASE", "GENERATION", "GATE", "AGE"]
    assert row[:5] == ["night", LINEAGE_NAME, "Succeeded", "gen-2", "Passed"]
    wide_header, _ = _table(cluster, namespace, "sleep", "-o", "wide")
    assert wide_header[:9] == [
        "NAME",
        "LINEAGE",
        "PHASE",
        "GENERATION",
        "GATE",
        "AGE",
        "BASE",
        "PROMOTION",
        "SUSPENDED",
    ]


def test_kubectl_get_mlin_shows_the_printer_columns(cluster: Any, namespace: str) -> None:
    apply(
        cluster,
        namespace,
        patched(modellineage(), "spec.schedule", {"cron": "0 3 * * *", "template": sleepcycle()["spec"]}),
    )
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "mlin",
        LINEAGE_NAME,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "status": {
                    "champion": "gen-1",
                    "activeCycle": "night",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            }
        ),
    )
    lines = cluster.kubectl("get", "-n", namespace, "mlin").stdout.splitlines()
    assert lines[0].split() == ["NAME", "CHAMPION", "ACTIVE", "SCHEDULE", "READY", "AGE"]
    assert lines[1].startswith(LINEAGE_NAME) and "gen-1" in lines[1] and "0 3 * * *" in lines[1] and "True" in lines[1]


def test_short_names_are_not_taken_by_built_in_resources(cluster: Any) -> None:
    # `sc` would be the obvious short name for SleepCycle, but StorageClass owns
    # it and built-in resources win: `kubectl get sc` would list StorageClasses.
    rows = cluster.kubectl("api-resources", "--no-headers").stdout.splitlines()
    built_in = {name for row in rows if "reverie.dev" not in row for name in row.split()[1].split(",")}
    ours = {name for row in rows if "reverie.dev" in row for name in row.split()[1].split(",")}
    assert ours == {"sleep", "mlin"}
    assert not ours & built_in
    assert "sc" in built_in


def test_category_and_short_names_reach_both_kinds(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, sleepcycle())
    apply(cluster, namespace, modellineage())
    names = cluster.kubectl("get", "-n", namespace, "reverie", "-o", "name").stdout.split()
    assert sorted(names) == ["modellineage.reverie.dev/assistant", "sleepcycle.reverie.dev/night"]


def test_kubectl_explain_shows_field_descriptions(cluster: Any) -> None:
    out = cluster.kubectl("explain", "sleepcycle.spec.consolidation").stdout
    assert "Knowledge Seeding" in out
    assert "alpha" in out and "weight of distillation" in out and "itemsPerMemory" in out
    assert "lambda" in out and "share of student-sampled" in out
    lineage = cluster.kubectl("explain", "mlin.spec.schedule.cron").stdout
    assert "Cron expression" in lineage


def test_restricted_identity_is_forbidden_until_rbac_grants_it(cluster: Any, namespace: str) -> None:
    viewer = cluster.user_kubeconfig("carol", ["reverie-viewers"])
    denied = cluster.kubectl("get", "-n", namespace, "sleep", kubeconfig=viewer, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    cluster.kubectl(
        "create", "role", "sc-reader", "-n", namespace, "--verb=get,list", "--resource=sleepcycles.reverie.dev"
    )
    cluster.kubectl(
        "create", "rolebinding", "sc-reader", "-n", namespace, "--role=sc-reader", "--group=reverie-viewers"
    )
    cluster.kubectl("get", "-n", namespace, "sleep", kubeconfig=viewer)
    create = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(sleepcycle()), kubeconfig=viewer, check=False
    )
    assert create.returncode != 0 and "forbidden" in create.stderr.lower()


def test_owner_reference_garbage_collection_runs(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, sleepcycle())
    owner = get(cluster, namespace, "sleep", "night")
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "night-phase",
            "ownerReferences": [
                {
                    "apiVersion": "reverie.dev/v1alpha1",
                    "kind": "SleepCycle",
                    "name": "night",
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "data": {"attempt.json": "{}"},
    }
    apply(cluster, namespace, config_map)
    cluster.kubectl("delete", "-n", namespace, "sleep", "night", "--wait=true")
    cluster.kubectl("wait", "-n", namespace, "--for=delete", "configmap/night-phase", "--timeout=30s")


def test_python_client_from_the_cluster_kubeconfig(cluster: Any, namespace: str) -> None:
    from kubernetes import client

    with cluster.api_client() as api_client:
        objects = client.CustomObjectsApi(api_client)
        objects.create_namespaced_custom_object("reverie.dev", "v1alpha1", namespace, "modellineages", modellineage())
        stored = objects.get_namespaced_custom_object(
            "reverie.dev", "v1alpha1", namespace, "modellineages", LINEAGE_NAME
        )
    assert stored["spec"]["historyLimit"] == 20
    assert cluster.env()["KUBECONFIG"] == str(cluster.kubeconfig)


def test_conditions_merge_per_type_under_server_side_apply(cluster: Any, namespace: str) -> None:
    apply(cluster, namespace, sleepcycle())
    for manager, kind in (("operator", "Consolidated"), ("gate", "GatePassed")):
        status = {"status": {"conditions": [{"type": kind, "status": "True", "reason": "Test"}]}}
        body = {"apiVersion": "reverie.dev/v1alpha1", "kind": "SleepCycle", "metadata": {"name": "night"}, **status}
        cluster.kubectl(
            "apply",
            "-n",
            namespace,
            "--server-side",
            "--subresource=status",
            f"--field-manager={manager}",
            "-f",
            "-",
            input=json.dumps(body),
        )
    conditions = get(cluster, namespace, "sleepcycle", "night")["status"]["conditions"]
    assert sorted(c["type"] for c in conditions) == ["Consolidated", "GatePassed"]
