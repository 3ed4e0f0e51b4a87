"""Minimal CRDs of the other projects the chart can create objects of.

The test API server has no Prometheus Operator or cert-manager, so the chart's
ServiceMonitor, PrometheusRule, Certificate and Issuer would be refused.  These
stand-ins serve the same group/version/kind with an open schema: enough for the
API server to accept, store and return the chart's objects, nothing more.
"""

from __future__ import annotations

import json
from typing import Any

FOREIGN_KINDS = [
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
    ("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules"),
    ("cert-manager.io", "v1", "Certificate", "certificates"),
    ("cert-manager.io", "v1", "Issuer", "issuers"),
]


def crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


def install(cluster: Any) -> None:
    """Apply the stand-in CRDs and wait until the API server serves them."""
    items = [crd(*kind) for kind in FOREIGN_KINDS]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", *(f"crd/{item['metadata']['name']}" for item in items)
    )
