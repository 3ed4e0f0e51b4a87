"""The rendered chart on the real API server: it applies, and the operator's
identity can do its job and no more.

Objects are rendered by Helm, then applied with kubectl to the test cluster
(schema validation, RBAC object checks and admission happen for real).  The
ServiceAccount's permissions are then asked of the API server's own authorizer
through SubjectAccessReviews (what ``kubectl auth can-i --as ...`` asks).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import foreign_crds
import pytest
from delivery_engines import render
from tests.k8s_cluster import k8s_bin_dir

pytestmark = pytest.mark.cluster

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration", "CustomResourceDefinition"}


@pytest.fixture(scope="module")
def foreign_kinds(cluster: Any) -> None:
    foreign_crds.install(cluster)


@pytest.fixture
def installed(cluster: Any, foreign_kinds: None) -> Iterator[Any]:
    """Apply a rendering of the chart; remove its cluster-scoped objects afterwards."""
    releases: list[str] = []

    def install(values: dict[str, Any], *, namespace: str, release: str) -> list[dict[str, Any]]:
        # CRDs are installed by the cluster fixture from crds/, identical to the chart's (test_chart.py).
        objects = [
            o for o in render(values, release=release, namespace=namespace) if o["kind"] != "CustomResourceDefinition"
        ]
        cluster.kubectl(
            "apply",
            "--server-side",
            "--field-manager=helm",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )
        releases.append(release)
        return objects

    yield install
    # Namespaced objects go with the test namespace; cluster-scoped ones carry the release label.
    for release in releases:
        for kind in ("ClusterRoleBinding", "ClusterRole", "ValidatingWebhookConfiguration"):
            cluster.kubectl(
                "delete", kind, "-l", f"app.kubernetes.io/instance={release}", "--ignore-not-found", "--wait=false"
            )


def _release() -> str:
    return f"rel-{uuid.uuid4().hex[:6]}"


def _can(cluster: Any, identity: str, verb: str, resource: str, namespace: str | None) -> bool:
    """Ask the API server's authorizer (a SubjectAccessReview, what `kubectl auth can-i --as` does)."""
    from kubernetes import client

    plural_group, _, subresource = resource.partition("/")
    plural, _, group = plural_group.partition(".")
    groups = ["system:authenticated"]
    if identity.startswith("system:serviceaccount:"):
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{identity.split(':')[2]}"]
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=identity,
            groups=groups,
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, group=group, resource=plural, subresource=subresource or None, namespace=namespace
            ),
        )
    )
    with cluster.api_client() as api:
        answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


# What the operator does (controller/{cycle_handlers,cycle_reconciler,jobs,kube,promotion,serving}.py) and what it must never do.
NEEDED = [
    ("watch", "sleepcycles.reverie.dev"),
    ("patch", "sleepcycles.reverie.dev"),
    ("update", "sleepcycles.reverie.dev/status"),
    ("patch", "modellineages.reverie.dev"),
    ("update", "modellineages.reverie.dev/status"),
    ("create", "sleepcycles.reverie.dev"),
    ("delete", "sleepcycles.reverie.dev"),  # ttlSecondsAfterFinished and schedule history limits
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("create", "configmaps"),
    ("delete", "configmaps"),
    ("create", "services"),
    ("list", "pods"),
    ("get", "pods/log"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
]
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "pods/exec"),
    ("create", "serviceaccounts/token"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("delete", "modellineages.reverie.dev"),
    ("patch", "deployments.apps"),
    ("delete", "namespaces"),
]


