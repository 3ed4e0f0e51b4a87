"""Operator benchmark: N concurrent SleepCycles on a real kube-apiserver, with simulated Jobs.

What it measures (one run per N):

* **transition latency** — from the moment the simulated Job controller has
  marked a phase Job finished (its Job status PATCH returned) to the moment the
  next phase's Job appears on the benchmark's watch; p50/p99 over every
  consolidation→dreaming and dreaming→evaluation transition;
* **start latency** — SleepCycle created → first Job seen;
* **finish latency** — evaluation Job finished → cycle ``Succeeded`` (gate,
  candidate recorded, promotion, lineage released);
* **operator peak RSS** — ``VmHWM`` of the operator process;
* **API requests per cycle** — the API server's own ``apiserver_request_total``
  (all verbs, all resources) before and after, minus the requests this script
  made itself (creating objects, playing the Job controller, polling), divided
  by N.  So it is the operator's requests (its client, Kopf's watches and
  bookkeeping patches, the lineage handlers) plus the garbage collector's, which
  idles during the run.

The control plane is the test fixture's (etcd + kube-apiserver +
kube-controller-manager GC, CRDs installed); the operator runs as its own
process exactly as ``reverie operator`` would (``kopf run -m
reverie.controller.main``), one namespace, default settings.  Each cycle has
its own lineage (cycles of one lineage are serialized by design).

    .venv/bin/python bench/operator/bench.py --n 10 50 200
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kubernetes import client, watch  # noqa: E402
from tests.conftest import Cluster, missing_binaries  # noqa: E402

STEPS = ("consolidation", "dreaming", "evaluation")


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def apiserver_counters(cluster: Cluster) -> tuple[float, float, float]:
    """(requests, seconds spent serving non-WATCH requests, non-WATCH requests) from the API server's /metrics."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = sum(float(m.group(1)) for m in re.finditer(r"^apiserver_request_total\{[^}]*\} (\S+)$", text, re.M))
    seconds = count = 0.0
    for m in re.finditer(r"^apiserver_request_duration_seconds_(sum|count)\{([^}]*)\} (\S+)$", text, re.M):
        if 'verb="WATCH"' in m.group(2) or 'verb="CONNECT"' in m.group(2):
            continue
        if m.group(1) == "sum":
            seconds += float(m.group(3))
        else:
            count += float(m.group(3))
    return total, seconds, count


@dataclass
class Run:
    n: int
    created_at: dict[str, float] = field(default_factory=dict)
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    finished: dict[tuple[str, str], float] = field(default_factory=dict)
    succeeded: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, k: int = 1) -> None:
        with self.lock:
            self.requests += k


def result(namespace: str, cycle: str, step: str) -> str:
    out = f"file:///store/lin-{cycle}/{cycle}/{step}"
    body: dict[str, Any] = {
        "step": step,
        "status": "Succeeded",
        "outputUri": f"{out}/model",
        "contentHash": "sha256:" + "0" * 64,
    }
    if step == "evaluation":
        body["metrics"] = {"knowledge_incorporation": 0.9}
        body["baseline"] = {"knowledge_incorporation": 0.1}
    return json.dumps(body)


