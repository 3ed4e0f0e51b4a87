"""The pure core stays pure: ``reverie.api`` and ``reverie.core`` import no I/O framework.

The planner, the gate, the lineage rules and the API models are what every
other layer trusts and what the fast tests exercise; they must load (and be
reasoned about) without Kopf, the Kubernetes client, torch or fsspec.  Each
package is imported in a fresh interpreter, every module of it, and the test
looks at what ended up in ``sys.modules``: a transitive import counts too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reverie

FORBIDDEN = ("kopf", "kubernetes", "torch", "fsspec")
OPERATOR_ROOT = Path(reverie.__file__).resolve().parents[1]

_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
names = [package.__name__] + [m.name for m in pkgutil.walk_packages(getattr(package, "__path__", []), package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _imports_of(package: str) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OPERATOR_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, package], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("package", ["reverie.api", "reverie.core"])
def test_the_pure_packages_import_no_io_framework(package: str) -> None:
    found = _imports_of(package)
    assert len(found["modules"]) > 1, f"{package} has no modules to check"
    leaked = sorted(set(FORBIDDEN) & set(found["loaded"]))
    assert not leaked, (
        f"importing {package} loads {', '.join(leaked)}: the pure core must not depend on them; "
        "move the code that needs them to reverie.controller, reverie.local or reverie.workloads"
    )


def test_the_check_sees_a_forbidden_import() -> None:
    # The probe itself works: a package that does import one of them is caught.
    found = _imports_of("reverie.controller.kube")
    assert "kubernetes" in found["loaded"]