def test_everything_the_chart_renders_is_accepted_by_the_api_server(
    cluster: Any, namespace: str, installed: Any
) -> None:
    release = _release()
    values = {
        "watch": {"scope": "namespaces"},  # the webhook then only selects this namespace
        "metrics": {"serviceMonitor": {"enabled": True}},
        "prometheusRule": {"enabled": True},
        "webhook": {"enabled": True},
        "rbac": {"trainJobs": True, "jobSets": True},
    }
    objects = installed(values, namespace=namespace, release=release)
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "ConfigMap",
        "ServiceMonitor",
        "PrometheusRule",
        "Certificate",
        "Issuer",
        "ValidatingWebhookConfiguration",
        "ClusterRole",
    } <= kinds
    for obj in objects:
        scope = [] if obj["kind"] in CLUSTER_SCOPED else ["-n", namespace]
        got = json.loads(cluster.kubectl("get", obj["kind"], obj["metadata"]["name"], *scope, "-o", "json").stdout)
        assert got["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    deployment = json.loads(
        cluster.kubectl("get", "deployment", f"{release}-reverie-operator", "-n", namespace, "-o", "json").stdout
    )
    assert deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_namespaces_scope_grants_the_operator_what_it_needs_and_no_more(
    cluster: Any, namespace: str, installed: Any
) -> None:
    release = _release()
    installed(
        {"watch": {"scope": "namespaces"}, "dashboards": {"enabled": False}}, namespace=namespace, release=release
    )
    me = f"system:serviceaccount:{namespace}:{release}-reverie"
    missing = [f"{verb} {res}" for verb, res in NEEDED if not _can(cluster, me, verb, res, namespace)]
    assert not missing, f"the chart's Role lacks: {missing}"
    excess = [f"{verb} {res}" for verb, res in FORBIDDEN if _can(cluster, me, verb, res, namespace)]
    assert not excess, f"the chart's Role grants too much: {excess}"
    # Nothing outside the watched namespace, nothing cluster-wide.
    assert not _can(cluster, me, "create", "jobs.batch", "default")
    assert not _can(cluster, me, "list", "sleepcycles.reverie.dev", "default")
    assert not _can(cluster, me, "list", "configmaps", "default")
    # Cluster-wide it may only follow namespaces and CRDs (Kopf's scanning).
    assert _can(cluster, me, "watch", "namespaces", None)
    assert not _can(cluster, me, "delete", "namespaces", None)
    assert not _can(cluster, me, "create", "customresourcedefinitions.apiextensions.k8s.io", None)


def test_cluster_scope_grants_the_operator_what_it_needs_everywhere_and_no_more(
    cluster: Any, namespace: str, installed: Any
) -> None:
    release = _release()
    installed({"dashboards": {"enabled": False}}, namespace=namespace, release=release)
    me = f"system:serviceaccount:{namespace}:{release}-reverie"
    for where in (namespace, "default"):
        missing = [f"{verb} {res}" for verb, res in NEEDED if not _can(cluster, me, verb, res, where)]
        assert not missing, f"the chart's ClusterRole lacks in {where}: {missing}"
        excess = [f"{verb} {res}" for verb, res in FORBIDDEN if _can(cluster, me, verb, res, where)]
        assert not excess, f"the chart's ClusterRole grants too much in {where}: {excess}"
    assert _can(cluster, me, "watch", "namespaces", None)
    assert not _can(cluster, me, "create", "clusterroles.rbac.authorization.k8s.io", None)
    assert not _can(cluster, me, "create", "validatingwebhookconfigurations.admissionregistration.k8s.io", None)


@pytest.fixture(scope="module")
def role_aggregation(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The control plane's ClusterRole aggregation controller (the test cluster runs without it)."""
    log = tmp_path_factory.mktemp("aggregation") / "kube-controller-manager.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(k8s_bin_dir() / "kube-controller-manager"),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--controllers",
                "clusterrole-aggregation-controller",
                "--leader-elect=false",
                "--secure-port",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=15)


def _aggregated(cluster: Any, role: str, resource: str, *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rules = json.loads(cluster.kubectl("get", "clusterrole", role, "-o", "json").stdout).get("rules") or []
        if any(resource in rule.get("resources", []) for rule in rules):
            return
        time.sleep(0.2)
    raise AssertionError(f"ClusterRole {role} never aggregated {resource}")


def test_user_roles_let_editors_create_cycles_and_viewers_only_read(
    cluster: Any, namespace: str, installed: Any, role_aggregation: None
) -> None:
    installed({"rbac": {"create": False}, "dashboards": {"enabled": False}}, namespace=namespace, release=_release())
    # Through the built-in roles a namespace's users already hold, as aggregation intends.
    for role, user in (("edit", "alice"), ("view", "bob"), ("admin", "carol")):
        _aggregated(cluster, role, "sleepcycles")
        cluster.kubectl(
            "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}", "-n", namespace
        )
    assert _can(cluster, "alice", "create", "sleepcycles.reverie.dev", namespace)
    assert _can(cluster, "alice", "delete", "modellineages.reverie.dev", namespace)
    assert _can(cluster, "carol", "patch", "sleepcycles.reverie.dev", namespace)
    assert not _can(cluster, "alice", "patch", "sleepcycles.reverie.dev/status", namespace)
    assert _can(cluster, "bob", "list", "sleepcycles.reverie.dev", namespace)
    assert _can(cluster, "bob", "get", "modellineages.reverie.dev/status", namespace)
    assert not _can(cluster, "bob", "create", "sleepcycles.reverie.dev", namespace)
    assert not _can(cluster, "alice", "list", "sleepcycles.reverie.dev", "default")
