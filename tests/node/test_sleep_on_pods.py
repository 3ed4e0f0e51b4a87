"""A sleep cycle on real pods: the chart installed on a one-node Kubernetes, the operator
running as its Deployment's pod, phases running as pods of the trainer image under the
hardened pod spec, reading and writing the store (MinIO here; a PVC in
test_faults_on_pods.py), the gate promoting, the export Job writing the servable form
and the serving target following.

Everything is real: kubelet, containerd, runc, the scheduler, the Job controller,
kube-proxy, the images built by ``hack/build-images.sh``.  A cycle of the tiny model
(``examples/smoke``'s sizes, dreaming on) takes a few minutes here.
"""

from __future__ import annotations

import json
import os

import pytest
from tests.node.cluster import IMAGES, NODE_IP, NodeCluster
from tests.node.conftest import Chart, wait_for
from tests.node.sleeps import (
    LINEAGE,
    apply,
    assert_sleep_ran_on_pods,
    cycle_manifest,
    get,
    lineage_manifest,
    reverie,
    serving_config_map,
)
from tests.s3server import S3Server

from reverie.local.bootstrap import ensure_tiny_world

pytestmark = [pytest.mark.cluster, pytest.mark.node, pytest.mark.slow]


def test_the_chart_runs_the_operator_as_its_pod_and_its_webhook_answers(node: NodeCluster, chart: Chart) -> None:
    pod = chart.operator_pod(node)
    (container,) = pod["spec"]["containers"]
    assert container["image"] == IMAGES["operator"] and container["imagePullPolicy"] == "Never"
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # The API server calls the webhook served from that pod: a cycle naming no lineage is refused.
    # (The pod is Ready only once its webhook port answers; the API server's view of the endpoints may lag.)
    def refused() -> str | None:
        done = node.kubectl(
            "apply", "-n", "default", "-f", "-", input=json.dumps(cycle_manifest("orphan", "/x.jsonl")), check=False
        )
        return done.stderr if done.returncode != 0 and "spec.lineageRef" in done.stderr else None

    error = wait_for(refused, what="the API server refusing a cycle through the operator pod's webhook", timeout=30)
    assert "validate.reverie.dev" in error, error


def test_prometheus_scrapes_the_operator_pod(node: NodeCluster, chart: Chart) -> None:
    from tests.delivery.delivery_engines import prometheus_server

    ip = chart.operator_pod(node)["status"]["podIP"]
    with prometheus_server(targets=[f"{ip}:8080"]) as prom:
        prom.wait_until(
            lambda: (
                prom.api("query", query='up{job="reverie-metrics"} == 1')["result"]
                and prom.api("query", query="reverie_build_info")["result"]
            ),
            what="Prometheus scraping the operator pod's /metrics",
        )


def test_a_sleep_cycle_on_real_pods_with_the_store_on_minio_and_two_processes(
    node: NodeCluster, chart: Chart, node_namespace: str, node_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    for key, value in node_s3.env().items():
        monkeypatch.setenv(key, value)
    # fsspec keeps one S3FileSystem per set of arguments, with the endpoint the environment had when it was
    # made: the suite's other MinIO (tests/conftest.py s3_server) would otherwise receive this upload.
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setattr(s3fs.S3FileSystem, "cachable", False)
    bucket = node_s3.new_bucket()
    world = ensure_tiny_world(f"{bucket}/store", LINEAGE)
    node.kubectl(
        "create",
        "secret",
        "generic",
        "store-credentials",
        "-n",
        node_namespace,
        f"--from-literal=AWS_ACCESS_KEY_ID={node_s3.env()['AWS_ACCESS_KEY_ID']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={node_s3.env()['AWS_SECRET_ACCESS_KEY']}",
        "--from-literal=AWS_REGION=us-east-1",
    )
    store = {"uri": f"{bucket}/store", "secretName": "store-credentials", "endpoint": node_s3.endpoint}
    assert node_s3.endpoint.startswith(f"http://{NODE_IP}:")
    apply(node, node_namespace, serving_config_map(), lineage_manifest(store, world.base_uri, world.old_memories))
    # Consolidation as torchrun with two processes in one pod (gloo on CPU).
    apply(node, node_namespace, cycle_manifest("night-1", world.sessions[0], runtime={"procsPerNode": 2}))
    lineage = assert_sleep_ran_on_pods(node, node_namespace, "night-1")
    job = get(node, node_namespace, "job", "night-1-consolidation-1")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][0] == "torchrun"
    # The export Job reached MinIO (its endpoint from the one pod builder), and `reverie ask` reads the champion.
    served = lineage["status"]["servable"]["uri"]
    assert served.startswith(bucket)
    answer = reverie(node, "ask", "--lineage", LINEAGE, "-n", node_namespace, "Where was the first person born?")
    assert LINEAGE in answer.stdout or "QUESTION" in answer.stdout, answer.stdout
    assert os.environ["AWS_ENDPOINT_URL_S3"] == node_s3.endpoint
