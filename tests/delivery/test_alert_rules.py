"""The chart's alert rules, checked and unit-tested by the real ``promtool``.

The rules are taken from the rendered PrometheusRule (what users install), not
from a second copy, and ``alert_rules_test.yaml`` (minute-scale alerts) and
``alert_rules_days_test.yaml`` (day-scale alerts) feed them synthetic series:
each alert must fire when its condition holds for long enough, and stay quiet
for the near-misses beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from delivery_engines import one, promtool, render, run

HERE = Path(__file__).resolve().parent


def _write_rules(directory: Path, values: dict | None = None) -> Path:
    rule = one(render({"prometheusRule": {"enabled": True}, **(values or {})}), "PrometheusRule")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    done = run(promtool(), "check", "rules", _write_rules(tmp_path))
    assert "SUCCESS: 8 rules found" in done.stdout, done.stdout


@pytest.mark.parametrize("unit_tests", ["alert_rules_test.yaml", "alert_rules_days_test.yaml"])
def test_alerts_fire_exactly_when_their_conditions_hold(tmp_path: Path, unit_tests: str) -> None:
    _write_rules(tmp_path)
    shutil.copy(HERE / unit_tests, tmp_path)
    done = run(promtool(), "test", "rules", tmp_path / unit_tests, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_thresholds_follow_values(tmp_path: Path) -> None:
    path = _write_rules(
        tmp_path,
        {
            "prometheusRule": {
                "enabled": True,
                "alertLabels": {"team": "ml-platform"},
                "alerts": {
                    "cycleStuck": {"for": "90m", "severity": "critical"},
                    "championStale": {"days": 3, "severity": "warning"},
                },
            }
        },
    )
    rules = {r["alert"]: r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}
    assert rules["ReverieCycleStuck"]["for"] == "90m"
    assert rules["ReverieCycleStuck"]["labels"] == {"severity": "critical", "team": "ml-platform"}
    assert rules["ReverieChampionStale"]["expr"].endswith("> 259200")
    run(promtool(), "check", "rules", path)
