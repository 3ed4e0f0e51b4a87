"""Sequential knowledge incorporation over several sleep cycles: four arms, one table, one plot.

Each cycle brings 8 new fictional people (2 facts each) that the model has never
seen.  Per cycle and arm we measure closed-book recall of the new facts, recall of
every earlier cycle's facts and of the base's own (OLD) facts, and perplexity on
the base's long-term text.  Arms:

* ``consolidation``          wake (facts enter fast memory) -> sleep: new slot + Knowledge Seeding;
* ``consolidation+dreaming`` the same, then the dreaming phase (``reverie.workloads.dream.run``)
  on the consolidated generation, whose output starts the next cycle;
* ``naive_sft``              a new LoRA slot per cycle, SFT on the raw memory documents;
* ``in_context``             upper bound: the teacher with this cycle's fast memory in view.

The model is the tiny Qwen2 of :mod:`reverie.workloads.tiny` (trained here in
seconds), not SmolLM2-135M: a tiny model cannot read facts from its context, so
"in context" is the fast-weight stand-in the consolidation proof uses
(:func:`reverie.workloads.tiny.wake_fast_memory`).  See RESULTS.md.

Usage::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/sleep/run.py --seeds 0 1 2 --cycles 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from reverie.api.phases import ConsolidationSpec, DreamingSpec, MemorySource, MemorySpec
from reverie.core.contract import PhaseConfig
from reverie.workloads import dream, tiny
from reverie.workloads.consolidate import (
    KnowledgeSeeding,
    KSSettings,
    KSState,
    Roles,
    TorchTrainer,
    memory_cues,
    replay_cues,
)
from reverie.workloads.evaluate import AskItem, ModelScorer
from reverie.workloads.expansion import add_slot, slot_parameters
from reverie.workloads.generation import HFBackend
from reverie.workloads.memory import Memory, parse_memory
from reverie.workloads.modelio import activate_slots, load_generation, save_generation
from reverie.workloads.questions import answer_matches

TARGETS = ["gate_proj", "up_proj", "down_proj"]
HERE = Path(__file__).resolve().parent


def memories(facts: list[tiny.Fact], prefix: str) -> list[Memory]:
    return [parse_memory(r, where=prefix) for r in tiny.memory_records(facts, prefix=prefix)]


def recall(model: Any, tok: Any, facts: list[tiny.Fact], adapters: list[str] | None = None) -> float:
    """Closed-book greedy recall of facts (answer contained in the output), with the given slots active."""
    scorer = ModelScorer(model, tok)
    if adapters is not None:
        activate_slots(model, adapters)
    items = [AskItem(id=str(i), text=f.question, answer=f.answer) for i, f in enumerate(facts)]
    out = scorer.answers(items, max_new_tokens=6)
    return sum(answer_matches(o, f.answer) for o, f in zip(out, facts, strict=True)) / len(facts)


@torch.no_grad()
def perplexity(model: Any, tok: Any, pairs: list[tuple[str, str]]) -> float:
    """exp(mean token NLL) of the base's long-term answers given their questions (chat format)."""
    model.eval()
    return math.exp(float(tiny.sft_batch_loss(model, tok, pairs)))


