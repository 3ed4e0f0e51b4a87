"""The Grafana dashboards' structure, and their agreement with the metric catalogue.

No Grafana server installs here, so the JSON model is type-checked by the
TypeScript compiler against Grafana's own schema types (npm @grafana/schema;
unknown keys and wrong value types are errors), checked for what Grafana needs
to load it (unique stable uids, panel ids, a 24-column grid without overlaps, a
Prometheus datasource variable, every used variable defined), and every query
names only metrics the operator exports.  Whether each query
returns data is proven against a real Prometheus in test_operator_observed.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from dashboard_queries import DASHBOARDS, load, metric_names, panels, targets
from delivery_engines import CACHE, engine, run

from reverie.controller import metrics

PANEL_TYPES = {"row", "timeseries", "stat", "table", "heatmap", "state-timeline", "bargauge"}


def catalogue() -> set[str]:
    """Every metric name the operator exports (counters with their _total suffix)."""
    return {f.name + ("_total" if f.type == "counter" else "") for f in metrics.REGISTRY.collect()}


def test_there_is_a_dashboard_for_each_concern() -> None:
    uids = sorted(load(p)["uid"] for p in DASHBOARDS)
    assert uids == ["reverie-cycles", "reverie-lineage", "reverie-operator", "reverie-phases"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_model_is_loadable_by_grafana(path: Any) -> None:
    board = load(path)
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"].startswith("Reverie / ") and "reverie" in board["tags"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels(board):
        assert panel["type"] in PANEL_TYPES, panel["type"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], "every panel says what it shows"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs))
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__range"}
            assert used <= variables.keys(), f"{panel['title']}: undefined variables {used - variables.keys()}"


def test_dashboards_query_only_exported_metrics_and_cover_them_all() -> None:
    exported = catalogue()
    used: set[str] = set()
    for uid, title, expr in targets():
        names = metric_names(expr)
        assert names, f"{uid} / {title}: no reverie_ metric in {expr}"
        assert names <= exported, f"{uid} / {title}: unknown metrics {names - exported}"
        used |= names
    assert exported - used == set(), f"metrics no panel shows: {exported - used}"


def test_dashboards_type_check_against_grafanas_schema(tmp_path: Path) -> None:
    here = Path(__file__).resolve().parent / "grafana_schema"
    modules = CACHE / "grafana-schema" / "node_modules"
    if not (modules / ".bin" / "tsc").exists():
        engine("grafana-schema-tsc", install="bash hack/install-hadolint.sh")  # skips, or fails in CI
    node = engine("node", install="apt-get install nodejs")
    for name in ("tsconfig.json", "wire.ts"):
        shutil.copy(here / name, tmp_path)
    (tmp_path / "node_modules").symlink_to(modules)
    for path in DASHBOARDS:
        # `satisfies` keeps the literal types and rejects keys the schema does not know.
        (tmp_path / f"{path.stem}.ts").write_text(
            'import type { Dashboard } from "@grafana/schema";\n'
            'import type { Wire } from "./wire.js";\n'
            f"export const dashboard = {path.read_text()} satisfies Wire<Dashboard>;\n"
        )
    done = run(node, modules / "typescript" / "bin" / "tsc", "-p", tmp_path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
