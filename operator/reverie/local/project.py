"""Read a local run: a directory (or one YAML file) holding a SleepCycle and its
ModelLineage, exactly as they would be applied to a cluster.

``reverie sleep examples/quickstart`` and ``reverie sleep examples/quickstart/sleepcycle.yaml``
both work: every ``*.yaml``/``*.yml`` of the directory (or the one file) is read,
and it must hold one SleepCycle and the ModelLineage it names.  Relative store
paths are resolved against that directory, so a run never writes outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import SleepCycle

STATE_DIR_NAME = ".reverie"


class ProjectError(ValueError):
    """A local run directory that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Project:
    """The resources of a local run, and where its state lives."""

    root: Path
    cycle: SleepCycle
    lineage: ModelLineage
    sources: tuple[Path, ...]

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR_NAME

    @property
    def store_uri(self) -> str:
        return resolve_store_uri(self.lineage.spec.store.uri, root=self.root)


def resolve_store_uri(uri: str, *, root: Path) -> str:
    """A store URI usable by local processes: relative paths land under ``root``."""
    if "://" in uri:
        if uri.startswith("file://"):
            return str(Path(uri.removeprefix("file://")).resolve())
        return uri
    path = Path(uri)
    return str(path if path.is_absolute() else (root / path).resolve())


def _documents(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        raise ProjectError(f"{path}: not valid YAML ({exc})") from exc
    return [(path, doc) for doc in docs if isinstance(doc, dict)]


def _validation_message(path: Path, kind: str, exc: ValidationError) -> str:
    lines = [f"{path}: this {kind} is invalid:"]
    for err in exc.errors()[:8]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_project(target: Path | str) -> Project:
    """Read the SleepCycle and ModelLineage of a run directory or YAML file."""
    target = Path(target)
    if not target.exists():
        raise ProjectError(f"{target}: no such file or directory")
    if target.is_dir():
        root = target.resolve()
        files = sorted(p for p in root.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
        if not files:
            raise ProjectError(f"{target}: no *.yaml files (expected a SleepCycle and a ModelLineage)")
    else:
        root = target.resolve().parent
        files = [target.resolve()]
        # A lone sleepcycle.yaml may keep its lineage in a sibling file.
        files += sorted(p for p in root.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file() and p != files[0])
    cycles: list[tuple[Path, SleepCycle]] = []
    lineages: list[tuple[Path, ModelLineage]] = []
    for path in files:
        for source, doc in _documents(path):
            kind = doc.get("kind")
            try:
                if kind == "SleepCycle":
                    cycles.append((source, SleepCycle.model_validate(doc)))
                elif kind == "ModelLineage":
                    lineages.append((source, ModelLineage.model_validate(doc)))
            except ValidationError as exc:
                raise ProjectError(_validation_message(source, str(kind), exc)) from exc
    if not target.is_dir():
        # The file named on the command line decides which cycle runs.
        cycles = [c for c in cycles if c[0] == files[0]] or cycles
    if not cycles:
        raise ProjectError(f"{target}: no SleepCycle found (kind: SleepCycle)")
    if len(cycles) > 1:
        names = ", ".join(f"{c.metadata.name} ({p.name})" for p, c in cycles)
        raise ProjectError(f"{target}: more than one SleepCycle ({names}); name the file to run")
    cycle_path, cycle = cycles[0]
    if not cycle.metadata.name:
        raise ProjectError(f"{cycle_path}: the SleepCycle needs metadata.name")
    wanted = cycle.spec.lineage_ref
    matching = [(p, lin) for p, lin in lineages if lin.metadata.name == wanted]
    if not matching:
        found = ", ".join(lin.metadata.name for _, lin in lineages) or "none"
        raise ProjectError(
            f"{cycle_path}: spec.lineageRef is {wanted!r} but no ModelLineage of that name is in "
            f"{root} (found: {found}); add a lineage.yaml with kind: ModelLineage, metadata.name: {wanted}"
        )
    lineage_path, lineage = matching[0]
    return Project(root=root, cycle=cycle, lineage=lineage, sources=(cycle_path, lineage_path))
