"""The pydantic models of SleepCycle and ModelLineage: defaults, wire form,
round trips, and agreement with the CRD on what is malformed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_cases import MALFORMED, Malformed, modellineage, sleepcycle
from pydantic import ValidationError

from reverie import GROUP, VERSION
from reverie.api import ModelLineage, SleepCycle, SleepCycleStatus
from reverie.api.base import Resources, parse_quantity
from reverie.api.sleepcycle import Phase
from reverie.api.steps import GateSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KINDS: dict[str, Any] = {"SleepCycle": SleepCycle, "ModelLineage": ModelLineage}


def test_minimal_sleepcycle_takes_the_paper_defaults() -> None:
    cycle = SleepCycle.model_validate(sleepcycle())
    spec = cycle.spec
    assert cycle.api_version == f"{GROUP}/{VERSION}"
    assert (spec.consolidation.alpha, spec.consolidation.beta, spec.consolidation.lam) == (0.9, 0.5, 0.5)
    assert spec.consolidation.zero_stage == "0" and spec.consolidation.precision == "fp32"
    assert (spec.dreaming.dreams_per_context, spec.dreaming.top_k, spec.dreaming.random_extra) == (4, 2, 1)
    assert spec.evaluation.gate.rules == ["knowledge_incorporation >= champion", "retention >= champion - 0.05"]
    assert spec.promotion.policy == "auto" and spec.promotion.on_inconclusive == "Reject"
    assert spec.retries.max_attempts == 3 and spec.suspend is False
    assert spec.base_generation is None and spec.ttl_seconds_after_finished is None
    assert cycle.status.phase == Phase.PENDING


def test_wire_form_is_camel_case_and_keeps_the_paper_name_lambda() -> None:
    wire = SleepCycle.model_validate(sleepcycle()).wire()
    assert wire["apiVersion"] == "reverie.dev/v1alpha1"
    consolidation = wire["spec"]["consolidation"]
    assert "lambda" in consolidation and "lam" not in consolidation
    assert "replayRatio" in consolidation and "replay_ratio" not in consolidation
    # Unset optional fields are left out rather than written as null.
    assert "baseGeneration" not in wire["spec"]


@pytest.mark.parametrize(
    ("path", "document"),
    [(p, d) for p in sorted(EXAMPLES.rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text())],
    ids=lambda v: str(v.relative_to(EXAMPLES)) if isinstance(v, Path) else None,
)
def test_example_round_trips_through_the_wire_form(path: Path, document: dict[str, Any]) -> None:
    model = KINDS[document["kind"]]
    parsed = model.model_validate(document)
    again = model.model_validate(parsed.wire())
    assert again == parsed
    assert again.wire() == parsed.wire()


def test_status_round_trips() -> None:
    status = SleepCycleStatus.model_validate(
        {
            "phase": "Evaluating",
            "records": [
                {
                    "step": "consolidation",
                    "attempt": 1,
                    "jobName": "night-consolidation-1",
                    "result": "Succeeded",
                    "metrics": {"loss": 0.25},
                    "startTime": "2026-11-25T03:00:00Z",
                }
            ],
            "gate": {"outcome": "Passed", "rules": [{"rule": "retention >= 0.5", "verdict": "Passed"}]},
            "conditions": [{"type": "Consolidated", "status": "True", "observedGeneration": 1}],
        }
    )
    assert SleepCycleStatus.model_validate(status.wire()) == status
    assert status.wire()["records"][0]["jobName"] == "night-consolidation-1"


def test_unknown_fields_are_rejected_not_dropped() -> None:
    with pytest.raises(ValidationError, match="learnRate"):
        SleepCycle.model_validate(
            {**sleepcycle(), "spec": {**sleepcycle()["spec"], "consolidation": {"learnRate": 1e-3}}}
        )


@pytest.mark.parametrize(
    "rule",
    [
        "retention >= 0.5",
        "knowledge_incorporation > champion",
        "perplexity <= champion + 0.5",
        "fewshot < champion - 1",
        "  retention>=-0.25  ",
    ],
)
def test_gate_rule_grammar_accepts(rule: str) -> None:
    GateSpec(rules=[rule])


@pytest.mark.parametrize(
    "rule",
    [
        "retention == 0.5",
        "Retention >= 0.5",
        "retention >= champion * 2",
        "retention >=",
        "retention >= 1e3",
        "0.5 <= retention",
    ],
)
def test_gate_rule_grammar_rejects(rule: str) -> None:
    with pytest.raises(ValidationError):
        GateSpec(rules=[rule])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", Decimal(4)),
        ("500m", Decimal("0.5")),
        ("16Gi", Decimal(16 * 2**30)),
        ("1e3", Decimal(1000)),
        ("1.5G", Decimal("1.5e9")),
        (".5", Decimal("0.5")),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_limits_compare_as_quantities_not_strings() -> None:
    Resources(requests={"memory": "900Mi", "cpu": "500m"}, limits={"memory": "1Gi", "cpu": "1"})
    with pytest.raises(ValidationError, match="every limit must be >= its request"):
        Resources(requests={"memory": "2Gi"}, limits={"memory": "1500Mi"})


def test_lineage_defaults() -> None:
    lineage = ModelLineage.model_validate(modellineage())
    assert lineage.spec.history_limit == 20 and lineage.spec.base_model.format == "hf"
    assert lineage.spec.schedule is None and lineage.status.next_generation == 1


MODEL_CASES = [case for case in MALFORMED if case.model_rejects]


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.id)
def test_model_rejects_what_the_crd_rejects(case: Malformed) -> None:
    model = KINDS[case.manifest["kind"]]
    with pytest.raises(ValidationError):
        model.model_validate(case.manifest)


def test_most_malformed_cases_are_judged_by_the_models_too() -> None:
    assert len(MODEL_CASES) >= len(MALFORMED) - 5
