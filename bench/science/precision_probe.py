"""fp32 against CPU bf16 autocast (as ``precision: bf16`` runs it): a LoRA train step and greedy generation.

SmolLM2-135M from the package, a rank-32 LoRA on all 7 projections, batch 8 of
192 random tokens; 8 prompts x 64 greedy tokens. Medians of 4 steps, best of 2
generations, fp32 and bf16 alternating, after a warm-up of each:

    PYTHONPATH=operator HF_HUB_OFFLINE=1 .venv/bin/python bench/science/precision_probe.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import cpu_setup

from reverie.workloads.ml.precision import compute_scope

CPU = torch.device("cpu")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("precision-probe.json"))
    a = p.parse_args()
    folder = cpu_setup(a.threads)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
        LoraConfig(r=32, lora_alpha=32, target_modules=PROJECTIONS),
    )
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    ids = torch.randint(100, 40000, (8, 192), generator=torch.Generator().manual_seed(0))
    enc = tok(["Tell me about the history of the violin and who plays it."] * 8, return_tensors="pt", padding=True)

    def step(precision: Any) -> None:
        model.train()
        with compute_scope(precision, CPU):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    def generate(precision: Any) -> None:
        model.eval()
        with torch.no_grad(), compute_scope(precision, CPU):
            model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.eos_token_id)

    def timed(fn: Any, precision: str, n: int) -> list[float]:
        fn(precision)  # warm-up
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(precision)
            out.append(time.perf_counter() - t0)
        return out

    train: dict[str, list[float]] = {"fp32": [], "bf16": []}
    gen: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(2):
        for precision in ("fp32", "bf16"):
            train[precision] += timed(step, precision, 2)
            gen[precision] += timed(generate, precision, 1)
    res: dict[str, Any] = {
        "command": " ".join(["bench/science/precision_probe.py", *sys.argv[1:]]),
        "threads": a.threads,
        "train_step_s": {k: sorted(v)[len(v) // 2] for k, v in train.items()},
        "generate_s": {k: min(v) for k, v in gen.items()},
    }
    res["train_ratio_bf16_over_fp32"] = res["train_step_s"]["bf16"] / res["train_step_s"]["fp32"]
    res["generate_ratio_bf16_over_fp32"] = res["generate_s"]["bf16"] / res["generate_s"]["fp32"]
    a.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
