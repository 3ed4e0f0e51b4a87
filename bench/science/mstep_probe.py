"""Dreaming's M-step, variant by variant, on one sleep's saved dreams (no new E-step).

    .venv/bin/python bench/science/mstep_probe.py --sleep /work/sci-full/seed-0/sleep/sleep-0 \
        --seed 0 --variants none,own,dreams,root,root-kl,root-kl+noreverse --out bench/science/mstep-probe.json

A full sleep with dreaming on 20 people a sleep reaches 81 % of the in-context
bound after one sleep, but perplexity +77 % and general QA 65 %
(``results-full.json``).  The E-step (quiz, dream, probe) is the slow part
(≈ 14 min); the M-step (≈ 45 SFT steps of the dreaming slot) is where the
damage could come from.  This probe loads the sleep's consolidated model, adds
a fresh dreaming slot exactly as the phase does, and runs one M-step per
variant on the dreams that sleep rewarded (``dreaming/dreams.jsonl``), then
scores the result the way ``run.py`` does (held-out recall of the sleep's
people, general QA, perplexity on held-out general text).  Variants:

* ``none`` — no dreaming slot (the consolidated model);
* ``own`` — today's M-step: rewarded dreams + writer pairs + the candidate's own
  answers to 6 general prompts at share ρ;
* ``dreams`` — rewarded dreams only;
* ``root`` — dreams + 20 general prompts answered by the root at share ρ (SFT);
* ``root-kl`` — dreams (SFT) + the same general rows as a full-vocabulary forward
  KL to the root's distribution on the root's answer;
* ``+e1`` — the same with one epoch instead of ``m_step_epochs``; ``+noreverse`` (any
  ``+no<kind>``) — without the dreams of that kind; ``+facts`` — the root's answers to
  ``FACT_QUESTIONS`` (short real-world questions, none in the evaluation's general-QA
  set) join the general rows: the misses under dreaming are short factual questions
  answered with invented or rambling text, which instruction-like prompts may not hold.

It also prints the guard change the phase could check after the M-step (mean
log-likelihood of the root's general answers), to see whether it predicts the
perplexity.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/science/run.py: the same scoring)

FACT_QUESTIONS = (
    "Who painted the Mona Lisa?",
    "Who was the first person to walk on the Moon?",
    "Who discovered penicillin?",
    "Who invented the telephone?",
    "Who wrote Pride and Prejudice?",
    "Who developed the theory of relativity?",
    "Who was the first President of the United States?",
    "What is the tallest mountain in the world?",
    "What is the longest river in Africa?",
    "How many hours are in a day?",
    "How many minutes are in an hour?",
    "What is the smallest prime number?",
    "Which animal is the largest mammal?",
    "What do caterpillars turn into?",
    "Which planet is closest to the Sun?",
    "What is the hardest natural substance?",
    "How many sides does a triangle have?",
    "What is the currency of Japan?",
    "Which ocean lies between Europe and North America?",
    "What organ pumps blood through the body?",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sleep", type=Path, required=True, help="a full-sleep arm's sleep-N folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--people", type=int, default=20)
    p.add_argument("--variants", default="none,own,dreams,root,root-kl")
    p.add_argument("--general", type=int, default=20, help="general prompts the root answers (of the pool of 60)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    base = bench.cpu_setup(a.threads)

    from reverie.api.steps import ConsolidationSpec, DreamingSpec
    from reverie.workloads.data.eval_sets import general_qa
    from reverie.workloads.ml.ask import greedy_answers
    from reverie.workloads.ml.expansion import add_slot
    from reverie.workloads.ml.lm import target_logprobs
    from reverie.workloads.ml.sampling import HFBackend
    from reverie.workloads.steps.dreamer import GUARD_GENERAL, chat_pair, m_step
    from reverie.workloads.steps.selfstudy import GENERAL_REPLAY_PROMPTS
    from reverie.workloads.store.modelio import activate_slots, load_generation

    c = int(a.sleep.name.split("-")[-1])
    sleeps = bench.sleep_memories(a.seed, c + 1, a.people)
    root = load_generation(base)
    scorer = bench.Scorer(root.model, root.tokenizer, sleeps)
    del root
    gen = load_generation(a.sleep / "consolidation" / "model")
    model, tok, slots = gen.model, gen.tokenizer, list(gen.slots)
    spec, rho = DreamingSpec(enabled=True, seed=a.seed), ConsolidationSpec().replay_ratio
    dreams = [json.loads(x) for x in (a.sleep / "dreaming" / "dreams.jsonl").read_text().splitlines()]
    good = [d for d in dreams if d["reward"]]
    dream_rows = [chat_pair(tok, d["prompt"], d["text"]) for d in good]
    backend = HFBackend(model, tok)
    own_q = list(GENERAL_REPLAY_PROMPTS[:GUARD_GENERAL])
    own = greedy_answers(backend, tok, own_q, adapters=slots, max_new_tokens=64)
    root_q = list(GENERAL_REPLAY_PROMPTS[: a.general])
    with model.disable_adapter():
        root_a = greedy_answers(backend, tok, root_q, max_new_tokens=64)
    root_rows = [chat_pair(tok, q, x) for q, x in zip(root_q, root_a, strict=True) if x]
    evaluated = {g.question for g in general_qa()}
    assert not evaluated & set(FACT_QUESTIONS), "a fact question is an evaluation question"
    fact_rows: list[tuple[str, str]] = []
    if "+facts" in a.variants:  # the root answers them only when a variant holds them
        with model.disable_adapter():
            fact_a = greedy_answers(backend, tok, list(FACT_QUESTIONS), max_new_tokens=64)
        fact_rows = [chat_pair(tok, q, x) for q, x in zip(FACT_QUESTIONS, fact_a, strict=True) if x]
    results = []
    for name in a.variants.split(","):
        started = time.time()
        kind, *opts = name.split("+")
        epochs = next((int(o[1:]) for o in opts if o.startswith("e")), spec.m_step_epochs)
        skip = {o[2:] for o in opts if o.startswith("no")}  # dream kinds left out, e.g. +noreverse
        taught = [r for r, d in zip(dream_rows, good, strict=True) if d["kind"] not in skip]
        n_g = math.ceil(len(taught) * rho / (1 - rho))
        rec: dict[str, Any] = {"variant": name, "dreams": len(taught)}
        if kind != "none":
            torch.manual_seed(spec.seed)
            model, slot = add_slot(
                model, rank=spec.slot_rank, target_modules=ConsolidationSpec().target_modules, keep_active=slots
            )
            if kind == "own":
                general = [chat_pair(tok, *g) for g in zip(own_q, own, strict=True) if g[1]]
                general = [general[i % len(general)] for i in range(n_g)]
            elif kind == "dreams":
                general = []
            else:
                pool = root_rows + (fact_rows if "facts" in opts else [])
                general = [pool[i % len(pool)] for i in range(n_g)]
            before = sum(target_logprobs(model, tok, root_rows)) / len(root_rows)
            rec["loss"] = m_step(
                model,
                tok,
                slot,
                examples=taught if kind == "root-kl" else taught + general,
                anchors=general if kind == "root-kl" else (),
                root=model.disable_adapter,
                spec=spec.model_copy(update={"m_step_epochs": epochs}),
                seed=spec.seed,
            )
            rec["guard_change"] = sum(target_logprobs(model, tok, root_rows)) / len(root_rows) - before
        rec["m_step_seconds"] = time.time() - started
        rec.update(scorer.score(model, tok, upto=c))
        print(json.dumps(rec), flush=True)
        results.append(rec)
        if kind != "none":
            model.delete_adapter(slot)
            activate_slots(model, slots)
    if a.out:
        a.out.write_text(
            json.dumps(
                {"sleep": str(a.sleep), "seed": a.seed, "rho": rho, "general": a.general, "results": results}, indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
