"""Draw the report: matplotlib plots as inline SVG, a hand-drawn lineage graph,
and the page template (``report.html.j2``).

Every figure is an ``<svg>`` element inside the page (``data-plot`` names it, for
the browser test), so the file has no external assets and no scripts.
"""

from __future__ import annotations

import html
import io
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from reverie.api.lineage import GenerationState
from reverie.local.state import LocalState
from reverie.report.collect import RecallItem, ReportData, collect
from reverie.workloads.store.atomic import write_atomic

TEMPLATE = "report.html.j2"
STATE_COLOURS = {
    GenerationState.CHAMPION: "#2e7d32",
    GenerationState.RETIRED: "#757575",
    GenerationState.CANDIDATE: "#1565c0",
    GenerationState.REJECTED: "#c62828",
}
BEFORE, AFTER = "#9e9e9e", "#1565c0"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig: Any, name: str, label: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buffer.getvalue()
    # Inline SVG: drop the XML prolog and DOCTYPE, name the plot for tests and screen readers.
    text = text[text.index("<svg") :]
    return text.replace(
        "<svg ",
        f'<svg data-plot="{html.escape(name)}" role="img" aria-label="{html.escape(label)}" ',
        1,
    )


def loss_plot(job: str, series: dict[str, list[tuple[int, float]]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.4, 2.4))
    for name, points in sorted(series.items(), key=lambda kv: (kv[0] != "loss", kv[0])):
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        ax.plot(
            steps,
            values,
            label=name,
            linewidth=1.6 if name == "loss" else 1.0,
            marker="." if len(points) < 30 else None,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(job, loc="left")
    if len(series) > 1:
        ax.legend(frameon=False, fontsize=7, ncols=min(len(series), 4))
    ax.grid(alpha=0.3)
    return _svg(fig, f"loss:{job}", f"loss curve of {job}")


def recall_plot(items: list[RecallItem]) -> str:
    plt = _pyplot()
    memories: dict[str, list[RecallItem]] = {}
    for item in items:
        memories.setdefault(item.memory, []).append(item)
    names = list(memories)
    before = [sum(bool(i.before) for i in memories[m]) / len(memories[m]) for m in names]
    after = [sum(bool(i.after) for i in memories[m]) / len(memories[m]) for m in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 1.5), 2.6))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, color=BEFORE, label="before (champion)")
    ax.bar([x + 0.2 for x in xs], after, width=0.4, color=AFTER, label="after (candidate)")
    ax.set_xticks(list(xs), names, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("closed-book recall")
    ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig, "recall", "closed-book recall of each new memory before and after the sleep")


