"""``reverie.controller.main.run``: the operator process as ``reverie operator`` starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
from tests.operator.conftest import apply, cycle, lineage, wait
from tests.operator.jobsim import JobSim
from tests.operator.test_cycle_features import _get

pytestmark = pytest.mark.cluster


def test_run_serves_health_and_metrics_and_reconciles_until_sigterm(cluster: Any, namespace: str, sim: JobSim) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        f"from reverie.controller.main import run; "
        f"run(namespace={namespace!r}, metrics_port={port}, kubeconfig={str(cluster.kubeconfig)!r}, resync_seconds=2)"
    )
    env = {**os.environ, "REVERIE_METRICS_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait(lambda: _get(f"http://127.0.0.1:{port}/healthz"), what="/healthz") == '{"status": "ok"}'
        apply(cluster, namespace, lineage())
        apply(cluster, namespace, cycle())
        sim.wait_for_job("c1-consolidation-1")
        attempt_line = 'reverie_phase_attempts_total{step="consolidation"} 1.0'
        phase_line = (
            f'reverie_cycle_phase{{cycle="c1",lineage="lin",namespace="{namespace}",phase="Consolidating"}} 1.0'
        )
        # The attempt is counted when its Job is created; the phase gauge follows with the status write after it.
        wait(
            lambda: (t := _get(f"http://127.0.0.1:{port}/metrics")) and attempt_line in t and phase_line in t,
            what=f"{attempt_line} and {phase_line}",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-3000:]
