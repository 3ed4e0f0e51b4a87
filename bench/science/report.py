"""Table and plot of bench/science results: ``report.py RESULTS.json [MORE.json ...] --png OUT.png``.

With recall curves in the results (``run.py --curve-every``) it adds the time-to-quality table.

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


def time_to_quality(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's time-to-quality: seconds for an arm to reach naive SFT's best held-out recall in that sleep.

    Read from the ``curve`` each arm records (``run.py --curve-every``): SFT's best recall over its
    curve, the first time SFT reached it, the first time the other arm did (None: never).
    """
    out = []
    for run in results["runs"]:
        sft = {r["sleep"]: r for r in run["arms"].get("sft", []) if r.get("curve")}
        for arm, records in run["arms"].items():
            for r in records:
                s = sft.get(r["sleep"])
                if arm == "sft" or s is None or not r.get("curve"):
                    continue
                best = max(p["recall"] for p in s["curve"])
                t_sft = min(p["seconds"] for p in s["curve"] if p["recall"] >= best)
                reached = [p["seconds"] for p in r["curve"] if p["recall"] >= best and best > 0]
                final = r["curve"][-1]["recall"]
                sft_reached = [p["seconds"] for p in s["curve"] if p["recall"] >= final]
                out.append(
                    {
                        "seed": run["seed"],
                        "arm": arm,
                        "sleep": r["sleep"] + 1,
                        "sft_best": best,
                        "sft_seconds": t_sft,
                        "seconds": min(reached) if reached else None,
                        "speedup": t_sft / min(reached) if reached and min(reached) > 0 else None,
                        "final": final,
                        "sft_to_final": min(sft_reached) if sft_reached else None,
                        "curve": " → ".join(f"{p['recall']:.2f}@{p['seconds']:.0f}s" for p in r["curve"]),
                        "sft_curve": " → ".join(f"{p['recall']:.2f}@{p['seconds']:.0f}s" for p in s["curve"]),
                    }
                )
    return out


