"""Fixtures of the node tests: a one-node Kubernetes (:mod:`tests.node.cluster`), the
chart installed into it, a MinIO its pods reach, and a PVC store.

``node`` (session) cleans what an earlier run left, prepares the host, starts the
control plane, containerd, the kubelet and kube-proxy, and imports the images;
``chart`` (session) installs ``charts/reverie`` with ``helm install`` — the
operator runs as the Deployment's pod, from ``localhost/reverie/operator:node``,
its webhook served from that pod; ``node_s3`` is a MinIO on the node's address.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.k8s_cluster import die_with_parent, free_port, missing_binaries, running, unavailable
from tests.node import cluster as node_cluster
from tests.node.cluster import IMAGES, NODE_IP, NodeCluster
from tests.s3server import S3Server, minio_binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "reverie"
SYSTEM_NAMESPACE = "reverie-system"
RELEASE = "reverie"
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], *, what: str, timeout: float = 120.0, every: float = 1.0) -> T:
    """``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as error:  # a transient API error is retried like a falsy answer
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def node() -> Iterator[NodeCluster]:
    """A real one-node Kubernetes: pods run from the project's images under a real kubelet."""
    missing = missing_binaries() + node_cluster.missing()
    if missing:
        unavailable("real node unavailable; missing: " + "; ".join(missing))
    node_cluster.clean_host()
    node_cluster.prepare_host()
    with running(NodeCluster, prefix="reverie-node-") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def node_s3() -> Iterator[S3Server]:
    """MinIO listening on the node's address, so pods reach it over the bridge."""
    if not minio_binary().is_file():
        unavailable(f"real S3 server unavailable; missing: {minio_binary()}")
    workdir = Path(tempfile.mkdtemp(prefix="reverie-node-s3-"))
    server = S3Server(
        workdir,
        port=free_port(NODE_IP),
        console_port=free_port(NODE_IP),
        preexec=die_with_parent,
        address=NODE_IP,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def helm() -> Path:
    from tests.delivery.delivery_engines import helm as find_helm

    return find_helm()


@dataclass
class Chart:
    """The installed release: where the operator runs and how to reach it."""

    namespace: str
    release: str

    def operator_pod(self, node: NodeCluster) -> dict[str, Any]:
        pods = json.loads(
            node.kubectl(
                "get", "pods", "-n", self.namespace, "-l", "app.kubernetes.io/name=reverie", "-o", "json"
            ).stdout
        )["items"]
        running = [
            p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]
        if len(running) != 1:
            raise AssertionError(f"expected one running operator pod, found {[p['metadata']['name'] for p in pods]}")
        return running[0]


def install_webhook_tls(node: NodeCluster, namespace: str, release: str) -> str:
    """The serving certificate cert-manager would issue for the chart's webhook Service, as a Secret; its CA, base64."""
    service = f"{release}-webhook"
    cert, key = node.ca.issue(
        "webhook",
        common_name=f"{service}.{namespace}.svc",
        server_names=(f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"),
    )
    node.kubectl("create", "secret", "tls", "reverie-webhook-tls", "-n", namespace, f"--cert={cert}", f"--key={key}")
    return base64.b64encode(node.ca.cert.read_bytes()).decode()


@pytest.fixture(scope="session")
def chart(node: NodeCluster) -> Iterator[Chart]:
    """``helm install`` of charts/reverie: the operator as its Deployment's pod, the webhook on."""
    node.kubectl("create", "namespace", SYSTEM_NAMESPACE)
    node.wait_for_default_service_account(SYSTEM_NAMESPACE)
    ca_bundle = install_webhook_tls(node, SYSTEM_NAMESPACE, RELEASE)
    repository, tag = IMAGES["operator"].rsplit(":", 1)
    done = subprocess.run(
        [
            str(helm()),
            "install",
            RELEASE,
            str(CHART),
            "-n",
            SYSTEM_NAMESPACE,
            "--kubeconfig",
            str(node.kubeconfig),
            "--skip-crds",  # the node fixture installed them from crds/ (identical: tests/delivery/test_chart.py)
            "--set",
            f"operator.image.repository={repository}",
            "--set",
            f"operator.image.tag={tag}",
            "--set",
            "operator.image.pullPolicy=Never",
            "--set",
            "operator.logLevel=debug",
            "--set",
            "dashboards.enabled=false",
            "--set",
            "webhook.enabled=true",
            "--set",
            "webhook.failurePolicy=Fail",
            "--set",
            "webhook.certManager.enabled=false",
            "--set",
            "webhook.existingSecret=reverie-webhook-tls",
            "--set",
            f"webhook.caBundle={ca_bundle}",
            "--wait",
            "--timeout",
            "5m",
        ],
        capture_output=True,
        text=True,
        env=node.env(),
        timeout=400,
    )
    if done.returncode != 0:
        describe = node.kubectl("describe", "pods", "-n", SYSTEM_NAMESPACE, check=False).stdout
        raise AssertionError(f"helm install failed:\n{done.stderr}{done.stdout}\n{describe[-4000:]}")
    yield Chart(SYSTEM_NAMESPACE, RELEASE)


@pytest.fixture
def node_namespace(node: NodeCluster) -> Iterator[str]:
    """A fresh namespace on the node (deleted afterwards, with its pods)."""
    with node.fresh_namespace("n") as name:
        yield name


@pytest.fixture(scope="session")
def local_storage(node: NodeCluster) -> str:
    """A StorageClass for statically provisioned local volumes (no provisioner runs here)."""
    node.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": "reverie-local"},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "Immediate",
            }
        ),
    )
    return "reverie-local"
