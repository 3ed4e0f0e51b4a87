"""A long lineage: N sequential sleeps of new people each, through the real consolidation phase.  CPU.

    .venv/bin/python bench/science/lineage.py --sleeps 10 --people 6 --steps 40 --out /tmp/lineage
    .venv/bin/python bench/science/lineage.py ... --replay '{"choose": "all"}' --out /tmp/lineage-all
    .venv/bin/python bench/science/report.py --lineage /tmp/lineage/results.json --png bench/science/lineage.png

Each sleep is ``reverie run-step consolidation`` on top of the previous sleep's
model, with every earlier sleep's memories as its prior (what the operator
hands a lineage's cycle).  After each sleep the bench scores, on questions no
training input contains (``leaks`` counts any that did):

* the new people's closed-book recall, and the in-context bound of *this
  sleep's teacher* (the model before the sleep, memory in the prompt; the base
  with ``--consolidation '{"teacher": "base"}'``);
* every earlier sleep's people (the triangle: is what a sleep learned kept?);
* general QA (the questions the base answers correctly) and perplexity on
  held-out general text;
* the phase's wall time by stage (self-study, replay probe, training), how many
  earlier items it replayed and their bytes, and how many items the teacher ran on.

Resumable: each sleep's record is written as it finishes (``sleep-N/record.json``)
and a finished phase is not run again, so a rerun continues from the saved
generation.  Timings only count when the run had the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    Scorer,
    cpu_setup,
    recall,
    run_attempt,
    sleep_memories,
    write_jsonl,
    write_whole,
)


def phase_result(work: Path, step: str = "consolidation") -> dict[str, Any] | None:
    path = work / step / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("status") == "Succeeded" else None


def run_step(
    a: argparse.Namespace, *, step: str, c: int, parent: str, mem: Path, prior: list[str], **extra: Any
) -> tuple[dict[str, Any], float, float]:
    """``reverie run-step <step>`` for sleep ``c`` on ``parent`` (skipped when it already succeeded)."""
    work = a.out / f"sleep-{c}"
    work.mkdir(parents=True, exist_ok=True)
    done = phase_result(work, step)
    if done is not None:
        return done, float("nan"), float("nan")
    cfg = {
        "step": step,
        "cycle": f"c{c}",
        "lineage": "bench",
        "storeUri": str(a.out),
        "outputUri": str(work / step),
        "baseGeneration": f"g{c}",
        "baseUri": parent,
        "memory": {"sources": [{"uri": str(mem)}]},
        "priorMemoryUris": prior,
        "evaluation": {"questionsPerMemory": 12},
        **extra,
    }
    return run_attempt(step, cfg, work)


def one_sleep(
    a: argparse.Namespace, *, c: int, parent: Path, mem: Path, prior: list[str]
) -> tuple[dict[str, Any], float, float]:
    consolidation = {"steps": a.steps, "seed": a.seed, "checkpointEvery": 100_000, "replay": a.replay}
    return run_step(
        a,
        step="consolidation",
        c=c,
        parent=str(parent),
        mem=mem,
        prior=prior,
        consolidation={**consolidation, **a.consolidation},
    )


def one_dream(
    a: argparse.Namespace, *, c: int, consolidated: str, mem: Path, prior: list[str]
) -> tuple[dict[str, Any], float, float]:
    """The dreaming phase on this sleep's consolidated model (``--dreaming``), as the operator runs it next."""
    return run_step(
        a,
        step="dreaming",
        c=c,
        parent=consolidated,
        mem=mem,
        prior=prior,
        inputs={"consolidation": consolidated},
        consolidation={"seed": a.seed, **a.consolidation},
        dreaming={"seed": a.seed, **a.dreaming, "enabled": True},
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sleeps", type=int, default=10)
    p.add_argument("--people", type=int, default=20)
    p.add_argument("--steps", type=int, default=None, help="training steps per sleep (default: ConsolidationSpec's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replay", type=json.loads, default={}, help="ConsolidationSpec.replay (JSON, camelCase)")
    p.add_argument("--consolidation", type=json.loads, default={}, help="other ConsolidationSpec overrides (JSON)")
    p.add_argument(
        "--dreaming", type=json.loads, default=None, help="run dreaming after each consolidation: DreamingSpec (JSON)"
    )
    p.add_argument("--out", type=Path, default=Path("/tmp/reverie-lineage"))
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = p.parse_args()
    from reverie.api.steps import ConsolidationSpec, TeacherChoice

    spec = ConsolidationSpec.model_validate({**a.consolidation, "replay": a.replay})
    if a.steps is None:
        a.steps = spec.steps
    base = cpu_setup(a.threads)
    from reverie.workloads.data.heldout import HeldOut
    from reverie.workloads.data.memory import parse_memory
    from reverie.workloads.steps.selfstudy import read_items
    from reverie.workloads.store.modelio import load_generation

    a.out.mkdir(parents=True, exist_ok=True)
    sleeps = sleep_memories(a.seed, a.sleeps, a.people)
    mem_files = [write_jsonl(a.out / "memories" / f"sleep-{c}.jsonl", s) for c, s in enumerate(sleeps)]
    held = HeldOut.of([parse_memory(r, where="bench") for s in sleeps for r in s], questions_per_memory=12)
    t0 = time.perf_counter()
    gen = load_generation(base)
    scorer = Scorer(gen.model, gen.tokenizer, sleeps)
    base_path = a.out / "base.json"
    if base_path.exists():
        base_score = json.loads(base_path.read_text())
    else:
        base_score = {"general_qa_items": len(scorer.general), **scorer.score(gen.model, gen.tokenizer, upto=0)}
        base_path.write_text(json.dumps(base_score))
    del gen
    records: list[dict[str, Any]] = []
    parent, prior = base, []
    for c, mem in enumerate(mem_files):
        rec_path = a.out / f"sleep-{c}" / "record.json"
        if rec_path.exists():
            rec = json.loads(rec_path.read_text())
        else:
            # The bound of the model that reads the memory as this sleep's teacher.
            teacher = load_generation(base if spec.teacher == TeacherChoice.BASE else parent)
            upper = recall(teacher.model, teacher.tokenizer, sleeps[c], in_context=True)
            del teacher
            result, wall, rss = one_sleep(a, c=c, parent=parent, mem=mem, prior=prior)
            m = result["metrics"]
            model_uri, dreamt, texts = result["outputUri"], None, []
            if a.dreaming is not None:
                dreamt, dwall, drss = one_dream(a, c=c, consolidated=model_uri, mem=mem, prior=prior)
                model_uri, wall, rss = dreamt["outputUri"], wall + dwall, max(rss, drss)
                rows = (a.out / f"sleep-{c}" / "dreaming" / "dreams.jsonl").read_text().splitlines()
                texts = [t for line in rows for d in [json.loads(line)] for t in (d["prompt"], d["text"])]
            g = load_generation(model_uri)
            own = read_items(a.out / f"sleep-{c}" / "consolidation" / "selfstudy")
            rec = {
                "sleep": c,
                "wall_seconds": wall,
                "peak_rss_mb": rss,
                "stage_seconds": {
                    "selfstudy": m.get("selfstudy_seconds"),
                    "replay_probe": m.get("replay_probe_seconds", 0.0),
                    "training": m.get("seconds"),
                    "dreaming": dreamt["metrics"].get("wall_seconds") if dreamt else None,
                },
                "dreaming": dreamt["metrics"] if dreamt else None,
                "replay_earlier_items": m.get("replay_earlier_items", m.get("replay_items")),
                "replay_bytes": m.get("replay_bytes"),
                "teacher_items": m.get("teacher_items"),
                "selfstudy_items": m.get("selfstudy_items"),
                "s_per_step": m["seconds"] / max(1.0, m["steps_this_attempt"]),
                "incontext_bound": upper,
                "leaks": len(held.leaks([t for i in own for t in (i.prompt, i.answer)] + texts)),
                "model": model_uri,
                **scorer.score(g.model, g.tokenizer, upto=c),
            }
            del g
            write_whole(rec_path, rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "model"}), flush=True)
        records.append(rec)
        parent = Path(rec["model"])
        prior = [*prior, str(a.out / f"sleep-{c}" / "consolidation" / "memories.jsonl")]
    res = {
        "command": " ".join(["bench/science/lineage.py", *sys.argv[1:]]),
        "people": a.people,
        "steps": a.steps,
        "replay": spec.replay.model_dump(mode="json", by_alias=True),
        "consolidation": a.consolidation,
        "dreaming": a.dreaming,
        "threads": a.threads,
        "wall_seconds_this_run": time.perf_counter() - t0,
        "base": base_score,
        "sleeps": records,
    }
    (a.out / "results.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({"event": "done", "out": str(a.out / "results.json")}), flush=True)


if __name__ == "__main__":
    main()
