"""What a generation's earlier slots cost a sleep: a training step and a teacher pass, slots folded vs kept apart.

    .venv/bin/python bench/science/slot_cost.py /tmp/lin10/sleep-9/consolidation/model --steps 6 --threads 2

A sleep adds one slot on top of every earlier one.  Kept apart, each earlier slot
adds its low-rank matmuls (and PEFT's per-adapter Python) to every forward, so
sleep n pays for n slots.  ``FoldedSlots`` adds the frozen earlier slots into the
base weights for the sleep.  This measures both ways on the same generation, the
same batch and the same new slot, alternating step by step in one process (so a
load change hits both alike): the median seconds of a consolidation training
step (batch 8) and of a greedy teacher generation (8 prompts, 32 new tokens),
plus the largest logit difference between the two ways.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generation", type=Path)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    from reverie.api.steps import ConsolidationSpec
    from reverie.workloads.data.memory import question_prompt
    from reverie.workloads.ml.expansion import FoldedSlots, add_slot, slot_parameters
    from reverie.workloads.ml.sampling import HFBackend, active_adapters
    from reverie.workloads.ml.trainer import TorchTrainer
    from reverie.workloads.steps.knowledge_seeding import SelfStudyDistillation
    from reverie.workloads.steps.selfstudy import load_study
    from reverie.workloads.store.modelio import activate_slots, load_generation

    hf_logging.set_verbosity_error()
    gen = load_generation(a.generation)
    earlier = list(gen.slots)
    model, slot = add_slot(
        gen.model,
        rank=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        keep_active=earlier,
    )
    tok = gen.tokenizer
    study = load_study(a.generation.parent / "selfstudy")
    assert study is not None, f"no self-study set beside {a.generation}"
    items, targets = study
    params = list(slot_parameters(model, slot).values())
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking new slot, so both ways compute something
        for q in params:
            q.add_(0.01 * torch.randn_like(q))

    def stage(student: list[str]) -> SelfStudyDistillation:
        return SelfStudyDistillation(
            model,
            tok,
            items=items,
            targets=targets,
            student=student,
            spec=ConsolidationSpec(batch_size=8, replay_ratio=0.25),
            trainer=TorchTrainer(params, lr=0.0, max_grad_norm=1.0),  # lr 0: both ways see the same slot
        )

    prompts = [question_prompt(tok, i.prompt) for i in items[:8]]
    backend = HFBackend(model, tok, batch_size=8)
    probe = tok(prompts[:4], return_tensors="pt", padding=True)

    def logits(adapters: list[str]) -> torch.Tensor:
        with torch.no_grad(), active_adapters(model, adapters):
            return model(**probe).logits

    apart = logits([*earlier, slot])
    folded = FoldedSlots(model, earlier)
    diff = float((logits([slot]) - apart).abs().max())
    folded.restore()
    activate_slots(model, [*earlier, slot])

    times: dict[str, dict[str, list[float]]] = {
        "apart": {"step": [], "teacher": []},
        "folded": {"step": [], "teacher": []},
    }
    for n in range(2 * a.steps + 2):
        way = "folded" if n % 2 else "apart"
        fold = FoldedSlots(model, earlier) if way == "folded" else None
        before = [] if fold else earlier
        ks = stage([*before, slot])
        t0 = time.perf_counter()
        ks.step(n // 2)
        t1 = time.perf_counter()
        backend.generate(prompts, max_new_tokens=32, temperature=0.0, adapters=before)
        t2 = time.perf_counter()
        if fold is not None:
            fold.restore()
            activate_slots(model, [*earlier, slot])
        if n >= 2:  # the first pair warms up
            times[way]["step"].append(t1 - t0)
            times[way]["teacher"].append(t2 - t1)

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    res: dict[str, Any] = {
        "command": " ".join(["bench/science/slot_cost.py", *sys.argv[1:]]),
        "earlier_slots": len(earlier),
        "threads": a.threads,
        "median_s": {w: {k: med(v) for k, v in t.items()} for w, t in times.items()},
        "max_logit_diff": diff,
    }
    res["speedup"] = {k: res["median_s"]["apart"][k] / res["median_s"]["folded"][k] for k in ("step", "teacher")}
    print(json.dumps(res), flush=True)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
