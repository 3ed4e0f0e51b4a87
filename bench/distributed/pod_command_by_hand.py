"""Render a 2-node Indexed Job with the operator's code and run its pod command by hand as two local "pods".

HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=operator .venv/bin/python bench/distributed/pod_command_by_hand.py /tmp/byhand
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from reverie.api.base import Scheduling
from reverie.api.lineage import ModelLineage
from reverie.api.sleepcycle import Step
from reverie.controller.jobs import Owner, render
from reverie.core.actions import CreateJob
from reverie.core.contract import AttemptConfig
from reverie.workloads.ml.tiny import build_base_generation, memory_records, write_memories_jsonl

root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
base = build_base_generation(root / "g0", seed=0, steps=300)
store = root / "store"
write_memories_jsonl(store / "memories/s1.jsonl", memory_records(base.new[0]))
cfg = AttemptConfig.model_validate(
    {
        "step": "consolidation",
        "cycle": "c1",
        "lineage": "l",
        "storeUri": str(store),
        "outputUri": str(store / "l/c1/consolidation"),
        "baseGeneration": "g0",
        "baseUri": str(base.folder),
        "memory": {"sources": [{"uri": "memories/s1.jsonl"}]},
        "consolidation": {
            "steps": 6,
            "batchSize": 4,
            "maxNewTokens": 4,
            "checkpointEvery": 3,
            "runtime": {"numNodes": 2, "procsPerNode": 1},
        },
    }
)
lin = ModelLineage.model_validate(
    {"metadata": {"name": "l"}, "spec": {"baseModel": {"uri": str(base.folder)}, "store": {"uri": str(store)}}}
)
create = CreateJob(
    step=Step.CONSOLIDATION,
    attempt=1,
    job_name="c1-consolidation-1",
    config=cfg,
    runtime=cfg.consolidation.runtime,
    image="img",
)
objs = render(create, owner=Owner("c1", "ns", "u"), lineage=lin, scheduling=Scheduling())
pod = objs.workload["spec"]["template"]["spec"]
c = pod["containers"][0]
(root / "attempt.json").write_text(objs.config_map["data"]["attempt.json"])
command = [str(root / "attempt.json") if a == "/etc/reverie/attempt.json" else a for a in c["command"]]
command[0] = str(Path(sys.executable).with_name("torchrun"))
print("command:", command)
procs = []
for index in (0, 1):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "REVERIE_TERMINATION_LOG": str(root / f"term-{index}"),
    }
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e["name"] == "PET_NODE_RANK":
            env[e["name"]] = str(index)  # what the completion-index annotation gives pod `index`
    env["PET_MASTER_ADDR"] = "127.0.0.1"  # pod 0's DNS name through the headless Service
    env["HOME"] = env["HF_HOME"] = str(root / f"home-{index}")
    env.pop("REVERIE_STAGING_CACHE", None)
    print("pod", index, {k: v for k, v in env.items() if k.startswith("PET_")})
    log = (root / f"pod-{index}.log").open("w")  # open while the pod runs
    procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
codes = [p.wait(timeout=900) for p in procs]
print("exit codes", codes)
r = json.loads((store / "l/c1/consolidation/result.json").read_text())
print(r["status"], r["message"], {k: r["metrics"][k] for k in ("steps", "consolidation_loss", "memory_recall_after")})
