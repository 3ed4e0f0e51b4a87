"""The operator as the chart deploys it, run here: the chart's identity in a fresh
namespace, ``reverie`` with the Deployment's own arguments as a subprocess, and
the manifests of a small lineage and cycle for it to work on.

Used by the tests that run the operator under the chart's RBAC
(test_operator_observed.py, test_operator_identity.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from delivery_engines import free_port, one, render

RELEASE = "reverie"
LINEAGE = "assistant"
# How the API server words an RBAC denial of the operator's identity.
DENIED = re.compile(r'User \\?"system:(serviceaccount:[^"\\]+|anonymous)\\?" cannot')


def token_kubeconfig(cluster: Any, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig with a real token of the ServiceAccount (TokenRequest), as a pod would have."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca.cert)},
                    }
                ],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {"name": account, "context": {"cluster": "test", "user": account, "namespace": namespace}}
                ],
                "current-context": account,
            }
        )
    )
    return path


def service_account_kubeconfig(cluster: Any, namespace: str, account: str) -> Path:
    """A client certificate carrying exactly the ServiceAccount's user name and groups.

    The API server authorizes a request by user name and groups, whatever
    authenticated it, so RBAC treats this identity as the ServiceAccount itself:
    the chart's RoleBinding (subject kind ServiceAccount) is all it holds.
    """
    return Path(
        cluster.user_kubeconfig(
            f"system:serviceaccount:{namespace}:{account}",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
        )
    )


def apply(cluster: Any, namespace: str, body: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))


def lineage_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "metadata": {"name": LINEAGE},
        # An inbox (empty: nothing drops memories here) so that its gauges are exported too.
        "spec": {"baseModel": {"uri": "builtin:tiny"}, "store": {"uri": "file:///store"}, "memory": {"inbox": {}}},
    }


def cycle_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "SleepCycle",
        "metadata": {"name": name},
        "spec": {
            "lineageRef": LINEAGE,
            "memory": {"sources": [{"inline": ["The sky on Zorblax is green."]}]},
            "dreaming": {"enabled": True},  # the three-step cycle (dreaming is off by default)
            "retries": {"maxAttempts": 2, "backoffSeconds": 1, "backoffMultiplier": 1.0, "maxBackoffSeconds": 1},
            "evaluation": {"gate": {"rules": ["knowledge_incorporation >= 0.5", "retention >= champion - 0.05"]}},
        },
    }


def wait_http(url: str, *, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"operator exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout}s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def chart_identity(
    cluster: Any, *, scope: str = "namespaces", release: str = RELEASE
) -> Iterator[tuple[str, str, list[str]]]:
    """A fresh namespace with the chart's ServiceAccount and RBAC (for ``scope``) applied.

    Yields (namespace, ServiceAccount name, the Deployment's operator arguments).
    """
    namespace = f"obs-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_for_default_service_account(namespace)
    rendered = render(
        {"watch": {"scope": scope}, "dashboards": {"enabled": False}}, release=release, namespace=namespace
    )
    identity = [
        o
        for o in rendered
        if o["kind"] in {"ServiceAccount", "Role", "RoleBinding", "ClusterRoleBinding"}
        or (o["kind"] == "ClusterRole" and o["metadata"]["name"].startswith(f"{release}-"))
    ]
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": identity})
    )
    try:
        yield (
            namespace,
            one(rendered, "ServiceAccount")["metadata"]["name"],
            one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
        )
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        for obj in identity:
            if obj["kind"].startswith("Cluster"):
                cluster.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False)


@contextlib.contextmanager
def operator_process(args: list[str], *, kubeconfig: Path, log: Path) -> Iterator[int]:
    """``reverie`` with the Deployment's arguments (metrics on a free loopback port); yields the port."""
    port = free_port()
    args = [a if not a.startswith("--metrics-port=") else f"--metrics-port={port}" for a in args]
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "REVERIE_RESYNC_SECONDS": "2",
        "REVERIE_LINEAGE_INTERVAL_S": "2",
        "REVERIE_METRICS_HOST": "127.0.0.1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "reverie"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process=process, log=log)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
