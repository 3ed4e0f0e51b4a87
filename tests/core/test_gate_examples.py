"""Every gate rule shipped in examples/ and in the API defaults parses, and the
example's rules decide as documented in its comments."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reverie.api.steps import GateSpec
from reverie.core.gate import decide, parse_rule

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def _rules(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = list(node.get("gate", {}).get("rules", [])) if isinstance(node.get("gate"), dict) else []
        return found + [r for v in node.values() for r in _rules(v)]
    if isinstance(node, list):
        return [r for v in node for r in _rules(v)]
    return []


def _example_rules() -> list[str]:
    rules: list[str] = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            rules += _rules(doc)
    return rules


@pytest.mark.parametrize("rule", sorted(set(_example_rules())) + GateSpec().rules)
def test_shipped_rule_parses(rule: str) -> None:
    parse_rule(rule)


def test_gate_rules_example_decides_as_its_comments_say() -> None:
    cycle = list(yaml.safe_load_all((EXAMPLES / "gate-rules.yaml").read_text()))[1]
    rules = cycle["spec"]["evaluation"]["gate"]["rules"]
    champion = {"knowledge_incorporation": 0.40, "retention": 0.83, "perplexity": 12.0}
    better = {"knowledge_incorporation": 0.70, "retention": 0.81, "perplexity": 12.3}
    assert decide(rules, better, champion, now=NOW).outcome == "Passed"
    forgetful = {**better, "retention": 0.80}
    assert decide(rules, forgetful, champion, now=NOW).outcome == "Failed"
    unmeasured = {k: v for k, v in better.items() if k != "perplexity"}
    assert decide(rules, unmeasured, champion, now=NOW).outcome == "Inconclusive"
