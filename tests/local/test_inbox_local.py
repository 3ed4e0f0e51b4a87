"""Local mode with a memory inbox: `reverie remember DIR`, then each `reverie sleep DIR [--again]` sleeps on
what its champion has not slept on, and says so (exit 0) when nothing is new.

The phases are a stand-in process (the runner's ``python``) that records the
memories it was given and reports success: the control path is the real one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from reverie.cli import app
from reverie.local.project import load_project
from reverie.local.runner import Observer, run_cycle

FAKE_PHASE = """\
#!{python}
# Stands in for `python -m reverie.cli run-step STEP --config FILE`.
import json, os, pathlib, sys
step, config = sys.argv[4], json.loads(pathlib.Path(sys.argv[6]).read_text())
out = pathlib.Path(config["outputUri"])
out.mkdir(parents=True, exist_ok=True)
result = {{"step": step, "status": "Succeeded", "outputUri": str(out / "model"), "contentHash": "sha256:" + "0" * 64}}
if step == "consolidation":
    source = config["memory"]["sources"][0]["uri"]
    (out / "given.json").write_text(json.dumps([json.loads(l)["text"] for l in open(source)]))
if step == "evaluation":
    result.update(outputUri=str(out / "eval.json"), metrics={{"knowledge_incorporation": 0.9}},
                  baseline={{"knowledge_incorporation": 0.1}})
text = json.dumps(result)
(out / "result.json").write_text(text)
pathlib.Path(os.environ["REVERIE_TERMINATION_LOG"]).write_text(text)
"""


def project(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    root.mkdir()
    lineage = {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "ModelLineage",
        "metadata": {"name": "lin"},
        "spec": {"baseModel": {"uri": str(tmp_path / "base")}, "store": {"uri": "store"}, "memory": {"inbox": {}}},
    }
    cycle = {
        "apiVersion": "reverie.dev/v1alpha1",
        "kind": "SleepCycle",
        "metadata": {"name": "night"},
        "spec": {
            "lineageRef": "lin",
            "memory": {"sources": [{"inbox": True}]},
            "evaluation": {"gate": {"rules": ["knowledge_incorporation >= 0.5"]}},
        },
    }
    (root / "lineage.yaml").write_text(yaml.safe_dump(lineage))
    (root / "sleepcycle.yaml").write_text(yaml.safe_dump(cycle))
    return root


def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_PHASE.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def remember(root: Path, tmp_path: Path, *batches: list[dict[str, str]]) -> None:
    files = []
    for batch in batches:
        path = tmp_path / f"batch-{len(list(tmp_path.glob('batch-*')))}.jsonl"
        path.write_text("".join(json.dumps(m) + "\n" for m in batch))
        files.append(str(path))
    result = CliRunner().invoke(app, ["remember", str(root), *files])
    assert result.exit_code == 0, result.output


def sleep(root: Path, tmp_path: Path, *, again: bool) -> list[str]:
    """One local sleep with stand-in phases; the memories its consolidation was given."""
    outcome = run_cycle(load_project(root), observer=Observer(), again=again, python=fake_python(tmp_path))
    assert outcome.cycle.status.phase == "Succeeded", outcome.cycle.status.message
    given = root / "store" / "lin" / outcome.cycle.metadata.name / "consolidation" / "given.json"
    return list(json.loads(given.read_text()))


def test_each_local_sleep_takes_what_is_new_and_says_when_nothing_is(tmp_path: Path) -> None:
    root = project(tmp_path)
    remember(
        root, tmp_path, [{"text": "Mira keeps goats."}, {"text": "Ilse keeps bees."}], [{"text": "Ilse keeps bees."}]
    )
    assert sleep(root, tmp_path, again=False) == ["Mira keeps goats.", "Ilse keeps bees."]

    nothing = CliRunner().invoke(app, ["sleep", str(root), "--again"])
    assert nothing.exit_code == 0, nothing.output
    said = " ".join(nothing.output.split())
    assert "nothing new in the inbox" in said and "no sleep started" in said and "reverie remember" in said

    remember(root, tmp_path, [{"text": "Mira keeps goats."}, {"text": "Tomas sails."}])
    assert sleep(root, tmp_path, again=True) == ["Tomas sails."]


def test_a_first_sleep_on_an_empty_inbox_starts_nothing(tmp_path: Path) -> None:
    root = project(tmp_path)
    result = CliRunner().invoke(app, ["sleep", str(root)])
    assert result.exit_code == 0, result.output
    assert "nothing new in the inbox" in result.output
    assert not (root / ".reverie" / "runs").exists()


def test_remember_refuses_a_malformed_file_with_line_and_field(tmp_path: Path) -> None:
    root = project(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "", "id": "x"}\n')
    result = CliRunner().invoke(app, ["remember", str(root), str(bad)])
    assert result.exit_code == 1
    message = " ".join(result.output.split())  # rich wraps long lines
    assert "bad.jsonl:2: field 'text' must be a non-empty string" in message and "nothing of" in message
    assert not (root / "store" / "lin" / "inbox").exists()
