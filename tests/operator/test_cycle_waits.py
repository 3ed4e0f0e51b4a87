"""Cycles that cannot run say why, where people look (Ready, a Warning Event) and start no Job."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.operator.conftest import RunOperator, apply, cycle, lineage, wait
from tests.operator.jobsim import JobSim

pytestmark = pytest.mark.cluster


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def _warnings(cluster: Any, namespace: str, reason: str) -> list[dict[str, Any]]:
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in events if e["reason"] == reason and e["type"] == "Warning"]


def test_a_cycle_on_a_pinned_lineage_starts_no_job_and_runs_once_unpinned(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    apply(cluster, namespace, lineage(rollbackTo="gen-99"))
    apply(cluster, namespace, cycle())
    with run_operator():
        waiting = sim.wait_for_cycle(
            "c1", lambda o: _ready(o).get("reason") == "LineagePinned", what="Ready LineagePinned"
        )
        assert waiting["status"]["phase"] == "Pending"
        assert "gen-99" in _ready(waiting)["message"] and "rollbackTo" in _ready(waiting)["message"]
        wait(lambda: _warnings(cluster, namespace, "LineagePinned"), what="a LineagePinned Warning Event")
        assert sim.jobs() == []  # no GPU hours on a candidate the lineage would refuse
        cluster.kubectl(
            "patch", "modellineage", "lin", "-n", namespace, "--type=merge", "-p", '{"spec":{"rollbackTo":null}}'
        )
        sim.wait_for_job("c1-consolidation-1")


def test_a_cycle_waiting_for_a_missing_lineage_posts_a_warning_and_status_shows_it(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator
) -> None:
    from typer.testing import CliRunner

    from reverie.cli import app

    apply(cluster, namespace, cycle(lineage_ref="nowhere"))
    with run_operator():
        waiting = sim.wait_for_cycle(
            "c1", lambda o: _ready(o).get("reason") == "LineageNotFound", what="LineageNotFound"
        )
        assert _ready(waiting)["status"] == "False"
        wait(lambda: _warnings(cluster, namespace, "LineageNotFound"), what="a LineageNotFound Warning Event")
    shown = CliRunner().invoke(app, ["status", "--kubeconfig", str(cluster.kubeconfig), "-n", namespace])
    assert shown.exit_code == 0, shown.output
    assert "sleepcycle/c1: LineageNotFound" in shown.output and "nowhere" in shown.output
