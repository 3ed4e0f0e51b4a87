"""A one-node Kubernetes on this machine: the control plane of :mod:`tests.k8s_cluster`
plus kube-scheduler, every controller, containerd, runc, the CNI bridge, kube-proxy
and one kubelet — real pods, from the project's own images.

What it needs (``hack/install-node.sh``): root, containerd, runc and the CNI
plugins from Debian; kubelet, kube-scheduler and kube-proxy built beside the
API server (``hack/build-apiserver.sh``); the images as OCI archives
(``hack/build-images.sh``), imported into containerd here when their digest
changed.  The host, as found on this project's machines (``shared/research/real-node.md``):

* cgroup v1: kubelet >= 1.35 refuses it unless ``failCgroupV1: false``;
* root without ``CAP_SYS_RESOURCE``: the sandbox's ``oomScoreAdj: -998`` makes
  runc fail, so containerd clamps it (``restrict_oom_score_adj``);
* PID 1 is not systemd: ``cgroupDriver: cgroupfs`` in kubelet and containerd;
* the node's address is the CNI bridge's gateway, 10.88.0.1, made before anything
  starts: the API server, MinIO and the kubelet listen there, pods reach it over
  the bridge and the tests reach pods through it, and nothing listens on the
  machine's outside interface;
* no disk eviction and no image garbage collection: images cannot be pulled again.

One node per machine (it owns containerd's socket, the kubelet's ports and
``cni0``): the fixture is session-scoped and cleans up what an earlier,
killed run left behind before it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tests.k8s_cluster import Cluster, cache_root, k8s_bin_dir

NODE_NAME = "reverie-node"
NODE_IP = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR_FIRST_IP = "10.0.0.1"
BRIDGE = "cni0"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CONTAINERD_ROOT = Path("/var/lib/containerd")
KUBELET_ROOT = Path("/var/lib/kubelet")
CNI_CONF_DIR = Path("/etc/cni/net.d")
CNI_BIN_DIR = "/usr/lib/cni"
PAUSE_IMAGE = "localhost/reverie/pause:1"
IMAGES = {
    "pause": PAUSE_IMAGE,
    "operator": "localhost/reverie/operator:node",
    "trainer": "localhost/reverie/trainer:node",
}
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy")
HOST_PACKAGES = ("containerd", "runc", "/usr/lib/cni/bridge", "iptables", "buildah")
INSTALL_COMMAND = "bash hack/install-node.sh"
# What the kubelet would otherwise write itself (protectKernelDefaults: true makes it only check).
KERNEL_TUNABLES = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
NODE_READY_TIMEOUT_S = 120.0


def images_dir() -> Path:
    """Where hack/build-images.sh writes the image archives."""
    return cache_root() / "images"


def missing() -> list[str]:
    """What this machine lacks for a node, as lines naming the fix (empty: nothing)."""
    lines = []
    if os.geteuid() != 0:
        lines.append("root (the kubelet and containerd run as root)")
    for name in HOST_PACKAGES:
        if not (Path(name).exists() if name.startswith("/") else shutil.which(name)):
            lines.append(f"{name} ({INSTALL_COMMAND})")
    for name in NODE_BINARIES:
        if not (k8s_bin_dir() / name).is_file():
            lines.append(f"{k8s_bin_dir() / name} ({INSTALL_COMMAND})")
    for name in IMAGES:
        if not (images_dir() / f"{name}.tar").is_file():
            lines.append(f"{images_dir() / name}.tar (bash hack/build-images.sh)")
    return lines


def _sh(*command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done


def _ctr(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return _sh("ctr", "--address", CONTAINERD_SOCKET, "-n", "k8s.io", *args, check=check, timeout=timeout)


def _mounts_under(*roots: Path | str) -> list[str]:
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [p for p in points if any(p == str(r) or p.startswith(f"{r}/") for r in roots)]


def remove_containers() -> None:
    """Kill and remove every container (pods' and sandboxes') containerd holds for the kubelet."""
    tasks = _ctr("tasks", "ls", "-q", check=False, timeout=30).stdout.split()
    for task in tasks:
        _ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for task in tasks:
            _ctr("tasks", "delete", task, check=False, timeout=30)
        if not _ctr("tasks", "ls", "-q", check=False, timeout=30).stdout.split():
            break
        time.sleep(0.5)
    for container in _ctr("containers", "ls", "-q", check=False, timeout=30).stdout.split():
        _ctr("containers", "rm", container, check=False, timeout=30)


def clean_host() -> None:
    """Remove what a node run leaves on the machine: pods' containers, mounts, the bridge, iptables chains.

    Pod processes live in cgroups outside this process tree (``/kubepods``), so
    stopping the kubelet and containerd does not stop them: their tasks are
    killed through containerd while it still runs, then everything else goes.
    """
    for name in ("kubelet", "kube-proxy", "kube-scheduler"):
        _sh("pkill", "-KILL", "-x", name, check=False)
    if Path(CONTAINERD_SOCKET).exists() and _sh("pgrep", "-x", "containerd", check=False).returncode == 0:
        remove_containers()
    _sh("pkill", "-TERM", "-x", "containerd", check=False)
    for _ in range(50):
        if _sh("pgrep", "-x", "containerd", check=False).returncode != 0:
            break
        time.sleep(0.1)
    _sh("pkill", "-KILL", "-f", "containerd-shim-runc-v2", check=False)
    for point in sorted(_mounts_under(KUBELET_ROOT, "/run/containerd", "/run/netns"), key=len, reverse=True):
        _sh("umount", "-l", point, check=False)
    _sh("ip", "link", "delete", BRIDGE, check=False)
    proxy = k8s_bin_dir() / "kube-proxy"
    if proxy.is_file():
        _sh(str(proxy), "--cleanup", check=False)
    for table, chains in (("nat", ("POSTROUTING",)), ("filter", ("FORWARD",))):
        rules = _sh("iptables", "-t", table, "-S", check=False).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and ("CNI-" in rule) and rule.split()[1] in chains:
                _sh("iptables", "-t", table, *shlex.split(rule.replace("-A ", "-D ", 1)), check=False)
        for rule in rules:
            if rule.startswith("-N CNI-"):
                _sh("iptables", "-t", table, "-F", rule.split()[1], check=False)
                _sh("iptables", "-t", table, "-X", rule.split()[1], check=False)
    shutil.rmtree("/var/lib/cni", ignore_errors=True)
    # Pod folders (volumes, logs) of earlier runs; the kubelet's own state is remade.
    for sub in ("pods", "plugins", "pod-resources", "cpu_manager_state", "memory_manager_state"):
        target = KUBELET_ROOT / sub
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()
    shutil.rmtree("/var/log/pods", ignore_errors=True)


def prepare_host() -> None:
    """Idempotent host settings: forwarding, the kubelet's kernel tunables, shared mounts, the bridge."""
    for key, value in {"net.ipv4.ip_forward": "1", **KERNEL_TUNABLES}.items():
        _sh("sysctl", "-qw", f"{key}={value}")
    nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if nf.exists() and nf.read_text().strip() != "1":
        nf.write_text("1")
    _sh("mount", "--make-rshared", "/")
    _sh("ip", "link", "add", BRIDGE, "type", "bridge", check=False)
    _sh("ip", "addr", "replace", f"{NODE_IP}/16", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    for folder in (CNI_CONF_DIR, KUBELET_ROOT, Path("/etc/containerd")):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in CNI_CONF_DIR.glob("*"):
        if stale.name != "10-reverie.conflist":
            stale.unlink()
    (CNI_CONF_DIR / "10-reverie.conflist").write_text(json.dumps(cni_config(), indent=1))


def cni_config() -> dict[str, Any]:
    """The bridge network every pod joins, NATed to the outside, with a default route through the node."""
    return {
        "cniVersion": "1.0.0",
        "name": "reverie",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def containerd_config(state: Path) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "/run/containerd"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: the kubelet's oomScoreAdj of -998 is clamped to what it may set.
  restrict_oom_score_adj = true
  tolerate_missing_hugepages_controller = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{CNI_CONF_DIR}"
"""


def kubelet_config(ca: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "cgroupDriver": "cgroupfs",
        # This machine runs cgroup v1 (a tmpfs at /sys/fs/cgroup); kubelet >= 1.35 refuses it by default.
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        # Local images cannot be pulled again and CI's disk may be nearly full: never evict for disk, never GC images.
        "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "protectKernelDefaults": True,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "serializeImagePulls": False,
        "failSwapOn": False,
        # A 2-core machine: no CPU is held back from pods.
        "systemReserved": {},
        "kubeReserved": {},
        "fileCheckFrequency": "5s",
        "syncFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        # How often emptyDir use is measured (default 1m): an over-limit /tmp is evicted within seconds.
        "volumeStatsAggPeriod": "5s",
    }


def kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_CIDR,
        "bindAddress": NODE_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Write no global conntrack settings: this machine's are its own.
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


class NodeCluster(Cluster):
    """The control plane with every controller and a scheduler, and one real node."""

    address = NODE_IP
    authorization_modes = "Node,RBAC"
    controllers = "*"
    endpoint_reconciler = "lease"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.kubelet_client: tuple[Path, Path] | None = None

    def extra_server_names(self) -> Sequence[str]:
        return (SERVICE_CIDR_FIRST_IP, "kubernetes.default.svc.cluster.local")

    def apiserver_flags(self) -> list[str]:
        if self.kubelet_client is None:
            # The API server's identity towards the kubelet (logs, exec): allowed everything there.
            self.kubelet_client = self.ca.issue(
                "apiserver-kubelet", common_name="kube-apiserver-kubelet-client", groups=("system:masters",)
            )
        cert, key = self.kubelet_client
        return [
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={cert}",
            f"--kubelet-client-key={key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ]

    def controller_manager_flags(self) -> list[str]:
        return ["--cluster-name=reverie-node", "--concurrent-job-syncs=5"]

    def _identity(self, name: str, user: str, groups: Sequence[str] = ()) -> Path:
        cert, key = self.ca.issue(name, common_name=user, groups=groups)
        return self._write_kubeconfig(self.workdir / f"{name}.kubeconfig", user=user, cert=cert, key=key)

    def start(self) -> None:
        super().start()
        bins = k8s_bin_dir()
        began = time.monotonic()

        scheduler_config = self.workdir / "scheduler.yaml"
        scheduler_config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self._identity("scheduler", "system:kube-scheduler"))},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self._spawn(
            "kube-scheduler", [str(bins / "kube-scheduler"), "--config", str(scheduler_config), "--secure-port=0"]
        )

        containerd_toml = self.workdir / "containerd.toml"
        containerd_toml.write_text(containerd_config(self.workdir))
        self._spawn("containerd", ["containerd", "--config", str(containerd_toml), "--log-level", "warn"])
        self._wait("containerd's socket", lambda: _ctr("version", timeout=10).returncode == 0)
        plugins = _ctr("plugins", "ls").stdout
        if not any(
            "io.containerd.grpc.v1" in line and "cri" in line and " ok" in line for line in plugins.splitlines()
        ):
            raise self._failure(f"containerd's CRI plugin is not ok:\n{plugins}")
        remove_containers()  # what a killed earlier run left in containerd's store
        self.import_images()

        kubelet_yaml = self.workdir / "kubelet.yaml"
        kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(self.ca.cert)))
        node_kubeconfig = self._identity("node", f"system:node:{NODE_NAME}", ("system:nodes",))
        self._spawn(
            "kubelet",
            [
                str(bins / "kubelet"),
                "--config",
                str(kubelet_yaml),
                "--kubeconfig",
                str(node_kubeconfig),
                "--hostname-override",
                NODE_NAME,
                "--node-ip",
                NODE_IP,
                "--root-dir",
                str(KUBELET_ROOT),
                "--cert-dir",
                str(self.workdir / "kubelet-pki"),
                "--v",
                "1",
            ],
        )
        proxy_yaml = self.workdir / "kube-proxy.yaml"
        proxy_yaml.write_text(yaml.safe_dump(kube_proxy_config(self._identity("proxy", "system:kube-proxy"))))
        self._spawn("kube-proxy", [str(bins / "kube-proxy"), "--config", str(proxy_yaml), "--v", "1"])
        self._wait("node Ready", self._node_ready, timeout=NODE_READY_TIMEOUT_S)
        self.node_seconds = time.monotonic() - began

    def _node_ready(self) -> bool:
        done = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False, timeout=10)
        if done.returncode != 0:
            return False
        conditions = json.loads(done.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def import_images(self) -> None:
        """Import each image archive whose image ID containerd does not hold yet (a stamp per image)."""
        stamps = CONTAINERD_ROOT / "reverie-images"
        stamps.mkdir(parents=True, exist_ok=True)
        listed = _ctr("images", "ls", "-q").stdout.split()
        for name, ref in IMAGES.items():
            archive, image_id = images_dir() / f"{name}.tar", images_dir() / f"{name}.id"
            wanted = image_id.read_text().strip() if image_id.exists() else archive.stat().st_mtime_ns
            stamp = stamps / name
            if ref in listed and stamp.exists() and stamp.read_text() == str(wanted):
                continue
            _ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=900)
            if ref not in _ctr("images", "ls", "-q").stdout.split():
                raise self._failure(f"{archive} imported, but containerd lists no {ref}")
            stamp.write_text(str(wanted))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            clean_host()
        super().stop()
