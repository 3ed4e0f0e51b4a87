"""Gather everything the report shows from what a run left on disk.

Inputs, all written by the run itself: the local state file (cycle status with
its phase records and gate decision, the lineage with its generations), each
phase process's log (JSON-lines progress: the loss curves), and the evaluation
phase's ``eval.json`` (:class:`~reverie.workloads.steps.eval_schema.EvalReport`: the
per-question outcomes for the champion, i.e. *before*, and the candidate,
i.e. *after*).  Missing pieces (a run that stopped early) leave gaps, never errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import SleepCycle, Step
from reverie.local import progress
from reverie.local.state import LocalJob, LocalState
from reverie.workloads.steps.eval_schema import EvalReport, ItemOutcome


@dataclass
class RecallItem:
    """One closed-book question on a new memory, before and after the sleep."""

    id: str
    memory: str
    question: str
    expected: str
    before: bool | None
    after: bool | None
    before_output: str = ""
    after_output: str = ""


@dataclass
class ReportData:
    """Everything the page shows, as plain data."""

    cycle: SleepCycle
    lineage: ModelLineage
    jobs: list[LocalJob]
    losses: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)  # job -> series
    evaluation: EvalReport | None = None
    recall: list[RecallItem] = field(default_factory=list)
    suites: list[tuple[str, float | None, float | None]] = field(default_factory=list)  # (metric, before, after)


def memory_of(item_id: str) -> str:
    """The memory document a question belongs to (ids are ``<memory>-q<i>`` or ``<memory>:<i>``)."""
    for sep in (":", "#", "/"):
        if sep in item_id:
            return item_id.rsplit(sep, 1)[0]
    head, _, tail = item_id.rpartition("-")
    return head if head and (tail.isdigit() or tail.lstrip("q").isdigit()) else item_id


def _items(report: EvalReport, role: str, suite: str) -> dict[str, ItemOutcome]:
    side = report.candidate if role == "candidate" else report.champion
    if side is None or suite not in side.scores:
        return {}
    return {item.id: item for item in side.scores[suite].items}


def recall_items(report: EvalReport) -> list[RecallItem]:
    after = _items(report, "candidate", "knowledge_incorporation")
    before = _items(report, "champion", "knowledge_incorporation")
    out = []
    for item_id in list(after) + [i for i in before if i not in after]:
        a, b = after.get(item_id), before.get(item_id)
        ref = a or b
        assert ref is not None
        out.append(
            RecallItem(
                id=item_id,
                memory=memory_of(item_id),
                question=ref.prompt,
                expected=ref.expected,
                before=b.correct if b else None,
                after=a.correct if a else None,
                before_output=b.output if b else "",
                after_output=a.output if a else "",
            )
        )
    return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def suite_table(report: EvalReport) -> list[tuple[str, float | None, float | None]]:
    before = report.baseline()
    after = report.metrics()
    names = [n for n in after if not n.endswith(("_ci_low", "_ci_high", "_n"))]
    return [(n, _finite(before.get(n)), _finite(after.get(n))) for n in names]


def load_eval(path: Path | str) -> EvalReport | None:
    """The evaluation report at ``path`` (local or in an object store), or None."""
    from reverie.workloads.store import store

    try:
        text = store.read_text(str(path))
        return EvalReport.model_validate(json.loads(text)) if text is not None else None
    except (OSError, ValueError):
        return None


def collect(state: LocalState, *, cycle: str | None = None) -> ReportData:
    """The report's data for ``cycle`` (default: the latest) of a local state."""
    chosen = state.cycle(cycle) if cycle else state.current
    if chosen is None:
        raise ValueError("the run has no cycle yet")
    name = chosen.metadata.name
    jobs = sorted(
        (j for j in state.jobs.values() if j.cycle == name), key=lambda j: (j.started_at is None, j.started_at)
    )
    data = ReportData(cycle=chosen, lineage=state.lineage, jobs=jobs)
    for job in jobs:
        series = progress.loss_series(Path(job.log_path))
        if series:
            data.losses[job.name] = series
    evaluation_jobs = [j for j in jobs if j.step == Step.EVALUATION and j.state == "Succeeded"]
    if evaluation_jobs:
        data.evaluation = load_eval(f"{evaluation_jobs[-1].output_uri.rstrip('/')}/eval.json")
    if data.evaluation is not None:
        data.recall = recall_items(data.evaluation)
        data.suites = suite_table(data.evaluation)
    elif chosen.status.evaluation:
        data.suites = [
            (n, _finite(chosen.status.champion_evaluation.get(n)), _finite(v))
            for n, v in chosen.status.evaluation.items()
            if not n.endswith(("_ci_low", "_ci_high", "_n"))
        ]
    return data
