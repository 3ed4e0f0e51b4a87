"""The real engines the delivery tests drive: helm, promtool, prometheus, hadolint.

Each is installed once by its ``hack/install-*.sh`` (run by ``hack/setup.sh``);
tests find them here.  Where one is missing a test is skipped with the install
command, unless ``CI`` or ``REVERIE_REQUIRE_CLUSTER`` is set: then it fails, so
CI can never go green by skipping.  Also here: rendering the chart with values
and reading the rendered objects back, and a throwaway Prometheus server on a
loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "reverie"
CACHE = Path(os.environ.get("REVERIE_CACHE", Path.home() / ".cache" / "reverie"))


def _required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("REVERIE_REQUIRE_CLUSTER"))


def engine(name: str, *, install: str) -> Path:
    """Path of the binary ``name``, else skip (or fail in CI) with how to install it."""
    candidates = [CACHE / "bin" / name, Path(sys.executable).parent / name]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None and (which := shutil.which(name)):
        found = Path(which)
    if found is None:
        message = f"{name} not installed: run `{install}`"
        if _required():
            pytest.fail(message + " (required in CI)", pytrace=False)
        pytest.skip(message)
    return found


def helm() -> Path:
    return engine("helm", install="bash hack/install-helm.sh")


def promtool() -> Path:
    return engine("promtool", install="bash hack/install-prometheus.sh")


def prometheus() -> Path:
    return engine("prometheus", install="bash hack/install-prometheus.sh")


def hadolint() -> Path:
    return engine("hadolint", install="bash hack/install-hadolint.sh")


def run(
    *command: str | Path, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], input=input, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "reverie",
    namespace: str = "reverie-system",
    check: bool = True,
) -> list[dict[str, Any]]:
    """``helm template`` the chart (with CRDs) and return the rendered objects."""
    # Values go in on stdin: --set cannot express lists of objects cleanly.
    done = run(
        helm(),
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--include-crds",
        "--values",
        "-",
        input=json.dumps(dict(values or {})),
        check=check,
    )
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_error(values: Mapping[str, Any]) -> str:
    """Render values that should be refused; return Helm's error text."""
    done = run(helm(), "template", "reverie", CHART, "--values", "-", input=json.dumps(dict(values)), check=False)
    assert done.returncode != 0, f"helm accepted values it should refuse: {values}"
    return done.stderr


def lint(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return run(helm(), "lint", "--strict", CHART, "--values", "-", input=json.dumps(dict(values or {})), check=False)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in matches]}"
    return matches[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """Debian's Prometheus on a free loopback port, scraping the given targets."""

    def __init__(
        self,
        workdir: Path,
        *,
        targets: list[str],
        scrape_interval: str = "1s",
        job: str = "reverie-metrics",
        labels: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets, "labels": labels or {}}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    str(prometheus()),
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.wait_until(lambda: self._get("/-/ready") is not None, what="Prometheus ready", timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def _get(self, path: str) -> bytes | None:
        with contextlib.suppress(OSError), urllib.request.urlopen(self.url + path, timeout=5) as response:
            return bytes(response.read())
        return None

    def api(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        body = self._get(f"/api/v1/{path}?{query}")
        assert body is not None, f"Prometheus did not answer /api/v1/{path}; log: {self.log.read_text()[-2000:]}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def wait_until(self, ready: Any, *, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            if ready():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def prometheus_server(*, targets: list[str], scrape_interval: str = "1s") -> Iterator[PrometheusServer]:
    with tempfile.TemporaryDirectory(prefix="reverie-prometheus-") as workdir:
        server = PrometheusServer(Path(workdir), targets=targets, scrape_interval=scrape_interval)
        try:
            server.start()
            yield server
        finally:
            server.stop()
