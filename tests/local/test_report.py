"""The run report: self-contained HTML with every section, opened in real Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.local.chromium import chromium, ink_fraction, load_page

from reverie.local.state import LocalState, save_state
from reverie.report import write_report
from reverie.report.collect import collect, memory_of

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"


def test_recall_items_pair_before_and_after_per_question(finished_run: tuple[LocalState, Path]) -> None:
    data = collect(finished_run[0])
    assert [(i.before, i.after) for i in data.recall] == [(False, True), (False, True), (False, False), (True, True)]
    assert {i.memory for i in data.recall} == {"s1-0", "s1-1", "s1-2", "s1-3"}
    assert ("retention", 1.0, 0.9) in data.suites


def test_memory_ids_are_read_from_question_ids() -> None:
    assert memory_of("mem-3-q1") == "mem-3"
    assert memory_of("doc:2") == "doc"
    assert memory_of("standalone") == "standalone"


def test_the_report_is_self_contained_and_has_every_section(
    finished_run: tuple[LocalState, Path], tmp_path: Path
) -> None:
    state, _ = finished_run
    html = write_report(state, tmp_path / "report.html").read_text()
    assert re.search(r"""(src|href)\s*=\s*["'](https?:|//|[^"'#])""", html) is None, "no external assets"
    assert "<script" not in html
    plots = re.findall(r'data-plot="([^"]+)"', html)
    assert plots == [
        "loss:c1-consolidation-1",
        "loss:c1-dreaming-1",
        "loss:c1-evaluation-1",
        "recall",
        "scores",
        "lineage",
    ]
    for needle in ("knowledge_incorporation &gt;= champion + 0.1", "Passed", "gen-0", "gen-1", "0.250 → 0.750"):
        assert needle in html


def test_the_report_shows_each_questions_answer_before_and_after(
    finished_run: tuple[LocalState, Path], tmp_path: Path
) -> None:
    html = write_report(finished_run[0], tmp_path / "report.html").read_text()
    row = next(r for r in html.split("<tr>") if "Where does Person0 live?" in r)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert cells[:2] == ["Where does Person0 live?", "City0"]
    assert (cells[3], cells[5]) == ("Nowhere", "City0"), "the answer before the sleep, then after"


def test_the_report_of_an_unfinished_run_has_gaps_not_errors(
    finished_run: tuple[LocalState, Path], tmp_path: Path
) -> None:
    state, _ = finished_run
    cycle = state.cycles[0]
    cycle.status.records = cycle.status.records[:1]
    cycle.status.gate = None
    cycle.status.phase = "Dreaming"
    state.jobs = {k: v for k, v in state.jobs.items() if "consolidation" in k}
    html = write_report(state, tmp_path / "partial.html").read_text()
    assert "The gate has not decided yet." in html and "No evaluation results yet." in html


@pytest.mark.skipif(chromium() is None, reason="chromium missing: run `bash hack/install-chromium.sh`")
def test_the_report_opens_in_chromium_with_its_plots_and_no_console_errors(
    finished_run: tuple[LocalState, Path],
    tmp_path: Path,
) -> None:
    state, state_dir = finished_run
    save_state(state_dir, state)
    page = write_report(state, tmp_path / "report.html")
    loaded = load_page(page, workdir=tmp_path, screenshot=ARTIFACTS / "report-unit.png")
    assert loaded.console == []
    assert len(re.findall(r"<svg[^>]*data-plot=", loaded.dom)) == 6
    assert "Promotion gate" in loaded.dom
    assert loaded.screenshot is not None and ink_fraction(loaded.screenshot) > 0.02


@pytest.mark.skipif(chromium() is None, reason="chromium missing: run `bash hack/install-chromium.sh`")
def test_the_browser_check_catches_console_errors(tmp_path: Path) -> None:
    # The check above must be able to fail: a page with a script error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>console.error('boom'); missing();</script></body></html>")
    loaded = load_page(bad, workdir=tmp_path)
    assert any("boom" in line for line in loaded.console)
    assert any("missing is not defined" in line for line in loaded.console)
