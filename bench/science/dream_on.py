"""Does dreaming add recall on top of a consolidation?  Runs the real dreaming phase on a bench
consolidation output and scores both models with the bench's scorer:

    .venv/bin/python bench/science/dream_on.py /tmp/sci-exp1 --people 6 --out /tmp/sci-dream
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bench_out", type=Path, help="--out of a run.py run with the reverie arm")
    p.add_argument("--people", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dreaming", type=json.loads, default={}, help="DreamingSpec overrides (JSON, camelCase)")
    a = p.parse_args()
    from reverie.workloads.store.modelio import load_generation
    from reverie.workloads.store.pretrained import smollm2_folder

    sleep = a.bench_out / f"seed-{a.seed}" / "reverie" / "sleep-0"
    cfg = json.loads((sleep / "consolidation.json").read_text())
    a.out.mkdir(parents=True, exist_ok=True)
    dcfg = {
        **cfg,
        "step": "dreaming",
        "outputUri": str(a.out / "dreaming"),
        "inputs": {"consolidation": str(sleep / "consolidation" / "model")},
        "dreaming": {"enabled": True, "seed": a.seed, **a.dreaming},
    }
    result, wall, rss = bench.run_phase("dreaming", dcfg, a.out)
    sleeps = bench.sleep_memories(a.seed, 1, a.people)
    base = load_generation(smollm2_folder())
    scorer = bench.Scorer(base.model, base.tokenizer, sleeps)
    out = {
        "command": " ".join(["bench/science/dream_on.py", *sys.argv[1:]]),
        "dream_wall_seconds": wall,
        "dream_peak_rss_mb": rss,
        "dream_metrics": result["metrics"],
    }
    for name, folder in (("consolidated", sleep / "consolidation" / "model"), ("dreamed", Path(result["outputUri"]))):
        g = load_generation(folder)
        out[name] = scorer.score(g.model, g.tokenizer, upto=0)
        print(json.dumps({name: out[name]}), flush=True)
    (a.out / "results.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