class Arm:
    """One chain of cycles for one method."""

    def __init__(self, name: str, base: tiny.TinyBase, work: Path, seed: int, ks_steps: int) -> None:
        self.name, self.base, self.work, self.seed, self.ks_steps = name, base, work, seed, ks_steps
        gen = load_generation(base.folder)
        self.model, self.tok = gen.model, gen.tokenizer
        self.slots: list[str] = []
        self.prior = memories(base.old, "old")
        self.rows: list[dict[str, Any]] = []

    def sleep(self, k: int, facts: list[tiny.Fact]) -> dict[str, Any]:
        """Wake + sleep for one cycle; returns extra measurements (upper bound, dreaming stats)."""
        extra: dict[str, Any] = {}
        mem = memories(facts, f"c{k}")
        if self.name == "naive_sft":
            self.model, slot = add_slot(self.model, rank=16, target_modules=TARGETS, keep_active=self.slots)
            params = list(slot_parameters(self.model, slot).values())
            opt = torch.optim.AdamW(params, lr=3e-3)
            rng = random.Random(self.seed + k)
            texts = [m.text + self.tok.eos_token for m in mem]
            self.model.train()
            for _ in range(self.ks_steps):
                batch = [("", t) for t in rng.choices(texts, k=16)]
                loss = dream.sft_loss(self.model, self.tok, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.model.eval()
            self.slots.append(slot)
            return extra
        # Wake: the session's facts enter fast memory only (the in-context stand-in).
        self.model = tiny.wake_fast_memory(self.model, self.tok, facts, steps=120, seed=self.seed + 10 * k)
        extra["in_context_new"] = recall(self.model, self.tok, facts, [*self.slots, "fast"])
        self.model, slot = add_slot(self.model, rank=16, target_modules=TARGETS, keep_active=self.slots)
        backend = HFBackend(self.model, self.tok)
        settings = KSSettings(alpha=1.0, beta=0.5, lam=0.5, replay_ratio=0.5, steps=self.ks_steps, batch_size=16,
                              learning_rate=3e-3, max_new_tokens=6, seed=self.seed + k)
        trainer = TorchTrainer(list(slot_parameters(self.model, slot).values()), lr=settings.learning_rate,
                               max_grad_norm=1.0)
        ks = KnowledgeSeeding(
            self.model, self.tok, backend, settings=settings, trainer=trainer,
            roles=Roles(student=[*self.slots, slot], teacher=list(self.slots),
                        memory_teacher=[*self.slots, "fast"]),
            memory=memory_cues(mem, self.tok, in_context=False), replay=replay_cues(self.prior, self.tok),
        )
        ks.run(KSState())
        self.model.delete_adapter("fast")
        self.slots.append(slot)
        activate_slots(self.model, self.slots)
        if self.name == "consolidation+dreaming":
            extra.update(self.dream(k, mem))
        self.prior = [*self.prior, *mem]
        return extra

    def dream(self, k: int, mem: list[Memory]) -> dict[str, Any]:
        """Run the real dreaming phase on the consolidated generation; continue from its output."""
        root = self.work / f"cycle-{k}"
        consolidated = save_generation(self.model, self.tok, root / "consolidation" / "model", slots=self.slots)
        tiny.write_memories_jsonl(root / "memory.jsonl", [m.to_json() for m in mem])
        tiny.write_memories_jsonl(root / "prior.jsonl", [m.to_json() for m in self.prior])
        config = PhaseConfig(
            step="dreaming", cycle=f"c{k}", lineage="bench", store_uri=str(self.work),
            output_uri=str(root / "dreaming"), base_generation="g0", base_uri=str(self.base.folder),
            inputs={"consolidation": str(consolidated)},
            memory=MemorySpec(sources=[MemorySource(uri=str(root / "memory.jsonl"))]),
            prior_memory_uris=[str(root / "prior.jsonl")],
            consolidation=ConsolidationSpec(replay_ratio=0.5),
            dreaming=DreamingSpec(dreams_per_context=6, top_k=2, random_extra=1, max_new_tokens=12, inner_steps=5,
                                  inner_learning_rate=3e-3, rest_em_iterations=2, temperature=1.0, top_p=1.0,
                                  noise_expert_scale=0.01, seed=self.seed + k),
        )
        saved_stdout = sys.stdout
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the phase's JSON progress lines
        try:
            result = dream.run(config)
        finally:
            sys.stdout.close()
            sys.stdout = saved_stdout
        gen = load_generation(result.output_uri or "")
        self.model, self.tok, self.slots = gen.model, gen.tokenizer, list(gen.slots)
        return {f"dream_{key}": value for key, value in result.metrics.items()}


def run_seed(seed: int, cycles: int, ks_steps: int, work: Path) -> list[dict[str, Any]]:
    t0 = time.monotonic()
    base = tiny.build_base_generation(work / "g0", seed=seed, n_old=16, n_new=(8,) * cycles,
                                      attributes=("city", "pet"), steps=400)
    tok = load_generation(base.folder).tokenizer
    texts = [tiny.qa_text(tok, f.question, f.answer) for f in base.old]
    rows: list[dict[str, Any]] = []
    for name in ("consolidation", "consolidation+dreaming", "naive_sft"):
        arm = Arm(name, base, work / name.replace("+", "_"), seed, ks_steps)
        for k in range(cycles):
            t = time.monotonic()
            extra = arm.sleep(k, base.new[k])
            row: dict[str, Any] = {
                "seed": seed, "arm": name, "cycle": k + 1, "sleep_seconds": round(time.monotonic() - t, 1),
                "new": recall(arm.model, arm.tok, base.new[k]),
                "old": recall(arm.model, arm.tok, base.old),
                "perplexity": perplexity(arm.model, arm.tok, texts),
            }
            for j in range(k):
                row[f"cycle{j + 1}_facts"] = recall(arm.model, arm.tok, base.new[j])
            row.update(extra)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if "in_context_new" in extra and name == "consolidation":
                rows.append({"seed": seed, "arm": "in_context", "cycle": k + 1, "new": extra["in_context_new"]})
    print(f"seed {seed}: {time.monotonic() - t0:.0f}s", file=sys.stderr)
    return rows


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ["in_context", "consolidation", "consolidation+dreaming", "naive_sft"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        cycles = sorted({r["cycle"] for r in mine})

        def mean(key: str, c: int, mine: list[dict[str, Any]] = mine) -> float:
            vals = [r[key] for r in mine if r["cycle"] == c and key in r]
            return sum(vals) / len(vals) if vals else math.nan

        color = f"C{arms.index(arm)}"
        axes[0].plot(cycles, [mean("new", c) for c in cycles], marker="o", label=arm, color=color)
        if arm != "in_context":
            axes[1].plot(cycles, [mean("cycle1_facts", c) if c > 1 else mean("new", c) for c in cycles],
                         marker="o", label=arm, color=color)
            axes[2].plot(cycles, [mean("perplexity", c) for c in cycles], marker="o", label=arm, color=color)
    axes[0].set(title="closed-book recall of this cycle's new facts", xlabel="cycle", ylim=(-0.02, 1.02))
    axes[1].set(title="recall of cycle-1 facts (retention)", xlabel="cycle", ylim=(-0.02, 1.02))
    axes[2].set(title="answer perplexity on the base's OLD facts (log)", xlabel="cycle", yscale="log")
    for ax in axes:
        ax.set_xticks(sorted({r["cycle"] for r in rows}))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean (min–max over seeds) per arm and cycle."""
    arms = ["in_context", "consolidation", "consolidation+dreaming", "naive_sft"]
    cycles = sorted({r["cycle"] for r in rows})
    keys = ["new", *[f"cycle{c}_facts" for c in cycles[:-1]], "old", "perplexity"]
    head = ["arm", "cycle", "new facts", *[f"cycle-{c} facts" for c in cycles[:-1]], "OLD facts", "answer ppl",
            "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        for c in cycles:
            mine = [r for r in rows if r["arm"] == arm and r["cycle"] == c]
            if not mine:
                continue
            cells = []
            for key in keys:
                vals = [r[key] for r in mine if key in r]
                if not vals:
                    cells.append("–")
                elif len(vals) == 1:
                    cells.append(f"{vals[0]:.2f}")
                else:
                    cells.append(f"{sum(vals) / len(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})")
            lines.append(f"| {arm} | {c} | " + " | ".join(cells) + f" | {len(mine)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--ks-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    args = parser.parse_args()
    if args.table:
        rows = json.loads(args.out.read_text())
        print(table(rows))
        plot(rows, args.out.with_suffix(".png"))
        return
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"reverie-bench-sleep-{seed}-") as tmp:
            rows += run_seed(seed, args.cycles, args.ks_steps, Path(tmp))
        args.out.write_text(json.dumps(rows, indent=1))
        plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
