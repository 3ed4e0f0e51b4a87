"""The one Event builder: every Event names its object and the same reporting component."""

from __future__ import annotations

from datetime import UTC, datetime

from reverie.controller.events import REPORTING_COMPONENT, SOURCE_COMPONENT, event_body

NOW = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)


def _obj(kind: str) -> dict[str, object]:
    return {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "resourceVersion": "7"},
    }


def test_cycle_and_lineage_events_share_one_reporting_component() -> None:
    cycle = event_body(_obj("SleepCycle"), reason="Consolidating", message="started", now=NOW)
    lineage = event_body(_obj("ModelLineage"), reason="Promoted", message="gen-1", now=NOW)
    for body in (cycle, lineage):
        assert body["reportingComponent"] == REPORTING_COMPONENT == "reverie.dev/operator"
        assert body["source"] == {"component": SOURCE_COMPONENT}
        assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-11-20T03:00:00Z"
    assert cycle["involvedObject"]["kind"] == "SleepCycle" and lineage["involvedObject"]["kind"] == "ModelLineage"
    assert cycle["involvedObject"]["uid"] == "u-1" and cycle["metadata"] == {"generateName": "demo.", "namespace": "ns"}


def test_reason_and_message_are_cut_to_the_api_server_limits() -> None:
    body = event_body(_obj("SleepCycle"), reason="R" * 300, message="m" * 5000, type="Warning", now=NOW)
    assert len(body["reason"]) == 128 and len(body["message"]) == 1024 and body["type"] == "Warning"