def scores_plot(data: ReportData) -> str | None:
    report = data.evaluation
    rows: list[tuple[str, float, float, tuple[float, float] | None, tuple[float, float] | None]] = []
    for name, before, after in data.suites:
        if name == "perplexity" or name.startswith("perplexity"):
            continue
        if before is None and after is None:
            continue
        b_ci = a_ci = None
        if report is not None:
            if name in report.candidate.scores:
                iv = report.candidate.scores[name].interval
                a_ci = (iv.low, iv.high)
            if report.champion is not None and name in report.champion.scores:
                iv = report.champion.scores[name].interval
                b_ci = (iv.low, iv.high)
        rows.append(
            (name, before if before is not None else math.nan, after if after is not None else math.nan, b_ci, a_ci)
        )
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(rows) + 0.9))
    ys = list(range(len(rows)))

    def errors(values: list[float], cis: list[tuple[float, float] | None]) -> list[list[float]]:
        # max(0, ·): float dust at the interval's ends must not make matplotlib refuse the bars.
        lo = [
            max(0.0, v - c[0]) if c and math.isfinite(c[0]) and math.isfinite(v) else 0.0
            for v, c in zip(values, cis, strict=True)
        ]
        hi = [
            max(0.0, c[1] - v) if c and math.isfinite(c[1]) and math.isfinite(v) else 0.0
            for v, c in zip(values, cis, strict=True)
        ]
        return [lo, hi]

    champion = [r[1] for r in rows]
    candidate = [r[2] for r in rows]
    ax.barh(
        [y + 0.2 for y in ys],
        champion,
        height=0.38,
        color=BEFORE,
        label="champion (before)",
        xerr=errors(champion, [r[3] for r in rows]),
        error_kw={"elinewidth": 0.8, "capsize": 2},
    )
    ax.barh(
        [y - 0.2 for y in ys],
        candidate,
        height=0.38,
        color=AFTER,
        label="candidate (after)",
        xerr=errors(candidate, [r[4] for r in rows]),
        error_kw={"elinewidth": 0.8, "capsize": 2},
    )
    ax.set_yticks(ys, [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("accuracy (95% interval)")
    ax.legend(frameon=False, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, "scores", "evaluation scores of champion and candidate, retention included")


def lineage_svg(data: ReportData) -> str:
    """Generations as a graph: nodes coloured by state, an arrow from each parent."""
    gens = data.lineage.status.generations
    if not gens:
        return '<svg data-plot="lineage" role="img" aria-label="lineage graph (empty)" width="200" height="40"></svg>'
    col: dict[str, int] = {}
    row: dict[str, int] = {}
    rows_used: dict[int, int] = {}
    for gen in gens:
        depth = col[gen.parent] + 1 if gen.parent in col else 0
        col[gen.name] = depth
        row[gen.name] = rows_used.get(depth, 0)
        rows_used[depth] = row[gen.name] + 1
    w, h, gap_x, gap_y = 150, 58, 60, 22
    width = (max(col.values()) + 1) * (w + gap_x) + 20
    height = max(rows_used.values()) * (h + gap_y) + 20
    parts = [
        f'<svg data-plot="lineage" role="img" aria-label="lineage graph of generations" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
    ]
    pos = {g.name: (10 + col[g.name] * (w + gap_x), 10 + row[g.name] * (h + gap_y)) for g in gens}
    for gen in gens:
        if gen.parent in pos:
            px, py = pos[gen.parent]
            x, y = pos[gen.name]
            parts.append(
                f'<line x1="{px + w}" y1="{py + h / 2}" x2="{x}" y2="{y + h / 2}" stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )
    for gen in gens:
        x, y = pos[gen.name]
        colour = STATE_COLOURS.get(GenerationState(gen.state), "#555")
        ki = gen.scores.get("knowledge_incorporation")
        detail = f"recall {ki:.2f}" if ki is not None and math.isfinite(ki) else (gen.cycle or "base model")
        bold = ' stroke-width="3"' if gen.name == data.lineage.status.champion else ' stroke-width="1.5"'
        parts.append(
            f"<g><title>{html.escape(gen.name)}: {html.escape(str(gen.state))} — {html.escape(gen.uri)}</title>"
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="#fff" stroke="{colour}"{bold}/>'
            f'<text x="{x + 10}" y="{y + 20}" font-size="13" font-weight="bold" fill="{colour}">{html.escape(gen.name)}</text>'
            f'<text x="{x + 10}" y="{y + 36}" font-size="11" fill="#333">{html.escape(str(gen.state))}</text>'
            f'<text x="{x + 10}" y="{y + 50}" font-size="10" fill="#666">{html.escape(detail[:24])}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.3f}"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "–"
    seconds = (end - start).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def render_html(data: ReportData) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = _fmt
    plots = {
        "losses": [(job, loss_plot(job, series)) for job, series in data.losses.items()],
        "recall": recall_plot(data.recall) if data.recall else None,
        "scores": scores_plot(data),
        "lineage": lineage_svg(data),
    }
    status = data.cycle.status
    records = [
        {
            "job": r.job_name,
            "step": str(r.step),
            "attempt": r.attempt,
            "result": str(r.result),
            "reason": r.reason,
            "duration": _duration(r.start_time, r.completion_time),
            "message": r.message,
            "launches": next((j.launches for j in data.jobs if j.name == r.job_name), 1),
        }
        for r in status.records
    ]
    recall_before = [i.before for i in data.recall if i.before is not None]
    recall_after = [i.after for i in data.recall if i.after is not None]
    page = env.get_template(TEMPLATE).render(
        cycle=data.cycle,
        status=status,
        lineage=data.lineage,
        plots=plots,
        records=records,
        recall=data.recall,
        suites=data.suites,
        gate=status.gate,
        recall_before=sum(recall_before) / len(recall_before) if recall_before else None,
        recall_after=sum(recall_after) / len(recall_after) if recall_after else None,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    # Keep the file compact: matplotlib indents every SVG element.
    return re.sub(r"\n\s+<", "\n<", page)


def write_report(state: LocalState, out: Path, *, cycle: str | None = None) -> Path:
    """Render the report of ``cycle`` (default: the latest) to ``out`` atomically."""
    write_atomic(out, render_html(collect(state, cycle=cycle)))
    return out
