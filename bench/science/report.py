"""Table and plot of bench/science results: ``report.py RESULTS.json [MORE.json ...] --png OUT.png``.

Prints one markdown row per (run, arm, sleep): held-out recall of that sleep's
facts (and as a share of the in-context upper bound), recall of earlier sleeps'
facts, general-QA retention (share of the questions the base answered),
perplexity, wall time, s/step, peak RSS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for run in results["runs"]:
        arms = run["arms"]
        upper = {r["sleep"]: r["recall"] for r in arms.get("incontext", [])}
        base_ppl = {r["sleep"]: r["perplexity"] for r in arms.get("base", [])}
        for arm, records in arms.items():
            for r in records:
                up = upper.get(r["sleep"])
                out.append(
                    {
                        "seed": run["seed"],
                        "arm": arm,
                        "sleep": r["sleep"] + 1,
                        "recall": r["recall"],
                        "of_upper": r["recall"] / up if up else None,
                        "earlier": r.get("earlier_recall") or [],
                        "general_qa": r.get("general_qa"),
                        "perplexity": r.get("perplexity"),
                        "ppl_change": (r["perplexity"] / base_ppl[r["sleep"]] - 1)
                        if r.get("perplexity") and base_ppl.get(r["sleep"])
                        else None,
                        "wall": r.get("wall_seconds"),
                        "s_per_step": r.get("s_per_step"),
                        "rss": r.get("peak_rss_mb"),
                        "leaks": r.get("leaks"),
                    }
                )
    return out


def fmt(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "–"
    if isinstance(x, list):
        return " / ".join(format(v, spec) for v in x) if x else "–"
    return format(x, spec)


def table(all_rows: list[dict[str, Any]]) -> str:
    head = (
        "| seed | arm | sleep | held-out recall | of upper bound | earlier sleeps' recall | general QA kept "
        "| perplexity (Δ vs base) | wall s | s/step | peak RSS MB | leaks |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in all_rows:
        ppl = (
            f"{r['perplexity']:.1f} ({r['ppl_change']:+.0%})"
            if r["perplexity"] and r["ppl_change"] is not None
            else fmt(r["perplexity"], ".1f")
        )
        lines.append(
            f"| {r['seed']} | {r['arm']} | {r['sleep']} | {fmt(r['recall'])} | {fmt(r['of_upper'], '.0%')} "
            f"| {fmt(r['earlier'])} | {fmt(r['general_qa'], '.0%')} | {ppl} | {fmt(r['wall'], '.0f')} "
            f"| {fmt(r['s_per_step'], '.1f')} | {fmt(r['rss'], '.0f')} | {fmt(r['leaks'], 'd')} |"
        )
    return "\n".join(lines)


COLORS = {
    "base": "#999999",
    "sft": "#d62728",
    "sdft": "#ff7f0e",
    "reverie": "#2ca02c",
    "sleep": "#17becf",
    "incontext": "#1f77b4",
}


def plot(all_rows: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ("base", "sft", "sdft", "reverie", "sleep", "incontext") if any(r["arm"] == a for r in all_rows)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(
        axes,
        ("recall", "general_qa", "perplexity"),
        ("held-out recall (this sleep)", "general QA kept", "perplexity"),
        strict=True,
    ):
        vals = []
        for a in arms:
            xs = [r[key] for r in all_rows if r["arm"] == a and r[key] is not None]
            vals.append(sum(xs) / len(xs) if xs else 0.0)
        ax.bar(arms, vals, color=[COLORS[a] for a in arms])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("SmolLM2-135M-Instruct, fictional people, questions never seen in training")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--png", type=Path)
    a = p.parse_args()
    all_rows = [r for f in a.results for r in rows(json.loads(f.read_text()))]
    print(table(all_rows))
    if a.png:
        plot(all_rows, a.png)


if __name__ == "__main__":
    main()
