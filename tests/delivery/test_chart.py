"""The Helm chart, rendered and linted by a real Helm engine across value sets.

These tests read what ``helm template`` produces and check the properties a
platform engineer relies on: a hardened operator pod, least-privilege RBAC in
both watch scopes, wiring between Service, ServiceMonitor, alerts and pods, the
Grafana sidecar labels, and a values schema that refuses nonsense.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from delivery_engines import CHART, REPO, by_kind, lint, one, render, render_error

ALL_ON: dict[str, Any] = {
    "metrics": {"serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}}},
    "prometheusRule": {"enabled": True},
    "webhook": {"enabled": True},
    "rbac": {"trainJobs": True, "jobSets": True, "serving": {"inferenceServices": True, "deployments": True}},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaces-scope": {"watch": {"scope": "namespaces", "namespaces": ["team-a", "team-b"]}},
    "everything-on": ALL_ON,
    "webhook-existing-secret": {
        "webhook": {
            "enabled": True,
            "certManager": {"enabled": False},
            "existingSecret": "reverie-webhook-tls",
            "caBundle": "Y2E=",
        },
    },
    "bring-your-own-identity": {
        "serviceAccount": {"create": False, "name": "platform-reverie"},
        "rbac": {"create": False, "aggregatedRoles": False},
        "dashboards": {"enabled": False},
        "operator": {"image": {"digest": "sha256:" + "ab" * 32}},
    },
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_lints_strictly(name: str) -> None:
    done = lint(VALUE_SETS[name])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ERROR]" not in done.stdout and "[WARNING]" not in done.stdout, done.stdout


def test_chart_ships_exactly_the_generated_crds() -> None:
    # charts/reverie/crds links to crds/ (Helm follows the link when it loads or
    # packages the chart), so the chart can never drift from the generator.
    generated = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    assert generated, "crds/ is empty: run `python -m reverie.api.crdgen --write crds/`"
    shipped = by_kind(render(), "CustomResourceDefinition")
    by_name = {crd["metadata"]["name"]: crd for crd in shipped}
    assert by_name == {crd["metadata"]["name"]: crd for crd in generated}
    assert (CHART / "crds").resolve() == (REPO / "crds").resolve()


def test_operator_pod_is_hardened() -> None:
    deployment = one(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] in {p["name"] for p in container["ports"]}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert container["args"][0] == "operator"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # Docker-link variables off: the release's own Services would set REVERIE_WEBHOOK_PORT=tcp://... (seen on a real node).
    assert pod["enableServiceLinks"] is False
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"


def test_with_the_webhook_the_pod_is_ready_once_the_webhook_port_answers() -> None:
    # A real node showed the API server calling a just-started pod whose webhook was not listening yet.
    values = {
        "webhook": {"enabled": True, "certManager": {"enabled": False}, "existingSecret": "s", "caBundle": "Y2E="}
    }
    (container,) = one(render(values), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    assert "webhook" in {p["name"] for p in container["ports"]}


def _operator_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    roles = [o for o in objects if o["kind"] in {"Role", "ClusterRole"} and o["metadata"]["name"].endswith("-operator")]
    assert roles
    return [rule for role in roles for rule in role["rules"]]


def _allows(rules: list[dict[str, Any]], verb: str, group: str, resource: str) -> bool:
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"] for rule in rules)


@pytest.mark.parametrize("name", ["defaults", "namespaces-scope", "everything-on"])
def test_operator_rbac_is_least_privilege(name: str) -> None:
    rules = _operator_rules(render(VALUE_SETS[name]))
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert "secrets" not in rule["resources"], "the operator must never read Secrets"
        assert not ({"escalate", "bind", "impersonate"} & set(rule["verbs"])), rule
    assert not _allows(rules, "create", "", "pods"), "Pods are created by the Job controller, not the operator"
    needed = [
        ("watch", "reverie.dev", "sleepcycles"),
        ("patch", "reverie.dev", "sleepcycles/status"),
        ("patch", "reverie.dev", "modellineages/status"),
        ("create", "batch", "jobs"),
        ("delete", "batch", "jobs"),
        ("create", "", "configmaps"),
        ("create", "", "services"),
        ("get", "", "pods"),
        ("get", "", "pods/log"),
        ("create", "", "events"),
    ]
    for verb, group, resource in needed:
        assert _allows(rules, verb, group, resource), f"operator cannot {verb} {group}/{resource}"


def test_optional_engines_and_serving_targets_are_opt_in() -> None:
    default_rules = _operator_rules(render())
    all_rules = _operator_rules(render(ALL_ON))
    for group, resource in [
        ("trainer.kubeflow.org", "trainjobs"),
        ("jobset.x-k8s.io", "jobsets"),
        ("serving.kserve.io", "inferenceservices"),
        ("apps", "deployments"),
    ]:
        assert not _allows(default_rules, "get", group, resource)
        assert _allows(all_rules, "patch", group, resource)


def test_cluster_scope_binds_a_cluster_role_and_watches_all_namespaces() -> None:
    objects = render()
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "reverie-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "reverie", "namespace": "reverie-system"}]
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)


def test_namespaces_scope_grants_roles_only_in_watched_namespaces() -> None:
    objects = render(VALUE_SETS["namespaces-scope"])
    operator_cluster_roles = [r for r in by_kind(objects, "ClusterRole") if r["metadata"]["name"] == "reverie-operator"]
    assert not operator_cluster_roles
    # Cluster-wide, only Kopf's read-only discovery of namespaces and CRDs.
    (binding,) = by_kind(objects, "ClusterRoleBinding")
    discovery = one(objects, "ClusterRole", binding["roleRef"]["name"])
    assert {(r["apiGroups"][0], r["resources"][0]) for r in discovery["rules"]} == {
        ("", "namespaces"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    }
    assert all(r["verbs"] == ["list", "watch"] for r in discovery["rules"])
    assert sorted(r["metadata"]["namespace"] for r in by_kind(objects, "Role")) == ["team-a", "team-b"]
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "reverie-system"
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_namespaces_scope_can_go_without_cluster_wide_discovery() -> None:
    objects = render({"watch": {"scope": "namespaces"}, "rbac": {"discovery": False}})
    assert not by_kind(objects, "ClusterRoleBinding")
    assert {r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")} == {"reverie-edit", "reverie-view"}


def test_namespaces_scope_defaults_to_the_release_namespace() -> None:
    objects = render({"watch": {"scope": "namespaces"}}, namespace="ml-team")
    assert [r["metadata"]["namespace"] for r in by_kind(objects, "Role")] == ["ml-team"]


def test_aggregated_user_roles_fold_into_builtin_roles() -> None:
    objects = render()
    edit, view = one(objects, "ClusterRole", "reverie-edit"), one(objects, "ClusterRole", "reverie-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert not _allows(view["rules"], "create", "reverie.dev", "sleepcycles")
    assert _allows(edit["rules"], "create", "reverie.dev", "sleepcycles")
    assert not _allows(edit["rules"], "patch", "reverie.dev", "sleepcycles/status"), "status belongs to the operator"


def test_metrics_service_and_service_monitor_reach_the_operator_pod() -> None:
    objects = render(ALL_ON)
    pod = one(objects, "Deployment")["spec"]["template"]
    service = one(objects, "Service", "reverie-metrics")
    monitor = one(objects, "ServiceMonitor")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    container_ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in container_ports
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    webhook_service = one(objects, "Service", "reverie-webhook")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= webhook_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_operator_down_alert_watches_the_service_monitor_job() -> None:
    # The Prometheus Operator names a ServiceMonitor target's job after its Service.
    rule_object = one(render(ALL_ON), "PrometheusRule")
    rules = {r["alert"]: r for g in rule_object["spec"]["groups"] for r in g["rules"]}
    assert 'job="reverie-metrics"' in rules["ReverieOperatorDown"]["expr"]
    assert 'namespace="reverie-system"' in rules["ReverieOperatorDown"]["expr"]
    assert {
        "ReverieCycleStuck",
        "RevierePhaseFailuresRepeated",
        "ReverieGateRejectionStreak",
        "ReverieOperatorDown",
        "ReverieChampionStale",
    } <= rules.keys()


def test_dashboards_ship_as_sidecar_config_maps() -> None:
    objects = render({"dashboards": {"namespace": "monitoring", "folder": "ML"}})
    maps = [m for m in by_kind(objects, "ConfigMap") if "-dashboard-" in m["metadata"]["name"]]
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert len(maps) == len(files) >= 4
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["annotations"]["grafana_folder"] == "ML"
        ((key, text),) = config_map["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / key).read_text())


def test_webhook_uses_cert_manager_or_the_given_secret() -> None:
    managed = render({"webhook": {"enabled": True}})
    config = one(managed, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "reverie-system/reverie-webhook"
    assert one(managed, "Certificate")["spec"]["issuerRef"]["name"] == "reverie-selfsigned"
    assert {w["rules"][0]["resources"][0] for w in config["webhooks"]} == {"sleepcycles", "modellineages"}

    provided = render(VALUE_SETS["webhook-existing-secret"])
    assert not by_kind(provided, "Certificate") and not by_kind(provided, "Issuer")
    webhook = one(provided, "ValidatingWebhookConfiguration")["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == "Y2E="
    volumes = one(provided, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": "reverie-webhook-tls"}} in volumes


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"watch": {"scope": "everywhere"}}, "scope"),
        ({"operatr": {}}, "operatr"),
        ({"operator": {"logLevel": "loud"}}, "logLevel"),
        ({"webhook": {"enabled": True, "certManager": {"enabled": False}}}, "existingSecret"),
        ({"prometheusRule": {"alerts": {"cycleStuck": {"for": "six hours", "severity": "warning"}}}}, "for"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name"),
    ],
)
def test_values_that_make_no_sense_are_refused(values: dict[str, Any], complaint: str) -> None:
    assert complaint in render_error(values)
