"""The three images, checked without a Docker engine.

No Docker runs here, so we check what can be checked: every Dockerfile passes
hadolint (the real linter, strict), pins its bases by digest, runs as a numeric
non-root user with ``reverie`` as its entrypoint, installs an extra that
pyproject.toml defines, and that extra's pins are what this environment
resolved to; the ``reverie`` console script and the two commands the images
run exist.  Resolving each extra from the package index afresh takes minutes
(the ``gpu`` extra pulls vLLM and CUDA torch), so that check is opt-in:
``REVERIE_RESOLVE_EXTRAS=1``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from delivery_engines import REPO, hadolint, run

IMAGES = {
    # image: (extra it installs, final USER, default command)
    "operator": ("operator", "65532:65532", ["operator"]),
    "trainer": ("train", "1000:1000", ["run-step"]),
    "dreamer": ("gpu", "1000:1000", ["run-step"]),
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REVERIE = Path(sys.executable).parent / "reverie"


def dockerfile(image: str) -> str:
    return (REPO / "images" / image / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"(?m)^\s*([A-Za-z]+)\s+(.*)$", joined)]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_passes_hadolint_strictly(image: str) -> None:
    done = run(
        hadolint(), "--failure-threshold", "style", "--no-color", REPO / "images" / image / "Dockerfile", check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_rejects_an_unpinned_root_dockerfile() -> None:
    # The linter is real: the habits our Dockerfiles avoid are reported.
    bad = "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install torch\n"
    done = run(hadolint(), "--failure-threshold", "style", "--no-color", "-", input=bad, check=False)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013"):
        assert rule in done.stdout


@pytest.mark.parametrize("image", IMAGES)
def test_image_pins_bases_and_runs_reverie_as_non_root(image: str) -> None:
    extra, user, command = IMAGES[image]
    steps = instructions(dockerfile(image))
    # A base may be a build argument (users keep their own base); its default is pinned.
    defaults = dict(a.split("=", 1) for n, a in steps if n == "ARG" and "=" in a)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], a.split()[0]) for n, a in steps if n == "FROM"]
    assert bases and all(re.search(r":[\w.-]+@sha256:[0-9a-f]{64}$", b) for b in bases), bases
    users = [args for name, args in steps if name == "USER"]
    assert users[-1] == user and not users[-1].startswith("0")
    assert json.loads(next(a for n, a in reversed(steps) if n == "ENTRYPOINT")) == ["reverie"]
    assert json.loads(next(a for n, a in reversed(steps) if n == "CMD")) == command
    installs = " ".join(args for name, args in steps if name == "RUN")
    assert re.search(rf"pip install (--[\w-]+ )*\"[^\"]*\[{extra}\]\"", installs), (
        f"{image} must pip install the [{extra}] extra"
    )
    assert extra in PYPROJECT["project"]["optional-dependencies"]


@pytest.mark.parametrize("extra", ["operator", "train"])
def test_extra_pins_match_the_resolved_environment(extra: str) -> None:
    # This environment was resolved from exactly these extras (hack/setup.sh);
    # a pin that drifted from what pip resolved would break the image build too.
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        name, _, version = requirement.partition("==")
        assert version, f"{requirement}: image extras are pinned exactly"
        assert metadata.version(name) == version, f"{name}: pinned {version}, installed {metadata.version(name)}"


def test_gpu_extra_keeps_vllm_apart_from_the_train_stack() -> None:
    gpu = {r.partition("==")[0] for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]}
    assert "vllm" in gpu and "torch" not in gpu, "vLLM chooses its own CUDA torch"
    assert all("==" in r for r in PYPROJECT["project"]["optional-dependencies"]["gpu"])


def test_reverie_console_script_runs_both_image_commands() -> None:
    assert PYPROJECT["project"]["scripts"]["reverie"] == "reverie.cli:main"
    assert REVERIE.is_file(), "the reverie console script is not installed (pip install -e .)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for command in (["run-step", "--help"], ["operator", "--help"]):
        done = subprocess.run([str(REVERIE), *command], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, f"reverie {' '.join(command)}: {done.stderr}{done.stdout}"


@pytest.mark.skipif(
    not os.environ.get("REVERIE_RESOLVE_EXTRAS"), reason="minutes of index traffic; set REVERIE_RESOLVE_EXTRAS=1"
)
@pytest.mark.parametrize("image", IMAGES)
def test_image_extra_resolves_from_the_index(image: str, tmp_path: Path) -> None:
    extra = IMAGES[image][0]
    report = tmp_path / "report.json"
    # What the Dockerfile does, minus the download of wheels it does not need.
    pre = ["torch==2.13.0"] if image == "trainer" else []
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--quiet",
        "--report",
        report,
        *pre,
        f"{REPO}[{extra}]",
        timeout=3000,
    )
    resolved = {
        _canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        name, _, version = requirement.partition("==")
        got = resolved.get(_canonical(name))
        assert got == version, f"{name}: pinned {version}, resolved {got}"


def _canonical(name: str) -> str:
    """PEP 503 name: prometheus_client and Prometheus-Client are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("image", ["operator", "trainer"])
def test_dependencies_are_a_layer_of_their_own_before_the_code(image: str) -> None:
    # A code change must rebuild one small layer, not the dependencies (hack/build-images.sh relies on it).
    steps = instructions(dockerfile(image))
    code = next(i for i, (name, args) in enumerate(steps) if name == "COPY" and args.split()[0] == "operator/")
    deps = next(i for i, (name, args) in enumerate(steps) if name == "RUN" and "pip install -r" in args)
    assert deps < code, f"{image}: dependencies must be installed before COPY operator/"
    assert not any(name == "COPY" and "operator" in args for name, args in steps[:deps])
