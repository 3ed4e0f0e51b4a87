"""A whole local-mode cycle with the store on a real S3 server (MinIO), killed in the middle of uploads.

examples/s3 (examples/smoke with ``store.uri: s3://…`` and ``store.endpoint``),
pointed at this session's MinIO and a fresh bucket: the tiny world is built locally and
uploaded, every phase reads its inputs from S3 (base generation, memories,
eval sets) and writes its outputs there (generation, checkpoints,
``result.json``, eval cache, consolidated memories).

Each phase process that uploads a model is killed once, abruptly (``os._exit``,
as SIGKILL or a lost node would end it), after the third file of the model: the
store is then left with a generation that has its ledger but no commit marker.
The runner retries the attempt, which resumes from the checkpoint in S3 and
completes the upload.  The lineage only ever records committed generations
whose content hash is their manifest's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reverie.local.progress import first_step_per_launch, read_events
from reverie.local.state import load_state
from reverie.workloads.store import manifest as mf
from reverie.workloads.store import staging, store
from s3server import S3Server

# One cycle and two retried attempts in the module fixture: more than the default 600 s on a busy box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[2]
REVERIE = str(Path(sys.executable).parent / "reverie")
RUN_TIMEOUT = 900

# Loaded by every Python process of the run (PYTHONPATH): the phase that uploads
# a model under <step>/model/ dies after its third file, once per step.
KILL_MID_UPLOAD = """
import os
_steps = [s for s in os.environ.get("REVERIE_TEST_KILL_UPLOADS", "").split(",") if s]
_markers = os.environ.get("REVERIE_TEST_KILL_MARKERS", "")
if _steps and _markers:
    import s3fs

    _put = s3fs.S3FileSystem._put_file
    _sent = {}

    async def _put_file(self, lpath, rpath, *args, **kwargs):
        for step in _steps:
            marker = os.path.join(_markers, step)
            if f"/{step}/model/" in rpath and not os.path.exists(marker):
                _sent[step] = _sent.get(step, 0) + 1
                if _sent[step] == 3:
                    open(marker, "w").close()
                    os._exit(137)
        return await _put(self, lpath, rpath, *args, **kwargs)

    s3fs.S3FileSystem._put_file = _put_file
"""


@pytest.fixture(scope="module")
def s3_run(
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, str, subprocess.CompletedProcess[str]]]:
    bucket = s3_server.new_bucket()
    root = tmp_path_factory.mktemp("s3-smoke")
    run = root / "smoke"
    shutil.copytree(REPO / "examples" / "s3", run)
    lineage_path = run / "lineage.yaml"
    lineage = yaml.safe_load(lineage_path.read_text())
    assert set(lineage["spec"]["store"]) == {"uri", "endpoint"}
    lineage["spec"]["store"].update(uri=f"{bucket}/store", endpoint=s3_server.endpoint)
    lineage_path.write_text(yaml.safe_dump(lineage))
    hooks, markers = root / "hooks", root / "killed"
    hooks.mkdir()
    markers.mkdir()
    (hooks / "sitecustomize.py").write_text(KILL_MID_UPLOAD)
    credentials = {
        k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL_S3"
    }  # the endpoint: from the lineage
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **credentials,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "120",
        "PYTHONPATH": os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH", "")) if p),
        "REVERIE_TEST_KILL_UPLOADS": "consolidation,dreaming",
        "REVERIE_TEST_KILL_MARKERS": str(markers),
    }
    done = subprocess.run(
        [REVERIE, "sleep", str(run)], capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, check=False
    )
    with pytest.MonkeyPatch.context() as mp:  # the tests read the bucket too
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        yield run, bucket, done


def test_a_whole_cycle_runs_with_the_store_on_s3(s3_run: tuple[Path, str, subprocess.CompletedProcess[str]]) -> None:
    run, bucket, done = s3_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = load_state(run / ".reverie")
    assert state is not None
    cycle = state.cycles[-1]
    assert cycle.status.phase in ("Succeeded", "Rejected"), cycle.status.message
    out = f"{bucket}/store/smoke/smoke"
    files = set(store.list_tree(out))
    for expected in (
        "consolidation/result.json",
        "consolidation/memories.jsonl",
        "consolidation/model/manifest.json",
        "consolidation/checkpoints/latest",
        "dreaming/model/manifest.json",
        "dreaming/dreams.jsonl",
        "evaluation/eval.json",
        "evaluation/result.json",
    ):
        assert expected in files, f"{expected} missing from {out}"
    assert store.list_tree(f"{bucket}/store/.eval-cache"), "the eval cache lives in the store"
    assert not any(Path(run / ".reverie" / "store").glob("*")), "nothing went to a local store"


def test_a_phase_killed_mid_upload_resumes_from_its_s3_checkpoint_and_commits_its_generation(
    s3_run: tuple[Path, str, subprocess.CompletedProcess[str]],
) -> None:
    run, bucket, done = s3_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = load_state(run / ".reverie")
    assert state is not None
    cycle = state.cycles[-1]
    records = [(r.step, r.attempt, r.result) for r in cycle.status.records]
    assert records[:2] == [("consolidation", 1, "Failed"), ("consolidation", 2, "Succeeded")], records
    assert records[2:4] == [("dreaming", 1, "Failed"), ("dreaming", 2, "Succeeded")], records
    retried = state.jobs["smoke-consolidation-2"]
    resumed = [e for e in read_events(Path(retried.log_path)) if e.get("event") == "resumed"]
    assert resumed and resumed[0]["step"] > 0, "attempt 2 started from attempt 1's checkpoint"
    assert first_step_per_launch(Path(retried.log_path))[0] > 1
    config = yaml.safe_load(Path(retried.config_path).read_text())
    assert config["resumeFrom"].startswith(f"{bucket}/"), "resumed from the checkpoint in S3"
    # What the cycle and the lineage recorded is committed, and its hash is its manifest's.
    gens = {g.name: g for g in state.lineage.status.generations}
    for record in (r for r in cycle.status.records if r.result == "Succeeded" and r.step != "evaluation"):
        marker = mf.parse(store.read_text(f"{record.output_uri}/manifest.json") or "", where=str(record.output_uri))
        assert record.content_hash == marker.content_hash
    candidate = gens["gen-1"]
    marker = mf.parse(store.read_text(f"{candidate.uri}/manifest.json") or "", where=candidate.uri)
    assert candidate.content_hash == marker.content_hash
    fresh = staging.stage_generation(candidate.uri, cache=staging.StagingCache(root=run / "fresh-cache"))
    assert fresh.content_hash == marker.content_hash and mf.build(fresh.folder).content_hash == marker.content_hash