def ttq_table(ttq: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | arm | sleep | SFT's best recall | SFT reached it at s | arm reached it at s | SFT time / arm time "
        "| arm's final recall | SFT reached that at s | arm's curve (recall@s) | SFT's curve |",
        "|" + "---|" * 11,
    ]
    for r in ttq:
        lines.append(
            f"| {r['seed']} | {r['arm']} | {r['sleep']} | {fmt(r['sft_best'])} | {fmt(r['sft_seconds'], '.0f')} "
            f"| {fmt(r['seconds'], '.0f') if r['seconds'] is not None else 'never'} | {fmt(r['speedup'], '.2f')} "
            f"| {fmt(r['final'])} | {fmt(r['sft_to_final'], '.0f') if r['sft_to_final'] is not None else 'never'} "
            f"| {r['curve']} | {r['sft_curve']} |"
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


# ----------------------------------------------------------------------------- a long lineage (lineage.py)


def lineage_tables(res: dict[str, Any]) -> str:
    """Per sleep: cost by stage, replay, recall vs its teacher's bound; then the retention triangle."""
    base = res["base"]
    head = (
        "| sleep | wall s | self-study s | replay probe s | training s | replayed items | replay MB "
        "| teacher items | new recall | teacher in context | of bound | general QA kept | perplexity (Δ) | leaks |"
    )
    lines = [f"`{res['command']}`", "", head, "|" + "---|" * 14]
    for r in res["sleeps"]:
        st = r["stage_seconds"]
        bound = r["incontext_bound"]
        lines.append(
            f"| {r['sleep'] + 1} | {fmt(r['wall_seconds'], '.0f')} | {fmt(st['selfstudy'], '.0f')} "
            f"| {fmt(st['replay_probe'], '.1f')} | {fmt(st['training'], '.0f')} | {fmt(r['replay_earlier_items'], '.0f')} "
            f"| {fmt((r['replay_bytes'] or 0) / 1e6, '.2f')} | {fmt(r['teacher_items'], '.0f')} | {fmt(r['recall'])} "
            f"| {fmt(bound)} | {fmt(r['recall'] / bound if bound else None, '.0%')} | {fmt(r['general_qa'], '.0%')} "
            f"| {r['perplexity']:.1f} ({r['perplexity'] / base['perplexity'] - 1:+.0%}) | {r['leaks']} |"
        )
    n = len(res["sleeps"])
    post = [r["recall"] for r in res["sleeps"]]
    lines += [
        "",
        "Recall of sleep k's people (rows) after sleep n (columns), as a share of its recall right after sleep k:",
        "",
        "| people of | " + " | ".join(f"after {j + 1}" for j in range(n)) + " |",
        "|" + "---|" * (n + 1),
    ]
    for k in range(n):
        cells = []
        for j in range(n):
            if j < k:
                cells.append("")
            elif j == k:
                cells.append(f"{post[k]:.2f}")
            else:
                later = res["sleeps"][j]["earlier_recall"][k]
                cells.append(f"{later / post[k]:.0%}" if post[k] else "–")
        lines.append(f"| sleep {k + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_wall(r: dict[str, Any]) -> float:
    """A sleep's wall time; where it was not measured whole (a reused phase), the sum of its stages."""
    if r["wall_seconds"] == r["wall_seconds"]:  # not NaN
        return float(r["wall_seconds"])
    return sum(v or 0.0 for v in r["stage_seconds"].values())


def lineage_compare(arms: list[tuple[str, dict[str, Any]]], *, first: int) -> str:
    """Lineage arms that share their first sleeps, side by side from sleep ``first`` (1-based) on.

    Per arm: new recall and its teacher's bound in each of its own sleeps; at the end, each
    earlier sleep's recall as a share of its post-sleep recall (mean and weakest); general QA;
    wall time and replayed items of its own sleeps.
    """
    head = (
        "| arm | new recall (of bound), sleep by sleep | kept at the end: mean | weakest "
        "| general QA | perplexity | wall s, sleep by sleep | replayed items |"
    )
    lines = [head, "|" + "---|" * 8]
    for label, res in arms:
        recs = res["sleeps"]
        own = recs[first - 1 :]
        last = recs[-1]
        kept = [last["earlier_recall"][k] / recs[k]["recall"] for k in range(len(recs) - 1) if recs[k]["recall"]]
        new = ", ".join(
            f"{r['recall']:.2f} ({r['recall'] / r['incontext_bound']:.0%})" if r["incontext_bound"] else "–"
            for r in own
        )
        replayed = ", ".join(f"{r['replay_earlier_items']:.0f}" for r in own)
        kept_cells = f"{sum(kept) / len(kept):.0%} | {min(kept):.0%}" if kept else "– | –"
        lines.append(
            f"| {label} | {new} | {kept_cells} | {last['general_qa']:.0%} "
            f"| {last['perplexity']:.1f} | {', '.join(fmt(stage_wall(r), '.0f') for r in own)} "
            f"| {replayed} |"
        )
    return "\n".join(lines)


def lineage_plot(res: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = res["sleeps"]
    n = len(recs)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    xs = [r["sleep"] + 1 for r in recs]
    bottom = [0.0] * n
    stages = (("selfstudy", "#1f77b4"), ("replay_probe", "#ff7f0e"), ("training", "#2ca02c"), ("dreaming", "#9467bd"))
    for stage, color in stages:
        vals = [(r["stage_seconds"].get(stage) or 0.0) / 60 for r in recs]
        axes[0].bar(xs, vals, bottom=bottom, color=color, label=stage)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    axes[0].set(title="minutes per sleep, by stage", xlabel="sleep", xticks=xs)
    axes[0].legend()
    grid = [[float("nan")] * n for _ in range(n)]
    for k in range(n):
        for j in range(k, n):
            val = recs[k]["recall"] if j == k else recs[j]["earlier_recall"][k]
            grid[k][j] = val
    im = axes[1].imshow(grid, vmin=0, vmax=max(0.01, max(r["incontext_bound"] for r in recs)), cmap="viridis")
    axes[1].set(
        title="recall of sleep k's people after sleep n",
        xlabel="after sleep n",
        ylabel="people of sleep k",
        xticks=range(n),
        yticks=range(n),
        xticklabels=xs,
        yticklabels=xs,
    )
    fig.colorbar(im, ax=axes[1])
    axes[2].plot(xs, [r["recall"] for r in recs], "o-", label="new people, closed book")
    axes[2].plot(xs, [r["incontext_bound"] for r in recs], "s--", label="teacher, memory in context")
    axes[2].plot(xs, [r["general_qa"] for r in recs], "^-", label="general QA kept")
    axes[2].set(title="per sleep", xlabel="sleep", ylim=(0, 1.05), xticks=xs)
    axes[2].legend(fontsize=8)
    extra = f", {res['consolidation']}" if res.get("consolidation") else ""
    fig.suptitle(f"SmolLM2-135M, {res['people']} new people per sleep, replay {res['replay']}{extra}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--lineage", action="store_true", help="the results are lineage.py's")
    p.add_argument(
        "--compare-from",
        type=int,
        help="lineage.py arms that share their first sleeps: one row each, from this sleep (1-based) on",
    )
    p.add_argument("--upto", type=int, help="with --compare-from: each arm's first UPTO sleeps only")
    a = p.parse_args()
    if a.compare_from:
        arms = []
        for f in a.results:
            res = json.loads(f.read_text())
            res["sleeps"] = res["sleeps"][: a.upto]
            label = f"{res['steps']} steps, replay {json.dumps(res['replay'])} {json.dumps(res['consolidation'])}"
            if res.get("dreaming") is not None:
                label += f" + dreaming {json.dumps(res['dreaming'])}"
            arms.append((label, res))
        print(lineage_compare(arms, first=a.compare_from))
        return
    if a.lineage:
        for f in a.results:
            res = json.loads(f.read_text())
            print(lineage_tables(res) + "\n")
            if a.png:
                lineage_plot(res, a.png)
        return
    all_rows = [r for f in a.results for r in rows(json.loads(f.read_text()))]
    print(table(all_rows))
    ttq = [r for f in a.results for r in time_to_quality(json.loads(f.read_text()))]
    if ttq:
        print("\nTime to quality (seconds of training; measuring the curve is not counted):\n")
        print(ttq_table(ttq))
    if a.png:
        plot(all_rows, a.png)


if __name__ == "__main__":
    main()
