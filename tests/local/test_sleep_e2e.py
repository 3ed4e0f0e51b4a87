"""The demo's code path in CI: `reverie sleep` on examples/smoke, end to end.

examples/smoke is examples/quickstart with fewer steps (the README says so).
Real processes all the way: the `reverie` console script, the planner, one
`reverie run-step` process per phase on a tiny model built on the first run,
the report opened in real Chromium.  Then the same run interrupted in the
middle of consolidation (SIGINT, what Ctrl-C sends) and started again: it must
resume that attempt from its checkpoint and finish without running any phase twice.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.local.chromium import chromium, ink_fraction, load_page

from reverie.local.progress import first_step_per_launch, read_events
from reverie.local.state import LocalState, load_state

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
REVERIE = str(Path(sys.executable).parent / "reverie")
ARTIFACTS = REPO / "artifacts"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "120"}
RUN_TIMEOUT = 900


def sleep_cmd(target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REVERIE, "sleep", str(target), *extra],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def state_of(run: Path) -> LocalState:
    state = load_state(run / ".reverie")
    assert state is not None
    return state


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    run = tmp_path_factory.mktemp("smoke") / "smoke"
    shutil.copytree(REPO / "examples" / "smoke", run)
    return run, sleep_cmd(run)


def test_sleep_runs_a_whole_cycle_from_nothing(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, done = smoke_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "first run: building the tiny base model" in out
    assert "recall of new memories" in out and "retention of old knowledge" in out and "champion" in out
    state = state_of(run)
    cycle = state.cycles[-1]
    assert cycle.status.phase in ("Succeeded", "Rejected"), cycle.status.message
    records = [(r.step, r.attempt, r.result) for r in cycle.status.records]
    assert records == [("consolidation", 1, "Succeeded"), ("dreaming", 1, "Succeeded"), ("evaluation", 1, "Succeeded")]
    assert cycle.status.gate is not None and len(cycle.status.gate.rules) == len(cycle.spec.evaluation.gate.rules)
    assert "knowledge_incorporation" in cycle.status.evaluation and "retention" in cycle.status.champion_evaluation
    gens = {g.name: g for g in state.lineage.status.generations}
    assert gens["gen-1"].parent == "gen-0" and gens["gen-1"].cycle == "smoke"
    expected_champion = "gen-1" if cycle.status.phase == "Succeeded" else "gen-0"
    assert state.lineage.status.champion == expected_champion
    if expected_champion == "gen-1":  # the promotion wrote the champion's servable (merged) form and handed it off
        servable = state.lineage.status.servable
        assert servable is not None and servable.generation == "gen-1" and servable.form == "merged"
        assert state.lineage.status.serving_uri == servable.uri
        assert (Path(servable.uri) / "model.safetensors").is_file() and not (Path(servable.uri) / "slots").exists()
        assert "servable champion (merged)" in out and "reverie ask" in out
    assert state.lineage.status.active_cycle is None
    for job in state.jobs.values():  # every phase ran once, as a `reverie run-step` process with its config
        assert job.launches == 1 and job.state == "Succeeded"
        assert Path(job.config_path).is_file() and any(
            e.get("event") == "progress" for e in read_events(Path(job.log_path))
        )
    assert (run / ".reverie" / "runs" / "smoke" / "report.html").is_file()


def test_running_a_finished_cycle_again_starts_nothing(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    run, first = smoke_run
    assert first.returncode == 0
    before = state_of(run)
    again = sleep_cmd(run)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "--again" in again.stdout
    after = state_of(run)
    assert after.jobs.keys() == before.jobs.keys()
    assert [j.launches for j in after.jobs.values()] == [j.launches for j in before.jobs.values()]


@pytest.mark.skipif(chromium() is None, reason="chromium missing: run `bash hack/install-chromium.sh`")
def test_reverie_report_regenerates_a_report_that_chromium_shows(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    run, first = smoke_run
    assert first.returncode == 0
    page = run / ".reverie" / "runs" / "smoke" / "report.html"
    page.unlink()
    done = subprocess.run(
        [REVERIE, "report", str(run)], capture_output=True, text=True, env=ENV, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert page.is_file()
    loaded = load_page(page, workdir=tmp_path, screenshot=ARTIFACTS / "report-smoke.png")
    assert loaded.console == []
    plots = re.findall(r'<svg[^>]*data-plot="([^"]+)"', loaded.dom)
    assert {"recall", "scores", "lineage"} <= set(plots)
    assert "loss:smoke-consolidation-1" in plots  # phases that log no loss (evaluation) have no curve
    assert loaded.screenshot is not None and ink_fraction(loaded.screenshot) > 0.02


def _wait_for_checkpoint(log: Path, proc: subprocess.Popen[str], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before consolidation wrote a checkpoint"
        if any(e.get("event") == "checkpoint" for e in read_events(log)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint in {log} after {timeout} s")


def test_an_interrupted_run_resumes_the_phase_from_its_checkpoint(
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    built, first = smoke_run
    assert first.returncode == 0
    run = tmp_path / "resume"
    shutil.copytree(REPO / "examples" / "smoke", run)
    # Reuse the tiny world built by the first run (the bootstrap is covered above).
    shutil.copytree(
        built / ".reverie" / "store", run / ".reverie" / "store", ignore=shutil.ignore_patterns("smoke")
    )  # not the first run's cycle outputs
    spec_path = run / "sleepcycle.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["spec"]["consolidation"].update({"steps": 60, "checkpointEvery": 10})
    spec_path.write_text(yaml.safe_dump(spec))

    log = run / ".reverie" / "runs" / "smoke" / "smoke-consolidation-1.log"
    with (tmp_path / "first.out").open("w") as out:
        proc = subprocess.Popen([REVERIE, "sleep", str(run)], stdout=out, stderr=subprocess.STDOUT, text=True, env=ENV)
        try:
            deadline = time.monotonic() + 300
            while not log.exists() and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "first.out").read_text()
                time.sleep(0.2)
            _wait_for_checkpoint(log, proc, timeout=300)
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    interrupted = state_of(run)
    assert interrupted.jobs["smoke-consolidation-1"].state == "Interrupted"
    assert "Run the same command again to resume" in (tmp_path / "first.out").read_text()

    resumed = sleep_cmd(run)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming smoke-consolidation-1 from" in resumed.stdout
    state = state_of(run)
    cycle = state.cycles[-1]
    assert cycle.status.phase in ("Succeeded", "Rejected")
    # No phase ran twice: one attempt per step, and only the interrupted one was relaunched.
    assert [(r.step, r.attempt) for r in cycle.status.records] == [
        ("consolidation", 1),
        ("dreaming", 1),
        ("evaluation", 1),
    ]
    consolidation = state.jobs["smoke-consolidation-1"]
    assert consolidation.launches == 2 and consolidation.resumed_from[-1]
    assert "checkpoints" in consolidation.resumed_from[-1]
    assert [j.launches for n, j in state.jobs.items() if n != "smoke-consolidation-1"] == [1, 1]
    # The second process started where the checkpoint left off, not at step 1.
    firsts = first_step_per_launch(Path(consolidation.log_path))
    assert firsts[0] is not None and firsts[1] is not None and firsts[1] > firsts[0]
