"""The chart's admission webhook, served: rendered with ``webhook.enabled`` (an existing TLS
Secret and its CA bundle, made here), applied to the real API server, and the API server's
calls routed through the chart's Service to the operator, run with the Deployment's own
arguments under the chart's identity.

The test cluster has no Service proxy and no endpoints controller: the API server calls a
Service-backed webhook at the Service's endpoints (``--enable-aggregator-routing``), which the
test writes, pointing at this machine's address where the operator listens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from delivery_engines import free_port, one, render
from operator_under_chart import (
    RELEASE,
    chart_identity,
    cycle_manifest,
    lineage_manifest,
    operator_process,
    service_account_kubeconfig,
)
from tests.k8s_cluster import CertificateAuthority
from tests.operator.conftest import wait
from tests.operator.jobsim import JobSim

pytestmark = pytest.mark.cluster


def host_address() -> str | None:
    """This machine's own non-loopback IPv4 address (Endpoints may not point at loopback).

    Connecting a UDP socket sends nothing; it only makes the kernel pick the source address
    of its default route.
    """
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # TEST-NET-3: never reached
        address = str(probe.getsockname()[0])
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


def _args(args: list[str], *, port: int, cert_dir: Path) -> list[str]:
    out = []
    for arg in args:
        if arg.startswith("--webhook-port="):
            arg = f"--webhook-port={port}"
        elif arg.startswith("--webhook-cert-dir="):
            arg = f"--webhook-cert-dir={cert_dir}"
        out.append(arg)
    return out


def _endpoints(service: str, namespace: str, *, ip: str, port: int) -> list[dict[str, Any]]:
    """What the endpoints controllers would write for the operator pod behind ``service``."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": service, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}]}],
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-test",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "reverie-tests",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}],
        },
    ]


def test_the_charts_webhook_routes_to_the_operator_and_refuses_a_bad_cycle(cluster: Any, tmp_path: Path) -> None:
    ip = host_address()
    if ip is None:
        message = "this machine has no non-loopback IPv4 address for the webhook's endpoints"
        if os.environ.get("REVERIE_REQUIRE_CLUSTER"):
            pytest.fail(message + " (REVERIE_REQUIRE_CLUSTER is set)", pytrace=False)
        pytest.skip(message)
    ca = CertificateAuthority(tmp_path)
    with chart_identity(cluster) as (namespace, account, _):
        values = {
            "watch": {"scope": "namespaces"},
            "dashboards": {"enabled": False},
            "webhook": {
                "enabled": True,
                "failurePolicy": "Fail",
                "certManager": {"enabled": False},
                "existingSecret": "reverie-webhook-tls",
                "caBundle": base64.b64encode(ca.cert.read_bytes()).decode(),
            },
        }
        rendered = render(values, release=RELEASE, namespace=namespace)
        service = one(rendered, "Service", f"{RELEASE}-webhook")
        config = one(rendered, "ValidatingWebhookConfiguration")
        svc = service["metadata"]["name"]
        # The serving certificate cert-manager would issue for the chart's Service.
        cert, key = ca.issue(
            "webhook",
            common_name=f"{svc}.{namespace}.svc",
            server_names=(f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"),
        )
        certs = tmp_path / "webhook-tls"
        certs.mkdir()
        (certs / "tls.crt").write_bytes(cert.read_bytes())
        (certs / "tls.key").write_bytes(key.read_bytes())
        port = free_port()
        args = _args(
            one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"], port=port, cert_dir=certs
        )
        assert f"--webhook-port={port}" in args
        objects = [service, *_endpoints(svc, namespace, ip=ip, port=port), config]
        cluster.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
        )
        try:
            kubeconfig = service_account_kubeconfig(cluster, namespace, account)
            with operator_process(args, kubeconfig=kubeconfig, log=tmp_path / "operator.log"):

                def refused() -> str | None:
                    done = cluster.kubectl(
                        "apply", "-n", namespace, "-f", "-", input=json.dumps(cycle_manifest("early")), check=False
                    )
                    return (
                        done.stderr if done.returncode != 0 and "does not exist in namespace" in done.stderr else None
                    )

                error = wait(refused, what="the API server refusing a cycle through the chart's webhook")
                assert "spec.lineageRef" in error and "validate.reverie.dev" in error, error
                cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(lineage_manifest()))
                cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(cycle_manifest("night-1")))
                JobSim(cluster.api_client(), namespace).wait_for_job("night-1-consolidation-1")
        finally:
            cluster.kubectl(
                "delete",
                "validatingwebhookconfiguration",
                config["metadata"]["name"],
                "--ignore-not-found",
                check=False,
            )
