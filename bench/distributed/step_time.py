"""Consolidation step time on 1 vs 2 processes (torchrun; gloo on CPU, nccl on GPU), same global batch.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/distributed/step_time.py --steps 20 --batch 8

Builds the tiny base generation (reverie.workloads.ml.tiny), then runs the
consolidation phase once per (processes, strategy) with ``torchrun
--standalone --nproc-per-node N`` and reads the phase's own timing: the
training wall time over the optimiser steps (``metrics.seconds / metrics.steps``,
self-study generation excluded) and the start-up cost (whole command).  Writes
``bench/distributed/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--zero", nargs="+", default=["0"], help="zeroStage values: 0 (DDP on N>1), 2, 3")
    ap.add_argument("--precision", default="fp32", help="fp32, or bf16 (GPU only)")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args()

    from reverie.workloads.ml.tiny import build_base_generation, memory_records, write_memories_jsonl

    root = Path(tempfile.mkdtemp(prefix="reverie-bench-dist-"))
    base = build_base_generation(root / "g0", seed=0, steps=300)
    store = root / "store"
    write_memories_jsonl(store / "memories/session-1.jsonl", memory_records(base.new[0]))
    runs = []
    for zero in args.zero:
        for n in args.procs:
            out = store / f"z{zero}-n{n}"
            cfg = {
                "step": "consolidation",
                "cycle": "c",
                "lineage": "l",
                "storeUri": str(store),
                "outputUri": str(out),
                "baseGeneration": "g0",
                "baseUri": str(base.folder),
                "memory": {"sources": [{"uri": "memories/session-1.jsonl"}]},
                "consolidation": {
                    "steps": args.steps,
                    "batchSize": args.batch,
                    "maxNewTokens": 8,
                    "checkpointEvery": 10_000,
                    "zeroStage": zero,
                    "precision": args.precision,
                },
            }
            path = root / f"z{zero}-n{n}.json"
            path.write_text(json.dumps(cfg))
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "GLOO_SOCKET_IFNAME": "lo",
                "REVERIE_TERMINATION_LOG": str(root / "term"),
            }
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nnodes",
                    "1",
                    "--nproc-per-node",
                    str(n),
                    "-m",
                    "reverie.workloads.steps.run_step",
                    "consolidation",
                    str(path),
                ],
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(proc.stderr[-3000:])
            m = json.loads((out / "result.json").read_text())["metrics"]
            runs.append(
                {
                    "zeroStage": zero,
                    "processes": n,
                    "globalBatch": args.batch,
                    "steps": int(m["steps"]),
                    "stepSeconds": m["seconds"] / m["steps"],
                    "tokensPerS": m["tokens_per_s"],
                    "selfstudySeconds": m["selfstudy_seconds"],
                    "commandSeconds": wall,
                    "finalLoss": m["consolidation_loss"],
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    load = os.getloadavg()
    args.out.write_text(
        json.dumps({"command": " ".join(sys.argv), "loadavg": load, "cpus": os.cpu_count(), "runs": runs}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
