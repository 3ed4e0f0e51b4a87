"""Fixtures of the local-mode tests: a hand-built finished run for report tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import SleepCycle
from reverie.local.state import LocalJob, LocalState
from reverie.workloads.steps.eval_schema import (
    EvalReport,
    EvalSettings,
    ItemOutcome,
    ModelEval,
    accuracy_score,
    perplexity_score,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _eval_report(store: Path) -> EvalReport:
    def ki(correct: list[bool]) -> object:
        return accuracy_score(
            "knowledge_incorporation",
            [
                ItemOutcome(
                    id=f"s1-{i}-q0",
                    prompt=f"Where does Person{i} live?",
                    expected=f"City{i}",
                    output=f"City{i}" if ok else "Nowhere",
                    correct=ok,
                )
                for i, ok in enumerate(correct)
            ],
        )

    def retention(n_correct: int) -> object:
        return accuracy_score(
            "retention",
            [
                ItemOutcome(id=f"old-{i}", prompt="q", expected="a", output="a", correct=i < n_correct)
                for i in range(10)
            ],
        )

    def ppl(nll: float) -> object:
        return perplexity_score([ItemOutcome(id=f"t{i}", nll=nll * 8, tokens=8) for i in range(5)])

    settings = EvalSettings(
        suites=["knowledge_incorporation", "retention", "perplexity"],
        questions_per_memory=1,
        max_new_tokens=8,
        question_set_hash="sha256:0",
    )
    return EvalReport(
        cycle="c1",
        lineage="lin",
        created_at=T0,
        settings=settings,
        candidate=ModelEval(
            role="candidate",
            uri=str(store / "cand"),
            scores={
                "knowledge_incorporation": ki([True, True, False, True]),
                "retention": retention(9),
                "perplexity": ppl(1.2),
            },
        ),
        champion=ModelEval(
            role="champion",
            generation="gen-0",
            uri=str(store / "gen-0"),
            scores={
                "knowledge_incorporation": ki([False, False, False, True]),
                "retention": retention(10),
                "perplexity": ppl(1.1),
            },
        ),
    )


@pytest.fixture
def finished_run(tmp_path: Path) -> tuple[LocalState, Path]:
    """A finished local run as the runner leaves it: state, phase logs, eval.json."""
    state_dir = tmp_path / ".reverie"
    store = state_dir / "store"
    runs = state_dir / "runs" / "c1"
    runs.mkdir(parents=True)
    report = _eval_report(store)
    lineage = ModelLineage.model_validate(
        {
            "metadata": {"name": "lin"},
            "spec": {"baseModel": {"uri": str(store / "lin/gen-0")}, "store": {"uri": str(store)}},
            "status": {
                "champion": "gen-1",
                "generations": [
                    {"name": "gen-0", "uri": str(store / "lin/gen-0"), "state": "Retired"},
                    {
                        "name": "gen-1",
                        "parent": "gen-0",
                        "cycle": "c1",
                        "uri": str(store / "lin/c1/dreaming/model"),
                        "state": "Champion",
                        "scores": report.metrics(),
                    },
                ],
            },
        }
    )
    records, jobs = [], {}
    for i, step in enumerate(["consolidation", "dreaming", "evaluation"]):
        name = f"c1-{step}-1"
        out = store / "lin" / "c1" / step
        out.mkdir(parents=True)
        log = runs / f"{name}.log"
        log.write_text(
            "".join(
                json.dumps({"event": "progress", "phase": step, "step": s, "totalSteps": 10, "loss": 3.0 / s}) + "\n"
                for s in range(1, 11)
            )
            + "plain log line\n"
        )
        start = T0 + timedelta(minutes=i)
        records.append(
            {
                "step": step,
                "attempt": 1,
                "jobName": name,
                "result": "Succeeded",
                "reason": "Succeeded",
                "startTime": start.isoformat(),
                "completionTime": (start + timedelta(seconds=40)).isoformat(),
                "outputUri": str(out),
            }
        )
        jobs[name] = LocalJob(
            name=name,
            cycle="c1",
            step=step,
            attempt=1,
            config_path=str(runs / f"{name}.json"),
            log_path=str(log),
            output_uri=str(out),
            state="Succeeded",
            started_at=start,
            launches=2 if step == "consolidation" else 1,
        )
    (store / "lin" / "c1" / "evaluation" / "eval.json").write_text(json.dumps(report.wire()))
    cycle = SleepCycle.model_validate(
        {
            "metadata": {"name": "c1"},
            "spec": {"lineageRef": "lin", "memory": {"sources": [{"uri": "builtin:tiny"}]}},
            "status": {
                "phase": "Succeeded",
                "message": "generation gen-1 is the champion of lineage lin",
                "baseGeneration": "gen-0",
                "generation": "gen-1",
                "records": records,
                "evaluation": report.metrics(),
                "championEvaluation": report.baseline(),
                "gate": {
                    "outcome": "Passed",
                    "rules": [
                        {
                            "rule": "knowledge_incorporation >= champion + 0.1",
                            "verdict": "Passed",
                            "reason": "0.75 >= 0.35",
                        },
                        {"rule": "retention >= champion - 0.1", "verdict": "Passed", "reason": "0.9 >= 0.9"},
                    ],
                },
            },
        }
    )
    return LocalState(lineage=lineage, cycles=[cycle], jobs=jobs), state_dir
