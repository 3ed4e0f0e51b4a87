"""The lineage's Prometheus series: gate decisions by outcome, candidate and
champion scores, and one champion_info series per lineage."""

from __future__ import annotations

from datetime import UTC, datetime

from reverie.api.lineage import BaseModelSpec, ModelLineageStatus
from reverie.controller import metrics, promotion
from reverie.core import lineage as L
from reverie.core.gate import decide

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_gate_decision_counts_by_outcome_and_exports_both_scores() -> None:
    decision = decide(["retention >= champion - 0.01"], {"retention": 0.7}, {"retention": 0.9}, now=NOW)
    before = value("reverie_gate_decisions_total", namespace="m1", lineage="demo", outcome="Failed") or 0.0
    promotion.observe_gate(
        namespace="m1", lineage="demo", decision=decision, candidate={"retention": 0.7}, champion={"retention": 0.9}
    )
    assert value("reverie_gate_decisions_total", namespace="m1", lineage="demo", outcome="Failed") == before + 1
    assert value("reverie_eval_score", namespace="m1", lineage="demo", metric="retention", role="candidate") == 0.7
    assert value("reverie_eval_score", namespace="m1", lineage="demo", metric="retention", role="champion") == 0.9


def test_champion_info_keeps_one_series_per_lineage() -> None:
    s = L.ensure_base(ModelLineageStatus(), BaseModelSpec(uri="u"), now=NOW)
    promotion.export_champion(namespace="m2", lineage="demo", status=s)
    s, _ = L.record_candidate(
        s, cycle="c1", uri="u1", content_hash=None, parent="gen-0", scores={}, now=NOW, history_limit=5
    )
    s, _ = L.promote(s, cycle="c1", now=NOW)
    promotion.export_champion(namespace="m2", lineage="demo", status=s)
    assert value("reverie_champion_info", namespace="m2", lineage="demo", generation="gen-1") == 1
    assert value("reverie_champion_info", namespace="m2", lineage="demo", generation="gen-0") is None
    assert value("reverie_champion_generation", namespace="m2", lineage="demo") == 1
    assert value("reverie_last_promotion_timestamp_seconds", namespace="m2", lineage="demo") == NOW.timestamp()
    promotion.forget_lineage(namespace="m2", lineage="demo")
    assert value("reverie_champion_info", namespace="m2", lineage="demo", generation="gen-1") is None