def complete(api: client.ApiClient, run: Run, namespace: str, job: Any) -> None:
    """Play Job controller + kubelet: pod with the result as termination message, Job Complete."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    meta = job.metadata
    cycle, step = meta.labels["reverie.dev/cycle"], meta.labels["reverie.dev/step"]
    template = api.sanitize_for_serialization(job.spec.template)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta.name}-0",
            "labels": template["metadata"]["labels"],
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": meta.name, "uid": meta.uid, "controller": True}
            ],
        },
        "spec": template["spec"],
    }
    core.create_namespaced_pod(namespace, pod)
    ts = now_iso()
    container = template["spec"]["containers"][0]
    core.patch_namespaced_pod_status(
        f"{meta.name}-0",
        namespace,
        {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": 0,
                                "reason": "Completed",
                                "message": result(namespace, cycle, step),
                                "startedAt": ts,
                                "finishedAt": ts,
                            }
                        },
                    }
                ],
            }
        },
    )
    batch.patch_namespaced_job_status(
        meta.name,
        namespace,
        {
            "status": {
                "startTime": ts,
                "completionTime": ts,
                "succeeded": 1,
                "conditions": [
                    {
                        "type": "SuccessCriteriaMet",
                        "status": "True",
                        "reason": "CompletionsReached",
                        "lastTransitionTime": ts,
                    },
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": ts},
                ],
            }
        },
    )
    run.count(3)
    with run.lock:
        run.finished[(cycle, step)] = time.monotonic()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def bench(cluster: Cluster, n: int, *, timeout: float) -> dict[str, Any]:
    namespace = f"bench-{n}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_for_default_service_account(namespace)
    api = cluster.api_client()
    custom = client.CustomObjectsApi(api)
    run = Run(n)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = open(cluster.workdir / f"operator-{n}.log", "wb")  # noqa: SIM115
    profile = os.environ.get("REVERIE_BENCH_PROFILE")  # a path: run the operator under cProfile
    wrap = ["-m", "cProfile", "-o", f"{profile}.{n}"] if profile else []
    operator = subprocess.Popen(
        [
            sys.executable,
            *wrap,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "--namespace",
            namespace,
            "-m",
            "reverie.controller.main",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    work: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def handle(ev: Any) -> None:
        if ev["type"] != "ADDED":
            return
        labels = ev["object"].metadata.labels
        key = (labels["reverie.dev/cycle"], labels["reverie.dev/step"])
        with run.lock:
            if key not in run.seen:
                run.seen[key] = time.monotonic()
                work.put(ev["object"])

    def cycle_watcher() -> None:
        """Phases as they change (a watch, not a poll: polling N cycles would load the API server)."""
        while not stop.is_set():
            try:
                for ev in watch.Watch().stream(
                    custom.list_namespaced_custom_object,
                    "reverie.dev",
                    "v1alpha1",
                    namespace,
                    "sleepcycles",
                    timeout_seconds=5,
                ):
                    obj = ev["object"]
                    if (obj.get("status") or {}).get("phase") == "Succeeded":
                        with run.lock:
                            run.succeeded.setdefault(obj["metadata"]["name"], time.monotonic())
                    if stop.is_set():
                        return
            except Exception as exc:
                if not stop.is_set():
                    print(f"watch restarted after: {str(exc)[:120]}", file=sys.stderr)
                    time.sleep(0.2)

    def watcher() -> None:
        batch = client.BatchV1Api(api)
        while not stop.is_set():
            try:
                for ev in watch.Watch().stream(
                    batch.list_namespaced_job, namespace, label_selector="reverie.dev/cycle", timeout_seconds=5
                ):
                    handle(ev)
                    if stop.is_set():
                        return
            except Exception as exc:  # a loaded API server may answer 504 "too large resource version": watch again
                if not stop.is_set():
                    print(f"watch restarted after: {str(exc)[:120]}", file=sys.stderr)
                    time.sleep(0.2)

    time.sleep(3)  # let the operator start its watches before the burst
    before, busy_before, served_before = apiserver_counters(cluster)
    threads = [threading.Thread(target=watcher, daemon=True)]
    threads[0].start()
    pool = ThreadPoolExecutor(max_workers=8)

    def feeder() -> None:
        while not stop.is_set():
            try:
                job = work.get(timeout=0.2)
            except queue.Empty:
                continue
            pool.submit(complete, api, run, namespace, job)

    threads.append(threading.Thread(target=feeder, daemon=True))
    threads.append(threading.Thread(target=cycle_watcher, daemon=True))
    for t in threads[1:]:
        t.start()
    began = time.monotonic()
    for i in range(n):
        name = f"c{i:03d}"
        custom.create_namespaced_custom_object(
            "reverie.dev",
            "v1alpha1",
            namespace,
            "modellineages",
            {
                "apiVersion": "reverie.dev/v1alpha1",
                "kind": "ModelLineage",
                "metadata": {"name": f"lin-{name}"},
                "spec": {"baseModel": {"uri": "builtin:tiny"}, "store": {"uri": "file:///store"}},
            },
        )
        custom.create_namespaced_custom_object(
            "reverie.dev",
            "v1alpha1",
            namespace,
            "sleepcycles",
            {
                "apiVersion": "reverie.dev/v1alpha1",
                "kind": "SleepCycle",
                "metadata": {"name": name},
                "spec": {
                    "lineageRef": f"lin-{name}",
                    "memory": {"sources": [{"inline": ["fact"]}]},
                    "evaluation": {"gate": {"rules": ["knowledge_incorporation >= 0.5"]}},
                },
            },
        )
        run.created_at[name] = time.monotonic()
        run.count(2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(run.succeeded) < n:
        time.sleep(0.2)
    wall = time.monotonic() - began
    if len(run.succeeded) < n:
        items = custom.list_namespaced_custom_object("reverie.dev", "v1alpha1", namespace, "sleepcycles")["items"]
        run.count(1)
        for item in items:
            if item["metadata"]["name"] not in run.succeeded:
                st = item.get("status") or {}
                print(
                    f"not Succeeded: {item['metadata']['name']}: {st.get('phase')}: {st.get('message')}",
                    file=sys.stderr,
                )
    stop.set()
    pool.shutdown(wait=True)
    after, busy_after, served_after = apiserver_counters(cluster)
    rss = peak_rss_mib(operator.pid)
    cpu = cpu_seconds(operator.pid)
    operator.send_signal(signal.SIGTERM)
    try:
        operator.wait(timeout=20)
    except subprocess.TimeoutExpired:
        operator.kill()
    log.close()
    shutil.copy(cluster.workdir / f"operator-{n}.log", Path(tempfile.gettempdir()) / f"reverie-bench-operator-{n}.log")
    transitions = [
        run.seen[(c, nxt)] - run.finished[(c, prev)]
        for c in run.created_at
        for prev, nxt in itertools.pairwise(STEPS)
        if (c, prev) in run.finished and (c, nxt) in run.seen
    ]
    starts = [run.seen[(c, "consolidation")] - t for c, t in run.created_at.items() if (c, "consolidation") in run.seen]
    finishes = [
        run.succeeded[c] - run.finished[(c, "evaluation")] for c in run.succeeded if (c, "evaluation") in run.finished
    ]
    # metrics scrapes and our own /metrics reads are requests too; subtract what we made
    operator_requests = after - before - run.requests - 1
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return {
        "n": n,
        "succeeded": len(run.succeeded),
        "wall_s": round(wall, 1),
        "transition_p50_s": round(pct(transitions, 0.5), 3),
        "transition_p99_s": round(pct(transitions, 0.99), 3),
        "transition_mean_s": round(statistics.fmean(transitions), 3) if transitions else None,
        "transitions": len(transitions),
        "start_p50_s": round(pct(starts, 0.5), 3),
        "start_p99_s": round(pct(starts, 0.99), 3),
        "finish_p50_s": round(pct(finishes, 0.5), 3),
        "finish_p99_s": round(pct(finishes, 0.99), 3),
        "operator_peak_rss_mib": round(rss, 1),
        "operator_cpu_s_per_cycle": round(cpu / n, 3),
        "api_requests_per_cycle": round(operator_requests / n, 1),
        # how fast the (shared) API server answered: transition latency is a few of these in a row
        "apiserver_mean_request_ms": round(
            1000 * (busy_after - busy_before) / max(1.0, served_after - served_before), 1
        ),
        # the machine is shared: the 1-minute load average says how much CPU the run really had
        "loadavg_1m_end": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--timeout", type=float, default=600.0, help="Per-N limit in seconds.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        sys.exit("missing: " + "; ".join(missing))
    workdir = Path(tempfile.mkdtemp(prefix="reverie-bench-"))
    cluster = Cluster(workdir)
    results = []
    try:
        cluster.start()
        for n in args.n:
            res = bench(cluster, n, timeout=args.timeout)
            print(json.dumps(res), flush=True)
            results.append(res)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
