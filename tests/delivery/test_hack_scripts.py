"""The scripts users run (installers, the kind end-to-end script) pass shellcheck,
and the kind script builds images and installs a chart that exist.

hack/kind-e2e.sh itself needs Docker and is not run here (no Docker engine).
"""

from __future__ import annotations

import re

import pytest
from delivery_engines import REPO, engine, run

SCRIPTS = [
    "install-helm.sh",
    "install-prometheus.sh",
    "install-hadolint.sh",
    "install-minio.sh",
    "install-node.sh",
    "build-images.sh",
    "kind-e2e.sh",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(script: str) -> None:
    shellcheck = engine("shellcheck", install="bash hack/install-hadolint.sh")
    done = run(shellcheck, "--severity=style", "--format=gcc", REPO / "hack" / script, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kind_script_builds_existing_images_and_installs_the_chart() -> None:
    text = (REPO / "hack" / "kind-e2e.sh").read_text()
    dockerfiles = set(re.findall(r"docker build -f (\S+)", text))
    assert dockerfiles == {f"images/{name}/Dockerfile" for name in ("operator", "trainer", "dreamer")}
    assert all((REPO / path).is_file() for path in dockerfiles)
    assert "upgrade --install reverie charts/reverie" in text
    for manifest in re.findall(r"-f (examples/\S+\.yaml)", text):
        assert (REPO / manifest).is_file(), manifest
