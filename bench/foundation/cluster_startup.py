"""How long the tests' real control plane takes to start and stop.

    .venv/bin/python bench/foundation/cluster_startup.py [runs]

Starts the ``cluster`` fixture's Cluster (etcd + kube-apiserver +
kube-controller-manager, CRDs installed and Established) ``runs`` times and
prints each start-up and stop time, then the median.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

# The fixture's Cluster lives in tests/conftest.py.
import conftest


def main(runs: int) -> None:
    if missing := conftest.missing_binaries():
        sys.exit("missing: " + "; ".join(missing))
    starts = []
    for run in range(1, runs + 1):
        workdir = Path(tempfile.mkdtemp(prefix="reverie-cluster-"))
        cluster = conftest.Cluster(workdir)
        began = time.monotonic()
        cluster.start()
        started = time.monotonic() - began
        began = time.monotonic()
        cluster.stop()
        stopped = time.monotonic() - began
        shutil.rmtree(workdir, ignore_errors=True)
        starts.append(started)
        print(f"run {run}: start {started:.2f}s  stop {stopped:.2f}s", flush=True)
    print(f"median start {statistics.median(starts):.2f}s over {runs} runs")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
