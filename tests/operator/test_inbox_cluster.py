"""The memory inbox on the real API server and a real S3 server (MinIO), the test as Job controller.

Memories go in through `reverie remember --lineage`; the operator's schedule
starts a sleep only when something is new, each sleep takes what the
champion's ancestry has not slept on (each memory once), a rejected sleep
leaves its memories for the next, and a cycle's set never changes once taken.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pytest
from tests.operator.conftest import RunOperator, apply, cycle, lineage, wait
from tests.operator.jobsim import JobSim
from typer.testing import CliRunner

from reverie.api.lineage import ScheduleSpec
from reverie.cli import app
from reverie.controller import lineage_handlers, metrics
from reverie.core.schedule import cycle_name, next_run

pytestmark = pytest.mark.cluster

CRON = "0 3 * * *"


def inbox_lineage(store: str, **spec: Any) -> dict[str, Any]:
    return lineage(store={"uri": store}, memory={"inbox": {"maxPerSleep": 10}}, **spec)


def sleep_template() -> dict[str, Any]:
    spec = dict(cycle()["spec"])
    spec.update(memory={"sources": [{"inbox": True}]}, dreaming={"enabled": False})
    return spec


def remember(cluster: Any, namespace: str, tmp_path: Path, *batches: list[dict[str, Any]]) -> None:
    """`reverie remember --lineage lin` with one file per batch."""
    files = []
    for batch in batches:
        path = tmp_path / f"batch-{len(list(tmp_path.glob('batch-*')))}.jsonl"
        path.write_text("".join(json.dumps(m) + "\n" for m in batch))
        files.append(str(path))
    result = CliRunner().invoke(
        app, ["remember", "--lineage", "lin", "-n", namespace, "--kubeconfig", str(cluster.kubeconfig), *files]
    )
    assert result.exit_code == 0, result.output


def texts_of(uri: str) -> list[str]:
    with fsspec.open(uri, "r") as fh:
        return [json.loads(line)["text"] for line in fh.read().splitlines()]


def run_sleep(sim: JobSim, name: str, *, passes: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Play the phase Jobs of one cycle to its end; the memories its consolidation was given."""
    job = sim.wait_for_job(f"{name}-consolidation-1")
    sources = sim.config_of(job)["memory"]["sources"]
    assert [list(s) for s in sources] == [["uri"]], sources
    memories = texts_of(sources[0]["uri"])
    sim.succeed(job, sim.result_for(job))
    job = sim.wait_for_job(f"{name}-evaluation-1")
    score = 0.9 if passes else 0.2
    sim.succeed(job, sim.result_for(job, metrics={"knowledge_incorporation": score, "retention": 0.8}))
    return sim.wait_for_phase(name, "Succeeded" if passes else "Rejected"), memories


@pytest.fixture
def schedule_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[datetime], None]]:
    """Stand the lineage schedule's clock 20 s after a chosen scheduled time."""
    now = [datetime.now(UTC)]
    monkeypatch.setattr(lineage_handlers, "clock", lambda: now[0])

    def stand_at(due: datetime) -> None:
        now[0] = due + timedelta(seconds=20)

    yield stand_at


def first_run(cluster: Any, namespace: str) -> datetime:
    created = cluster.kubectl(
        "get", "modellineage", "lin", "-n", namespace, "-o", "jsonpath={.metadata.creationTimestamp}"
    ).stdout
    when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return next_run(ScheduleSpec.model_validate({"cron": CRON, "template": sleep_template()}), after=when)


def test_two_scheduled_sleeps_take_disjoint_sets_and_duplicates_once(
    cluster: Any,
    namespace: str,
    sim: JobSim,
    run_operator: RunOperator,
    s3: str,
    tmp_path: Path,
    schedule_clock: Callable[[datetime], None],
) -> None:
    apply(cluster, namespace, inbox_lineage(f"{s3}/store", schedule={"cron": CRON, "template": sleep_template()}))
    remember(
        cluster,
        namespace,
        tmp_path,
        [{"text": "Mira Okafor was born in Cork."}, {"text": "Ilse Brand keeps bees."}],
        [{"text": "Ilse Brand keeps bees."}, {"id": "t-1", "text": "Tomas Reyes sails a ketch."}],
    )
    due = first_run(cluster, namespace)
    with run_operator():
        schedule_clock(due)
        first, slept = run_sleep(sim, cycle_name("lin", due))
        assert slept == ["Mira Okafor was born in Cork.", "Ilse Brand keeps bees.", "Tomas Reyes sails a ketch."]
        assert first["status"]["memory"]["count"] == 3 and first["status"]["memory"]["waiting"] == 0
        # Between the sleeps: one new memory, and one the champion already slept on.
        remember(cluster, namespace, tmp_path, [{"text": "Mira Okafor was born in Cork."}, {"text": "Ada Vu paints."}])
        schedule_clock(due + timedelta(days=1))
        second, slept_next = run_sleep(sim, cycle_name("lin", due + timedelta(days=1)))
    assert slept_next == ["Ada Vu paints."]
    assert second["status"]["baseGeneration"] == "gen-1" and second["status"]["generation"] == "gen-2"
    assert sorted(sim.created()) == sorted(
        f"{cycle_name('lin', d)}-{step}-1"
        for d in (due, due + timedelta(days=1))
        for step in ("consolidation", "evaluation")
    )


