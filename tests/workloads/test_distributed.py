"""Phases on two CPU processes (torchrun, gloo): equal to one process, rank 0 writes, failures resume.

The 2-rank tests (marker ``distributed``) start real ``torchrun --nproc-per-node 2``
workers on the tiny base model.  Tolerance of "equal": the ranks split each
step's global batch and DDP/ZeRO average the gradients, which is the same sum in
another order; on this CPU in fp32 the loss curve agrees to 1e-4 (relative) and
the new slot to 1e-4 (absolute; its entries are ~1e-2).  Generation and teacher
passes run the same batches as one process, so the self-study set is identical.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from reverie.core.contract import parse_result
from reverie.workloads.ml import distributed as d
from reverie.workloads.steps import run_step as rp
from reverie.workloads.store.modelio import stage_in

LOSS_RTOL = 1e-4
SLOT_ATOL = 1e-4
SLOT_FILE = "slots/slot-0/adapter_model.safetensors"


def slot_of(out: Path) -> dict[str, torch.Tensor]:
    """The new slot of a consolidation output, read as a loader reads the (thin) generation."""
    return load_file(str(stage_in(str(out / "model")) / SLOT_FILE))


# ----------------------------------------------------------------------------- pure helpers


def test_shares_cover_the_global_batch_in_order() -> None:
    rows = list(range(7))
    parts = [d.share(rows, d.World(rank=r, size=3)) for r in range(3)]
    assert [x for p in parts for x in p] == rows and [len(p) for p in parts] == [2, 2, 3]
    assert d.share(rows, d.World()) == rows


def test_generation_batches_are_one_processes_batches_dealt_round_robin() -> None:
    assert d.owned_batches(10, 4, d.World(rank=0, size=2)) == [range(0, 4), range(8, 10)]
    assert d.owned_batches(10, 4, d.World(rank=1, size=2)) == [range(4, 8)]


def test_the_world_comes_from_torchruns_variables_only() -> None:
    assert d.world_from_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == d.World(1, 1, 2)
    assert d.world_from_env({}) == d.World()
    with pytest.raises(d.WorldError, match="RANK=3"):
        d.world_from_env({"RANK": "3", "WORLD_SIZE": "2"})


def test_a_world_without_a_rendezvous_is_refused(attempt_config, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert rp.run_step("consolidation", str(attempt_config())) == rp.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert "WORLD_SIZE=8" in err and "torchrun" in err


def test_sigterm_stops_a_rank_but_never_the_report_of_a_failure_already_in_hand() -> None:
    """A dead peer fails this rank's collective, then torchrun's SIGTERM arrives while that is reported."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        d.raise_on_sigterm(d.World(0, 0, 2))
        with pytest.raises(d.Terminated, match="rank 0 of 2"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs before this returns
        reported = []
        try:
            raise RuntimeError("Connection closed by peer")
        except RuntimeError as exc:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            reported.append(str(exc))
        assert reported == ["Connection closed by peer"]
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- 2 ranks


def torchrun(
    config: Path,
    *,
    step: str = "consolidation",
    env: dict[str, str] | None = None,
    nproc: int = 2,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node 2 -m reverie.workloads.steps.run_step STEP CONFIG`` on gloo."""
    full = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "HF_HUB_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        **(env or {}),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(nproc),
            "--max-restarts",
            "0",
            "-m",
            "reverie.workloads.steps.run_step",
            step,
            str(config),
        ],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def events(text: str, name: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(line) for line in text.splitlines() if line.startswith("{")) if e["event"] == name]


def history(out: Path) -> list[float]:
    folder = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    return [h["loss"] for h in json.loads((folder / "state.json").read_text())["history"]]


def assert_same_slot(a: Path, b: Path, *, atol: float = SLOT_ATOL) -> None:
    x, y = slot_of(a), slot_of(b)
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].shape == y[k].shape and x[k].numel() > 0, k
        assert torch.allclose(x[k], y[k], atol=atol, rtol=0), (k, float((x[k] - y[k]).abs().max()))


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, NaN equal to NaN (a suite without items)."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


SETTINGS = {"steps": 6, "checkpointEvery": 3, "batchSize": 4, "alpha": 0.9}


@pytest.fixture(scope="module")
def one_rank(tiny_base, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same consolidation in one process (in this test process)."""
    from reverie.workloads.ml.tiny import memory_records, write_memories_jsonl

    root = tmp_path_factory.mktemp("one-rank")
    store = root / "store"
    write_memories_jsonl(store / "memories" / "session-1.jsonl", memory_records(tiny_base.new[0]))
    write_memories_jsonl(store / "memories" / "old.jsonl", memory_records(tiny_base.old, prefix="old"))
    cfg = config_for(tiny_base, store, "l/c1/consolidation")
    os.environ["REVERIE_TERMINATION_LOG"] = str(root / "termination-log")
    assert rp.run_step("consolidation", str(cfg)) == 0
    return store / "l/c1/consolidation"


def config_for(tiny_base: Any, store: Path, output: str, **consolidation: Any) -> Path:
    cfg = {
        "step": "consolidation",
        "cycle": "c1",
        "lineage": "l",
        "storeUri": str(store),
        "outputUri": str(store / output),
        "baseGeneration": "g0",
        "baseUri": str(tiny_base.folder),
        "memory": {"sources": [{"uri": "memories/session-1.jsonl"}]},
        "priorMemoryUris": ["memories/old.jsonl"],
        "consolidation": {"maxNewTokens": 4, "imitationGroupSize": 2, **SETTINGS, **consolidation},
    }
    path = store.parent / f"{output.replace('/', '-')}.json"
    path.write_text(json.dumps(cfg))
    return path


def copy_store(src_out: Path, tmp_path: Path) -> Path:
    """A fresh store with the same memories as the reference's."""
    store = tmp_path / "store"
    shutil.copytree(src_out.parents[2] / "memories", store / "memories")
    return store


@pytest.mark.distributed
def test_ddp_on_two_ranks_equals_one_rank_through_a_killed_rank_and_its_retry(
    one_rank: Path,
    tiny_base,
    tmp_path: Path,
) -> None:
    store = copy_store(one_rank, tmp_path)
    out = store / "l/c1/consolidation"
    cfg = config_for(tiny_base, store, "l/c1/consolidation")
    term = {"REVERIE_TERMINATION_LOG": str(tmp_path / "termination-log")}
    # Attempt 1: rank 1 is killed (SIGKILL) as step 4 starts, after the checkpoint at step 3.
    first = torchrun(cfg, env={**term, d.FAULT_ENV: "1:4"})
    assert first.returncode != 0, first.stdout[-2000:]
    failed = parse_result((out / "result.json").read_text(), step="consolidation")
    assert failed.status == "Failed", "rank 0 reports the failure instead of hanging"
    assert (out / "checkpoints/latest").read_text().strip() == "step-00000003"
    # The self-study set and the first three steps equal the one-process run.
    assert (out / "selfstudy/items.jsonl").read_text() == (one_rank / "selfstudy/items.jsonl").read_text()
    assert history(out) == pytest.approx(history(one_rank), rel=LOSS_RTOL)
    # Attempt 2 (what the operator's retry does): resume from the last checkpoint, on 2 ranks again.
    second = config_for(tiny_base, store, "l/c1/consolidation")
    raw = json.loads(second.read_text())
    raw["resumeFrom"] = str(out / "checkpoints")
    second.write_text(json.dumps(raw))
    retry = torchrun(second, env=term)
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert events(retry.stdout, "resumed")[0]["step"] == 3
    assert len(events(retry.stdout, "start")) == 1, "progress comes from rank 0 alone"
    result = parse_result((out / "result.json").read_text(), step="consolidation")
    reference = parse_result((one_rank / "result.json").read_text(), step="consolidation")
    assert (result.metrics["steps"], result.metrics["steps_this_attempt"]) == (6.0, 3.0)
    assert result.metrics["consolidation_loss"] == pytest.approx(reference.metrics["consolidation_loss"], rel=LOSS_RTOL)
    assert_same_slot(out, one_rank)


@pytest.mark.distributed
def test_zero3_on_two_ranks_partitions_trains_saves_the_gathered_slot_and_resumes(
    one_rank: Path,
    tiny_base,
    tmp_path: Path,
) -> None:
    store = copy_store(one_rank, tmp_path)
    out = store / "l/c1/consolidation"
    # Resume from the one-process run's checkpoint at step 3: another number of ranks, another engine.
    shutil.copytree(one_rank / "checkpoints", out / "checkpoints")
    shutil.copytree(one_rank / "selfstudy", out / "selfstudy")
    cfg = config_for(tiny_base, store, "l/c1/consolidation", zeroStage="3")
    raw = json.loads(cfg.read_text())
    raw["resumeFrom"] = str(out / "checkpoints" / "step-00000003")
    cfg.write_text(json.dumps(raw))
    run = torchrun(cfg, env={"REVERIE_TERMINATION_LOG": str(tmp_path / "termination-log")})
    assert run.returncode == 0, run.stderr[-3000:]
    (zero3,) = events(run.stdout, "zero3")
    assert zero3["ranks"] == 2 and all(0 < h < zero3["total"] for h in zero3["held"]), "weights really partitioned"
    assert events(run.stdout, "resumed")[0] == {
        "event": "resumed",
        "phase": "consolidation",
        "step": 3,
        "ranks": 2,
        "checkpoint": str(out / "checkpoints/step-00000003"),
    }
    result = parse_result((out / "result.json").read_text(), step="consolidation")
    assert (result.metrics["steps"], result.metrics["steps_this_attempt"]) == (6.0, 3.0)
    # The adapter is the gathered slot, not the empty shards: whole shapes, trained past the checkpoint.
    saved = slot_of(out)
    at3 = load_file(str(out / "checkpoints/step-00000003/slot.safetensors"))
    ref = slot_of(one_rank)
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in ref.items()}
    at_resume = {k.replace(".slot-0.", "."): v for k, v in at3.items()}
    assert at_resume.keys() == saved.keys()
    assert any(not torch.allclose(saved[k], at_resume[k]) for k in saved), "steps 4-6 trained the slot"
    # Same steps 4-6 from the same weights; ZeRO restarts the AdamW moments at a resume, so
    # the slot is close to, not equal to, the uninterrupted run.
    assert_same_slot(out, one_rank, atol=5e-2)
    base = load_file(str(tiny_base.folder / "model.safetensors"))
    kept = load_file(str(stage_in(str(out / "model")) / "model.safetensors"))
    assert all(torch.equal(base[k], kept[k]) for k in base), "the gathered base is saved whole and untouched"


@pytest.mark.distributed
def test_evaluation_on_two_ranks_gives_the_scores_of_one(one_rank: Path, tiny_base, tmp_path: Path) -> None:
    from reverie.workloads.steps.evaluate import run

    def config(store: Path) -> dict[str, Any]:
        return {
            "step": "evaluation",
            "cycle": "c1",
            "lineage": "l",
            "storeUri": str(store),
            "outputUri": str(store / "l/c1/evaluation"),
            "baseGeneration": "g0",
            "baseUri": str(tiny_base.folder),
            "memory": {"sources": [{"uri": "memories/session-1.jsonl"}]},
            "priorMemoryUris": ["memories/old.jsonl"],
            "inputs": {"consolidation": str(one_rank / "model")},
            "championUri": str(tiny_base.folder),
            "championGeneration": "g0",
            "evaluation": {"maxNewTokens": 6},
        }

    from reverie.core.contract import AttemptConfig

    alone = copy_store(one_rank, tmp_path / "one")
    expected = run(AttemptConfig.model_validate(config(alone)))
    pair = copy_store(one_rank, tmp_path / "two")
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(config(pair)))
    two = torchrun(path, step="evaluation", env={"REVERIE_TERMINATION_LOG": str(tmp_path / "termination-log")})
    assert two.returncode == 0, two.stderr[-3000:]
    got = parse_result((pair / "l/c1/evaluation/result.json").read_text(), step="evaluation")
    assert same(got.metrics, expected.metrics) and same(got.baseline, expected.baseline)
    report = json.loads((pair / "l/c1/evaluation/eval.json").read_text())
    items = report["candidate"]["scores"]["knowledge_incorporation"]["items"]
    assert (
        items
        == json.loads((alone / "l/c1/evaluation/eval.json").read_text())["candidate"]["scores"][
            "knowledge_incorporation"
        ]["items"]
    ), "the same answers, item by item"
