"""Score a finished quickstart's candidate with its slots merged and compare every answer with its eval.json.

    cd examples/quickstart && ../../.venv/bin/reverie sleep .     # any finished local run
    .venv/bin/python bench/eval/merged_vs_unmerged.py examples/quickstart/.reverie quickstart

Prints the seconds the merged scoring took and, per suite, both scores and how many answers differ.
(Evaluation scores merged since 2026-12-01; on an older run's eval.json this compares with unmerged.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from reverie.core.contract import AttemptConfig
from reverie.workloads.data.eval_sets import load_eval_sets
from reverie.workloads.data.memory import load_memories, load_memory_uris
from reverie.workloads.steps import evaluate as ev
from reverie.workloads.store.modelio import load_generation, stage_in


def main(state_dir: Path, cycle: str) -> None:
    torch.set_num_threads(2)
    cfg = AttemptConfig.model_validate(
        json.loads((state_dir / "runs" / cycle / f"{cycle}-evaluation-1.json").read_text())
    )
    store = cfg.store_uri
    items = ev.build_items(
        suites=cfg.evaluation.suites,
        memories=load_memories(cfg.memory, store_uri=store),
        prior=load_memory_uris(cfg.prior_memory_uris, store_uri=store),
        sets=load_eval_sets([f"{store.rstrip('/')}/{cfg.lineage}", store]),
        questions_per_memory=cfg.evaluation.questions_per_memory,
    )
    gen = load_generation(stage_in(ev.candidate_uri(cfg)))
    started = time.monotonic()
    scores = ev.score_model(
        ev.ModelScorer(gen.model.merge_and_unload(), gen.tokenizer), items, max_new_tokens=cfg.evaluation.max_new_tokens
    )
    print(f"merged: scored in {time.monotonic() - started:.1f} s")
    old = json.loads(Path(cfg.output_uri, ev.EVAL_REPORT).read_text())["candidate"]["scores"]
    for suite, score in scores.items():
        before = {i["id"]: i["output"] for i in old[suite].get("items", [])}
        differ = sum(before.get(i.id) != i.output for i in score.items)
        print(
            f"{suite}: eval.json {old[suite]['value']:.3f}, merged {score.value:.3f}; {differ} of {len(score.items)} answers differ"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