def test_a_rejected_sleeps_memories_are_taken_by_the_next(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator, s3: str, tmp_path: Path
) -> None:
    apply(cluster, namespace, inbox_lineage(f"{s3}/store"))
    remember(cluster, namespace, tmp_path, [{"text": "Mira Okafor was born in Cork."}, {"text": "Ada Vu paints."}])
    with run_operator():
        apply(cluster, namespace, cycle("c1", **{k: v for k, v in sleep_template().items() if k != "lineageRef"}))
        _, rejected = run_sleep(sim, "c1", passes=False)
        apply(cluster, namespace, cycle("c2", **{k: v for k, v in sleep_template().items() if k != "lineageRef"}))
        done, retried = run_sleep(sim, "c2")
    assert rejected == retried == ["Mira Okafor was born in Cork.", "Ada Vu paints."]
    assert done["status"]["baseGeneration"] == "gen-0"


def test_a_scheduled_run_with_an_empty_inbox_starts_no_job(
    cluster: Any,
    namespace: str,
    sim: JobSim,
    run_operator: RunOperator,
    s3: str,
    schedule_clock: Callable[[datetime], None],
) -> None:
    apply(cluster, namespace, inbox_lineage(f"{s3}/store", schedule={"cron": CRON, "template": sleep_template()}))
    due = first_run(cluster, namespace)
    labels = {"namespace": namespace, "lineage": "lin", "reason": "NothingToConsolidate"}
    before = metrics.REGISTRY.get_sample_value("reverie_skipped_sleeps_total", labels) or 0.0

    def lineage_status() -> dict[str, Any]:
        out = cluster.kubectl("get", "modellineage", "lin", "-n", namespace, "-o", "json").stdout
        return json.loads(out).get("status") or {}

    with run_operator():
        schedule_clock(due)
        status = wait(lambda: (s := lineage_status()).get("lastScheduleTime") and s, what="the run recorded")
        events = wait(
            lambda: [
                e
                for e in json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
                if e["reason"] == "NothingToConsolidate"
            ],
            what="a NothingToConsolidate Event",
        )
    assert status["lastScheduleTime"] == due.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["inbox"]["skippedRuns"] == 1 and status["inbox"]["memories"] == 0
    assert "was not started: the inbox holds nothing gen-0 has not slept on" in status["inbox"]["message"]
    assert len(events) == 1 and events[0]["involvedObject"]["name"] == "lin"
    assert metrics.REGISTRY.get_sample_value("reverie_skipped_sleeps_total", labels) == before + 1
    assert json.loads(cluster.kubectl("get", "sleepcycles", "-n", namespace, "-o", "json").stdout)["items"] == []
    assert sim.created() == {}


def test_a_restart_while_a_cycle_runs_keeps_its_set(
    cluster: Any, namespace: str, sim: JobSim, run_operator: RunOperator, s3: str, tmp_path: Path
) -> None:
    apply(cluster, namespace, inbox_lineage(f"{s3}/store"))
    remember(cluster, namespace, tmp_path, [{"text": "Mira Okafor was born in Cork."}])
    spec = {k: v for k, v in sleep_template().items() if k != "lineageRef"}
    with run_operator():
        apply(cluster, namespace, cycle("c1", **spec))
        first = sim.wait_for_job("c1-consolidation-1")
        taken = sim.cycle("c1")["status"]["memory"]
    # While the operator is down, more memories arrive.
    remember(cluster, namespace, tmp_path, [{"text": "Ada Vu paints."}])
    with run_operator():
        sim.fail(first, exit_code=137, container_reason="OOMKilled", reason="BackoffLimitExceeded")
        second = sim.wait_for_job("c1-consolidation-2")
        after = sim.cycle("c1")["status"]["memory"]
    assert sim.config_of(second)["memory"] == sim.config_of(first)["memory"]
    assert (after["uri"], after["count"], after["contentHash"]) == (taken["uri"], 1, taken["contentHash"])
    assert texts_of(taken["uri"]) == ["Mira Okafor was born in Cork."]
