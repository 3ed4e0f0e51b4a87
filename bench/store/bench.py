"""Bytes downloaded from the store per sleep cycle, without and with the staging cache.

Runs examples/smoke (the tiny model, CI's cycle) in local mode with the store on
a real MinIO server (the one the tests build: ``bash hack/install-minio.sh``),
once with ``REVERIE_STAGING_CACHE=none`` (every load stages into a fresh
temporary folder: what the phases did before the cache) and once with the
cache (local mode shares ``.reverie/staging`` between phases, as pods on one
node share ``spec.store.stagingCache``).  For each run it reports what MinIO
says it sent (``minio_s3_traffic_sent_bytes``, every response byte: listings,
manifests, memories, eval sets, models) and what the phases' ``staged``
events say they downloaded for generations.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/store/bench.py --out bench/store/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from reverie.local.progress import read_events

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from s3server import S3Server, minio_binary  # noqa: E402

REVERIE = str(Path(sys.executable).parent / "reverie")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def staged_events(run: Path) -> list[dict[str, Any]]:
    events = []
    for log in sorted((run / ".reverie" / "runs").rglob("*.log")):
        for event in read_events(log):
            if event.get("event") == "staged":
                event["phase"] = log.stem
                events.append(event)
    return events


def one_cycle(server: S3Server, workdir: Path, *, cache: bool) -> dict[str, Any]:
    bucket = server.new_bucket()
    run = workdir / ("cache" if cache else "no-cache") / "smoke"
    shutil.copytree(REPO / "examples" / "smoke", run)
    lineage_path = run / "lineage.yaml"
    lineage = yaml.safe_load(lineage_path.read_text())
    lineage["spec"]["store"] = {"uri": f"{bucket}/store", "endpoint": server.endpoint}
    lineage_path.write_text(yaml.safe_dump(lineage))
    env = {**os.environ, **server.env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if not cache:
        env["REVERIE_STAGING_CACHE"] = "none"
    sent_before = server.sent_bytes()
    started = time.monotonic()
    done = subprocess.run([REVERIE, "sleep", str(run)], capture_output=True, text=True, env=env, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"reverie sleep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    events = [e for e in staged_events(run) if "uri" in e]
    return {
        "cache": cache,
        "seconds": round(seconds, 1),
        "store_sent_bytes": server.sent_bytes() - sent_before,
        "generation_bytes_downloaded": sum(e.get("bytes", 0) for e in events),
        "generation_loads": len(events),
        "generation_loads_from_cache": sum(1 for e in events if e.get("reused")),
        "loads": [
            {
                "phase": e["phase"],
                "uri": e["uri"].split("/store/", 1)[-1],
                "bytes": e.get("bytes", 0),
                "reused": e.get("reused", False),
            }
            for e in events
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--mode", choices=["both", "no-cache", "cache"], default="both", help="which runs (default both)"
    )
    args = parser.parse_args()
    if not minio_binary().is_file():
        raise SystemExit(f"{minio_binary()} missing: bash hack/install-minio.sh")
    workdir = Path(tempfile.mkdtemp(prefix="reverie-bench-store-"))
    server = S3Server(workdir, port=free_port(), console_port=free_port())
    server.start()
    try:
        modes = {"both": (False, True), "no-cache": (False,), "cache": (True,)}[args.mode]
        results = [one_cycle(server, workdir, cache=cache) for cache in modes]
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps({"cycles": results}, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
