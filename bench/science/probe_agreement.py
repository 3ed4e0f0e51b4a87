"""Does ``probe: gradient`` reward the dreams ``probe: update`` rewarded?  On one saved sleep's kept dreams.

    .venv/bin/python bench/science/probe_agreement.py --sleep /work/sci-mstep/seed-0/sleep/sleep-0 \
        --out bench/science/probe-agreement-seed0.json

A full-sleep arm that ran with ``probe: update`` saved every kept dream with
the τ gain and guard change its isolated update measured
(``dreaming/dreams.jsonl``) and the quiz and guard it used (the dreaming
checkpoint's state).  This loads the sleep's consolidated model, adds the
dreaming slot exactly as the phase does (B = 0, as in round 0's E-step), and
takes the product's first-order estimate (:class:`FirstOrderProbe` on each
dream's gradient) of the same quantities; it reports their correlation, how
many rewards agree, and the seconds the estimates took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/science/run.py: the same machine setup)


def correlation(a: list[float], b: list[float]) -> float:
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return float(num / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sleep", type=Path, required=True, help="a full-sleep arm's sleep-N folder (probe: update)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    bench.cpu_setup(a.threads)

    from reverie.api.steps import ConsolidationSpec, DreamingSpec
    from reverie.workloads.data.memory import load_memory_uris
    from reverie.workloads.steps.dream import open_dreamer
    from reverie.workloads.steps.dreamer import (
        DREAMING_STATE,
        Dream,
        DreamState,
        FirstOrderProbe,
        dream_gradient,
        quiz_contexts,
        rehearsed,
    )
    from reverie.workloads.store.checkpoint import load_checkpoint

    config = json.loads((a.sleep / "dreaming.json").read_text())
    spec = DreamingSpec.model_validate(config["dreaming"])
    dreamer, _ = open_dreamer(
        config["inputs"]["consolidation"], spec=spec, target_modules=ConsolidationSpec().target_modules
    )
    state = DreamState.from_json(load_checkpoint(str(a.sleep / "dreaming" / "checkpoints")).meta[DREAMING_STATE])
    now = load_memory_uris([s["uri"] for s in config["memory"]["sources"]])
    prior = load_memory_uris(config.get("priorMemoryUris", []))
    rho = ConsolidationSpec.model_validate(config["consolidation"]).replay_ratio
    dreamer.memories = [*now, *rehearsed(now, prior, replay_ratio=rho, seed=spec.seed)]  # as the phase quizzes
    contexts = quiz_contexts(dreamer.memories, state.quiz)
    saved = [json.loads(x) for x in (a.sleep / "dreaming" / "dreams.jsonl").read_text().splitlines()]
    fields = set(Dream.__dataclass_fields__)
    params = dreamer.slot_params()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for ctx in contexts:
        kept = [d for d in saved if d["context_id"] == ctx.id and d["kept"] and d["round"] == 0]
        if not kept:
            continue
        guard = dreamer.guard_for(ctx, contexts, state.guard)
        probe = FirstOrderProbe(dreamer.model, dreamer.tokenizer, ctx, guard=guard, spec=spec, params=params)
        for d in kept:
            dream = Dream(**{k: v for k, v in d.items() if k in fields})
            tau, change = probe.gain(dream_gradient(dreamer.model, dreamer.tokenizer, dream, params))
            estimated = int(tau > 0 and change >= -spec.replay_tolerance)
            rows.append(
                {
                    "kind": d["kind"],
                    "tau_gain": d["tau_gain"],
                    "guard_change": d["guard_change"],
                    "reward": d["reward"],
                    "estimated_tau_gain": tau,
                    "estimated_guard_change": change,
                    "estimated_reward": estimated,
                }
            )
    seconds = time.perf_counter() - t0
    summary = {
        "dreams": len(rows),
        "seconds": seconds,
        "tau_correlation": correlation([r["tau_gain"] for r in rows], [r["estimated_tau_gain"] for r in rows]),
        "guard_correlation": correlation(
            [r["guard_change"] for r in rows], [r["estimated_guard_change"] for r in rows]
        ),
        "same_reward": sum(r["reward"] == r["estimated_reward"] for r in rows),
        "rewarded_by_update": sum(r["reward"] for r in rows),
        "rewarded_by_gradient": sum(r["estimated_reward"] for r in rows),
    }
    print(json.dumps(summary))
    if a.out:
        a.out.write_text(
            json.dumps(
                {"command": " ".join(sys.argv), "sleep": str(a.sleep), "summary": summary, "rows": rows}, indent=1
            )
        )


if __name__ == "__main__":
    main()
