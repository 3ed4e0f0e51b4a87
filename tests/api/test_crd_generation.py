"""The CRD generator: committed YAML is current, and the schema is one the API
server will take (structural, bounded for CEL cost, documented)."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_cases import IMMUTABLE, MALFORMED, sleepcycle

from reverie.api import SleepCycle
from reverie.api.crdgen import main, render_crds, rendered_files, stale

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
CRDS = {crd["spec"]["names"]["kind"]: crd for crd in render_crds()}


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its dotted path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}[*]")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")


def test_committed_crds_match_the_generator() -> None:
    assert stale(CRD_DIR) == [], "crds/ is stale: run `make crds` (python -m reverie.api.crdgen --write crds/)"
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(rendered_files())


def test_check_mode_names_a_stale_file(tmp_path: Path) -> None:
    lines: list[str] = []
    assert main(["--write", str(tmp_path)], echo=lines.append) == 0
    assert main(["--check", str(tmp_path)], echo=lines.append) == 0
    target = tmp_path / "reverie.dev_sleepcycles.yaml"
    target.write_text(target.read_text().replace("maximum: 0.9", "maximum: 1.0"))
    lines.clear()
    assert main(["--check", str(tmp_path)], echo=lines.append) == 1
    assert len(lines) == 1 and "reverie.dev_sleepcycles.yaml is stale" in lines[0]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "nullable"}
    for path, node in nodes(schema_of(kind)):
        assert not forbidden & set(node), f"{kind}{path}: {sorted(forbidden & set(node))}"
        assert "type" in node, f"{kind}{path}: no type"
        if node["type"] == "object" and path != ".metadata":
            assert "properties" in node or "additionalProperties" in node, f"{kind}{path}: free-form object"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{kind}{path}: {bound} must be a flag in OpenAPI v3.0"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_size_is_bounded_so_cel_cost_stays_low(kind: str) -> None:
    for path, node in nodes(schema_of(kind)):
        if path in (".apiVersion", ".kind"):
            continue
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node or node.get("format") == "date-time", f"{kind}{path}"
        if node["type"] == "array":
            assert "maxItems" in node, f"{kind}{path}"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{kind}{path}"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_described(kind: str) -> None:
    for path, node in nodes(schema_of(kind)):
        if path and not path.endswith(("[]", "[*]")) and path != ".metadata":
            assert node.get("description"), f"{kind}{path}: no description for kubectl explain"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_cel_messages_name_a_field_of_their_object(kind: str) -> None:
    rules = [
        (path, node, rule) for path, node in nodes(schema_of(kind)) for rule in node.get("x-kubernetes-validations", [])
    ]
    assert rules
    for path, node, rule in rules:
        names = set(node.get("properties", {})) | {"metadata.name"}
        assert any(name in rule["message"] for name in names), f"{kind}{path}: {rule['message']!r} names no field"
        # "<what is wrong>; <what to do>"
        assert ";" in rule["message"], f"{kind}{path}: {rule['message']!r} says no fix"
        if "fieldPath" in rule:
            target: dict[str, Any] = node
            for part in rule["fieldPath"].strip(".").split("."):
                target = target["properties"][part]


def test_immutable_fields_use_transition_rules_on_the_live_object_only() -> None:
    spec = schema_of("SleepCycle")["properties"]["spec"]
    transition = {r["fieldPath"] for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]}
    assert transition == {".lineageRef", ".baseGeneration", ".memory"}
    template = schema_of("ModelLineage")["properties"]["spec"]["properties"]["schedule"]["properties"]["template"]
    assert not [r for _, n in nodes(template) for r in n.get("x-kubernetes-validations", []) if "oldSelf" in r["rule"]]


def test_names_columns_and_subresources() -> None:
    sc, ml = CRDS["SleepCycle"], CRDS["ModelLineage"]
    assert sc["spec"]["names"]["shortNames"] == ["sleep"] and ml["spec"]["names"]["shortNames"] == ["mlin"]
    assert sc["spec"]["names"]["categories"] == ml["spec"]["names"]["categories"] == ["reverie"]
    for crd in (sc, ml):
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}} and version["served"] and version["storage"]
    columns = [c["name"] for c in sc["spec"]["versions"][0]["additionalPrinterColumns"] if "priority" not in c]
    assert columns == ["Lineage", "Phase", "Generation", "Gate", "Age"]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    for column in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]:
        path = re.sub(r"\[\?\(.*?\)\]", "[]", column["jsonPath"]).strip(".").split(".")
        if path[0] == "metadata":
            continue
        node = schema_of(kind)
        for part in path:
            node = node["properties"][part.removesuffix("[]")]
            if part.endswith("[]"):
                node = node["items"]
        assert node["type"] == column["type"] or (node["type"], column["type"]) == ("string", "date"), column


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server's structural defaulting does to ``value``."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def test_schema_defaults_equal_the_model_defaults() -> None:
    manifest = sleepcycle()
    defaulted = apply_defaults(schema_of("SleepCycle")["properties"]["spec"], manifest["spec"])
    assert defaulted == SleepCycle.model_validate(manifest).spec.wire()


def test_yaml_is_plain_and_loads_back() -> None:
    for name, text in rendered_files().items():
        assert text.startswith("# Generated by `reverie crds`")
        assert yaml.safe_load(text)["metadata"]["name"] == f"{name.split('_')[1].removesuffix('.yaml')}.reverie.dev"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_cel_rule_has_a_malformed_case(kind: str) -> None:
    covered = [case.message for case in MALFORMED] + [message for *_, message in IMMUTABLE]
    for path, node in nodes(schema_of(kind)):
        for rule in node.get("x-kubernetes-validations", []):
            assert any(fragment in rule["message"] for fragment in covered), (
                f"{kind}{path}: no malformed case exercises {rule['message']!r}"
            )


def test_docs_and_schema_agree_on_the_schedule_templates_lineage_ref() -> None:
    # The schema requires template.lineageRef and rejects any other value (crd_cases:
    # ml-template-other-lineage); what `kubectl explain` and the README say must match.
    template = schema_of("ModelLineage")["properties"]["spec"]["properties"]["schedule"]["properties"]["template"]
    assert "lineageRef" in template["required"]
    assert "must be this lineage's name" in template["description"] and "forced" not in template["description"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "`template.lineageRef` must name the lineage itself" in readme
