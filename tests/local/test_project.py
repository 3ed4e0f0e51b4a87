"""Reading a local run: a directory or one YAML file with a SleepCycle and its lineage."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverie.local.project import ProjectError, load_project, resolve_store_uri

REPO = Path(__file__).resolve().parents[2]

LINEAGE = """
apiVersion: reverie.dev/v1alpha1
kind: ModelLineage
metadata: {name: lin}
spec:
  baseModel: {uri: builtin:tiny}
  store: {uri: .reverie/store}
"""
CYCLE = """
apiVersion: reverie.dev/v1alpha1
kind: SleepCycle
metadata: {name: c1}
spec:
  lineageRef: lin
  memory: {sources: [{uri: builtin:tiny}]}
"""


@pytest.mark.parametrize("example", ["quickstart", "smoke"])
def test_the_examples_load(example: str) -> None:
    project = load_project(REPO / "examples" / example)
    assert project.cycle.spec.lineage_ref == project.lineage.metadata.name
    assert project.store_uri == str((REPO / "examples" / example / ".reverie" / "store").resolve())


def test_the_s3_example_keeps_its_store_uri_and_endpoint() -> None:
    project = load_project(REPO / "examples" / "s3")
    assert project.store_uri == "s3://reverie/store"
    assert project.lineage.spec.store.endpoint == "http://127.0.0.1:9000"


def test_a_single_file_may_hold_both_documents(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(LINEAGE + "---" + CYCLE)
    project = load_project(path)
    assert (project.cycle.metadata.name, project.lineage.metadata.name) == ("c1", "lin")
    assert project.state_dir == tmp_path / ".reverie"


def test_a_named_cycle_file_finds_its_lineage_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "lineage.yaml").write_text(LINEAGE)
    (tmp_path / "sleepcycle.yaml").write_text(CYCLE)
    (tmp_path / "other.yaml").write_text(CYCLE.replace("name: c1", "name: c2"))
    assert load_project(tmp_path / "other.yaml").cycle.metadata.name == "c2"
    with pytest.raises(ProjectError, match="more than one SleepCycle"):
        load_project(tmp_path)


def test_a_missing_lineage_names_the_reference_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "sleepcycle.yaml").write_text(CYCLE)
    with pytest.raises(ProjectError, match=r"spec\.lineageRef is 'lin' but no ModelLineage of that name"):
        load_project(tmp_path)


def test_an_invalid_spec_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "lineage.yaml").write_text(LINEAGE)
    (tmp_path / "sleepcycle.yaml").write_text(CYCLE + "  consolidation: {steps: 0}\n")
    with pytest.raises(ProjectError, match=r"spec\.consolidation\.steps"):
        load_project(tmp_path)


def test_store_uris_resolve_relative_paths_only(tmp_path: Path) -> None:
    assert resolve_store_uri("store", root=tmp_path) == str(tmp_path / "store")
    assert resolve_store_uri("/abs/store", root=tmp_path) == "/abs/store"
    assert resolve_store_uri(f"file://{tmp_path}/s", root=Path("/elsewhere")) == str(tmp_path / "s")
    assert resolve_store_uri("s3://bucket/x", root=tmp_path) == "s3://bucket/x"
