"""``run_step``: the Job contract of the consolidation phase (result, exit codes, clear failures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reverie.core.contract import consolidated_memories_uri, parse_result
from reverie.workloads.ml.tiny import TinyBase
from reverie.workloads.steps import run_step as rp
from reverie.workloads.store.modelio import content_hash, load_generation


def test_consolidation_writes_a_new_generation_and_its_result(
    attempt_config,
    tiny_base: TinyBase,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base_hash = content_hash(tiny_base.folder)
    assert rp.run_step("consolidation", str(attempt_config(alpha=0.9))) == 0
    out = tmp_path / "store/l/c1/consolidation"
    text = (out / "result.json").read_text()
    assert (tmp_path / "termination-log").read_text() == text
    result = parse_result(text, step="consolidation")
    assert result.slot == "slot-0" and result.output_uri == str(out / "model")
    assert result.content_hash == content_hash(out / "model")
    assert {"consolidation_loss", "distill_loss", "imitation_loss", "tokens_per_s", "memory_recall_after"} <= set(
        result.metrics
    )
    gen = load_generation(out / "model")
    assert gen.slots == ["slot-0"]
    assert gen.ledger["slots"][0]["cycle"] == "c1" and gen.ledger["slots"][0]["parent"] == "g0"
    assert content_hash(tiny_base.folder) == base_hash, "the base generation is never touched"
    learned = [json.loads(line) for line in (out / "memories.jsonl").read_text().splitlines()]
    assert [m["id"] for m in learned] == gen.ledger["slots"][0]["memories"], "what this sleep learned is kept"
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    progress = [x for x in logs if x["event"] == "progress"]
    assert progress and {"step", "loss", "distill", "imitation", "tokens_per_s"} <= set(progress[-1])
    assert progress[-1]["step"] == 6


def test_consolidation_tops_up_thin_facts_and_reports_coverage(attempt_config, tmp_path: Path) -> None:
    assert rp.run_step("consolidation", str(attempt_config(factFloor=2))) == 0
    result = parse_result((tmp_path / "store/l/c1/consolidation/result.json").read_text(), step="consolidation")
    m = result.metrics
    assert m["facts"] >= 3
    assert m["facts_carried_by_0"] == m["facts_carried_by_1"] == 0, "every fact reaches the floor"
    assert m["selfstudy_kept_cloze"] >= 1 and m["selfstudy_asked_cloze"] >= m["selfstudy_kept_cloze"]
    by_bin = sum(v for k, v in m.items() if k.startswith("facts_carried_by_"))
    assert by_bin == m["facts"], "the histogram counts every fact once"


def test_a_second_sleep_adds_a_second_slot(attempt_config, tmp_path: Path) -> None:
    assert rp.run_step("consolidation", str(attempt_config())) == 0
    second = json.loads(attempt_config("second.json", output="l/c2/consolidation").read_text())
    second["baseUri"] = str(tmp_path / "store/l/c1/consolidation/model")
    # What the planner hands a later cycle: the first sleep's memories, to replay.
    second["priorMemoryUris"] = [consolidated_memories_uri(str(tmp_path / "store"), "l", "c1")]
    (tmp_path / "second.json").write_text(json.dumps(second))
    assert rp.run_step("consolidation", str(tmp_path / "second.json")) == 0
    gen = load_generation(tmp_path / "store/l/c2/consolidation/model")
    assert gen.slots == ["slot-0", "slot-1"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(consolidation={"alpha": 3}), "consolidation.alpha"),
        (lambda c: c.pop("baseUri"), "baseUri"),
        (lambda c: c.update(step="dreaming"), "is for step 'dreaming'"),
    ],
)
def test_bad_config_exits_2_with_the_field(attempt_config, tmp_path: Path, capsys, edit, message) -> None:
    path = attempt_config()
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    assert rp.run_step("consolidation", str(path)) == rp.EXIT_BAD_CONFIG
    assert message in capsys.readouterr().err
    assert "Failed" in (tmp_path / "termination-log").read_text()
    assert not (tmp_path / "store/l/c1/consolidation").exists(), "nothing is written to the store"


def test_unreadable_config_and_unknown_step(tmp_path: Path, capsys) -> None:
    assert rp.run_step("consolidation", str(tmp_path / "missing.json")) == rp.EXIT_BAD_CONFIG
    assert "cannot read phase config" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert rp.run_step("consolidation", str(tmp_path / "bad.json")) == rp.EXIT_BAD_CONFIG
    assert "not valid JSON" in capsys.readouterr().err
    assert rp.run_step("napping", str(tmp_path / "bad.json")) == rp.EXIT_BAD_CONFIG
    assert "unknown step" in capsys.readouterr().err


def test_unreadable_memories_fail_cleanly_without_touching_the_base(
    attempt_config,
    tiny_base: TinyBase,
    tmp_path: Path,
) -> None:
    base_hash = content_hash(tiny_base.folder)
    path = attempt_config()
    raw = json.loads(path.read_text())
    raw["memory"] = {"sources": [{"uri": "memories/nope.jsonl"}]}
    path.write_text(json.dumps(raw))
    assert rp.run_step("consolidation", str(path)) == rp.EXIT_FAILED
    result = parse_result((tmp_path / "termination-log").read_text(), step="consolidation")
    assert result.status == "Failed" and "nope.jsonl" in result.message and "does not exist" in result.message
    assert content_hash(tiny_base.folder) == base_hash


def test_missing_base_generation_fails_cleanly(attempt_config, tmp_path: Path) -> None:
    path = attempt_config()
    raw = json.loads(path.read_text())
    raw["baseUri"] = str(tmp_path / "no-such-generation")
    path.write_text(json.dumps(raw))
    assert rp.run_step("consolidation", str(path)) == rp.EXIT_FAILED
    result = parse_result((tmp_path / "termination-log").read_text(), step="consolidation")
    assert "base generation" in result.message


def test_a_missing_phase_module_is_named(attempt_config, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from reverie.api.sleepcycle import Step

    monkeypatch.setitem(rp.STEP_MODULES, Step.CONSOLIDATION, "reverie.workloads.not_installed_here")
    assert rp.run_step("consolidation", str(attempt_config())) == rp.EXIT_BAD_CONFIG
    assert "reverie.workloads.not_installed_here is not installed" in capsys.readouterr().err


def test_termination_log_is_skipped_when_not_writable(
    attempt_config, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("REVERIE_TERMINATION_LOG", str(tmp_path / "no-dir" / "log"))
    assert rp.run_step("consolidation", str(attempt_config(steps=1))) == 0
    assert (tmp_path / "store/l/c1/consolidation/result.json").is_file()


def test_the_on_policy_stage_follows_the_self_study_stage_when_the_student_agrees(
    attempt_config,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert rp.run_step("consolidation", str(attempt_config(steps=3, onPolicySteps=2, onPolicyThreshold=0.0))) == 0
    result = parse_result((tmp_path / "store/l/c1/consolidation/result.json").read_text(), step="consolidation")
    assert result.metrics["on_policy_stage"] == 1.0 and result.metrics["steps"] == 5.0
    progress = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"progress"' in line]
    assert progress[-1]["step"] == 5 and progress[-1]["totalSteps"] == 5


def test_the_on_policy_stage_waits_for_agreement(attempt_config, tmp_path: Path, monkeypatch) -> None:
    from reverie.workloads.steps import consolidate

    # A student that does not yet agree with its teacher (the tiny model agrees at once on 4 tokens).
    monkeypatch.setattr(consolidate, "teacher_agreement", lambda *a, **k: 0.1)
    assert rp.run_step("consolidation", str(attempt_config(steps=2, onPolicySteps=2, onPolicyThreshold=0.3))) == 0
    result = parse_result((tmp_path / "store/l/c1/consolidation/result.json").read_text(), step="consolidation")
    assert result.metrics["on_policy_stage"] == 0.0 and result.metrics["steps"] == 2.0
