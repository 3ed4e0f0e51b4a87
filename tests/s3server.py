"""A real S3 server for the store tests: MinIO, built from its Go module by ``hack/install-minio.sh``.

``tests/conftest.py`` starts one per session (fixture ``s3_server``) on a free
port of 127.0.0.1, with a throwaway data folder and fixed root credentials;
fixture ``s3`` gives each test a fresh bucket and the ``AWS_*`` environment a
phase in a Job would get from ``spec.store.secretName`` and ``spec.store.endpoint``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

MINIO_VERSION = os.environ.get("REVERIE_MINIO_VERSION", "v0.0.0-20260212201848-7aac2a2c5b7c")
INSTALL_COMMAND = "bash hack/install-minio.sh"
ACCESS_KEY = "reverie-test"
SECRET_KEY = "reverie-test-secret"
START_TIMEOUT_S = 30.0


def minio_binary() -> Path:
    """Where hack/install-minio.sh puts the server (``$REVERIE_MINIO`` overrides)."""
    if explicit := os.environ.get("REVERIE_MINIO"):
        return Path(explicit)
    cache = Path(os.environ.get("REVERIE_CACHE", Path.home() / ".cache" / "reverie"))
    return cache / f"minio-{MINIO_VERSION}" / "bin" / "minio"


class S3Server:
    """A running MinIO server."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int,
        console_port: int,
        preexec: Callable[[], None] | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        # address: where it listens; a node's pods reach it at the node's bridge address (tests/node).
        self.address = address
        self.endpoint = f"http://{address}:{port}"
        self._port, self._console_port, self._preexec = port, console_port, preexec
        self._process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "minio.log"

    def env(self) -> dict[str, str]:
        """What a phase pod gets: credentials from the store Secret, the endpoint from spec.store.endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> None:
        env = {
            **os.environ,
            "MINIO_ROOT_USER": ACCESS_KEY,
            "MINIO_ROOT_PASSWORD": SECRET_KEY,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            # The bench reads bytes sent from the metrics endpoint without a token.
            "MINIO_PROMETHEUS_AUTH_TYPE": "public",
        }
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                [
                    str(minio_binary()),
                    "server",
                    "--quiet",
                    "--address",
                    f"{self.address}:{self._port}",
                    "--console-address",
                    f"{self.address}:{self._console_port}",
                    str(self.workdir / "data"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=self._preexec,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"minio exited ({self._process.returncode}):\n{self.log.read_text(errors='replace')[-3000:]}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(
            f"minio not ready after {START_TIMEOUT_S:.0f}s:\n{self.log.read_text(errors='replace')[-3000:]}"
        )

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)

    def new_bucket(self) -> str:
        """A fresh, empty bucket; returns ``s3://<name>``."""
        import s3fs

        name = f"t-{uuid.uuid4().hex[:12]}"
        fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint)
        fs.mkdir(name)
        return f"s3://{name}"

    def sent_bytes(self) -> int:
        """Bytes of S3 responses the server has sent so far (its own counter)."""
        with urllib.request.urlopen(f"{self.endpoint}/minio/v2/metrics/cluster", timeout=5) as response:
            text = response.read().decode()
        match = re.search(r"^minio_s3_traffic_sent_bytes\{[^}]*\} (\S+)$", text, re.M)
        return int(float(match[1])) if match else 0
