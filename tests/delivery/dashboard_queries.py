"""Reading the chart's Grafana dashboards: panels, their PromQL, and the metric names they use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from delivery_engines import CHART

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
METRIC = re.compile(r"\b(reverie_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets() -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every query of every panel."""
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                yield dashboard["uid"], panel["title"], target["expr"]


def metric_family(name: str) -> str:
    """reverie_x_seconds_bucket -> reverie_x_seconds (the name in the catalogue)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def metric_names(expr: str) -> set[str]:
    return {metric_family(m) for m in METRIC.findall(expr)}


def concrete(expr: str, *, values: dict[str, str], rate_interval: str, range_: str) -> str:
    """The query Grafana would send, with template variables filled in."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr
