"""Dreaming alone, again, on a saved sleep's consolidated model: one run per variant, scored as ``run.py`` scores.

    .venv/bin/python bench/science/dream_rerun.py --sleep /work/sci-mstep/seed-0/sleep/sleep-0 --seed 0 \
        --variants 'update;gradient' --work /work/dream-rerun --out bench/science/dream-probe-seed0.json

A full-sleep arm of ``run.py`` keeps each sleep's attempt configs
(``sleep-N/dreaming.json``) and its consolidated model.  This reruns the real
dreaming step (``reverie run-step dreaming``, a child process) from that model
with the same config but for ``spec.dreaming`` overrides — a variant is
``probe=<kind>`` or a JSON object of DreamingSpec fields — one after another on
this machine, and scores each result on the sleep's people (held-out
questions), every earlier sleep's, general QA and perplexity.  Variants run in
sequence in one process, so their wall times compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/science/run.py: the same steps and scoring)


def overrides(variant: str) -> dict[str, Any]:
    """``probe=gradient`` → {"probe": "gradient"}; a JSON object as it is."""
    if variant.startswith("{"):
        return dict(json.loads(variant))
    key, _, value = variant.partition("=")
    return {key or "probe": value} if value else {"probe": variant}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sleep", type=Path, required=True, help="a full-sleep arm's sleep-N folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--people", type=int, default=20)
    p.add_argument(
        "--variants", default="update;gradient", help="';'-separated: probe kinds, key=value or JSON objects"
    )
    p.add_argument("--work", type=Path, required=True, help="where each variant's attempt writes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    base = bench.cpu_setup(a.threads)

    from reverie.workloads.store.modelio import load_generation

    c = int(a.sleep.name.split("-")[-1])
    scorer = None
    saved = json.loads((a.sleep / "dreaming.json").read_text())
    rows: list[dict[str, Any]] = []
    for variant in a.variants.split(";"):
        work = a.work / variant.replace("/", "_").replace(" ", "")[:60]
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cfg = {**saved, "outputUri": str(work / "dreaming")}
        cfg["dreaming"] = {**saved["dreaming"], **overrides(variant)}
        result, wall, rss = bench.run_attempt("dreaming", cfg, work)
        if scorer is None:  # after the first attempt: its child ran alone, not beside this process's models
            root = load_generation(base)
            scorer = bench.Scorer(root.model, root.tokenizer, bench.sleep_memories(a.seed, c + 1, a.people))
            del root
        g = load_generation(result["outputUri"])
        row = {
            "variant": variant,
            "dreaming": cfg["dreaming"],
            "wall_seconds": wall,
            "peak_rss_mb": rss,
            "phase": result["metrics"],
            **scorer.score(g.model, g.tokenizer, upto=c),
        }
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "wall_seconds", "recall", "general_qa", "perplexity")}))
        if a.out:
            a.out.write_text(json.dumps({"command": " ".join(sys.argv), "sleep": str(a.sleep), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
