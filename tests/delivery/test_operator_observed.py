"""The operator under the chart's identity, driven through real cycles, scraped
by a real Prometheus: every dashboard panel's query returns data.

One scenario for the module (it is the expensive part):

1. the chart is rendered for a single namespace and its ServiceAccount, Role
   and RoleBinding are applied to the test API server;
2. ``reverie operator`` (the Deployment's command and arguments) runs as a
   subprocess under that ServiceAccount's identity (its user name and groups),
   so every API call it makes is authorized by the chart's Role and nothing else;
3. Debian's Prometheus scrapes its ``/metrics`` every second;
4. the test plays the Job controller (tests/operator/jobsim.py): cycle 1 loses
   its first consolidation attempt (OOMKilled), retries, passes the gate and is
   promoted; cycle 2 fails the gate and is rejected; cycle 3 spends its retry
   budget and fails; then the lineage is rolled back to its base generation.

The tests then read the outcome: the cycles ended as scripted with no
authorization error in the operator's log, each dashboard query returns data
over the scenario's time range, and each alert expression evaluates.
(The operator's other identities are in test_operator_identity.py.)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dashboard_queries import concrete, targets
from delivery_engines import PrometheusServer, one, prometheus, render
from operator_under_chart import (
    DENIED,
    LINEAGE,
    RELEASE,
    apply,
    chart_identity,
    cycle_manifest,
    lineage_manifest,
    operator_process,
    service_account_kubeconfig,
)
from tests.operator.jobsim import JobSim

pytestmark = pytest.mark.cluster

SCRAPE = "1s"


@dataclass
class Scenario:
    namespace: str
    started: float
    ended: float
    operator_log: Path
    cycles: dict[str, Any]
    lineage: dict[str, Any]
    prometheus: PrometheusServer


def _drive(cluster: Any, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    sim = JobSim(cluster.api_client(), namespace)
    apply(cluster, namespace, lineage_manifest())
    apply(cluster, namespace, cycle_manifest("night-1"))
    first = sim.wait_for_job("night-1-consolidation-1")
    sim.fail(first, exit_code=137, container_reason="OOMKilled", reason="BackoffLimitExceeded")
    for job_name in ("night-1-consolidation-2", "night-1-dreaming-1", "night-1-evaluation-1"):
        job = sim.wait_for_job(job_name)
        sim.succeed(job, sim.result_for(job))
    cycles = {"night-1": sim.wait_for_phase("night-1", "Succeeded")}

    apply(cluster, namespace, cycle_manifest("night-2"))
    for job_name in ("night-2-consolidation-1", "night-2-dreaming-1"):
        job = sim.wait_for_job(job_name)
        sim.succeed(job, sim.result_for(job))
    job = sim.wait_for_job("night-2-evaluation-1")
    sim.succeed(job, sim.result_for(job, metrics={"knowledge_incorporation": 0.2, "retention": 0.8}))
    cycles["night-2"] = sim.wait_for_phase("night-2", "Rejected")

    apply(cluster, namespace, cycle_manifest("night-3"))
    for attempt in (1, 2):
        job = sim.wait_for_job(f"night-3-consolidation-{attempt}")
        sim.fail(job, exit_code=1, container_reason="Error", reason="BackoffLimitExceeded")
    cycles["night-3"] = sim.wait_for_phase("night-3", "Failed")

    cluster.kubectl(
        "patch",
        "modellineage",
        LINEAGE,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"rollbackTo": "gen-0"}}),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lineage = json.loads(cluster.kubectl("get", "modellineage", LINEAGE, "-n", namespace, "-o", "json").stdout)
        if (lineage.get("status") or {}).get("champion") == "gen-0":
            return cycles, lineage
        time.sleep(0.2)
    raise AssertionError(f"rollback to gen-0 not done: {json.dumps(lineage.get('status'))[:2000]}")


@pytest.fixture(scope="module")
def scenario(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    prometheus()  # skip (or fail in CI) before starting anything when it is missing
    workdir = tmp_path_factory.mktemp("observed")
    log = workdir / "operator.log"
    with (
        chart_identity(cluster) as (namespace, account, args),
        operator_process(args, kubeconfig=service_account_kubeconfig(cluster, namespace, account), log=log) as port,
    ):
        # The labels a ServiceMonitor's target would carry (job = the metrics Service).
        server = PrometheusServer(
            workdir,
            targets=[f"127.0.0.1:{port}"],
            scrape_interval=SCRAPE,
            job=f"{RELEASE}-metrics",
            labels={"namespace": namespace},
        )
        try:
            server.start()
            server.wait_until(lambda: server.api("query", query="up")["result"], what="first scrape", timeout=30)
            started = time.time()
            try:
                cycles, lineage = _drive(cluster, namespace)
                server.wait_until(
                    lambda: server.api("query", query=f'reverie_rollbacks_total{{namespace="{namespace}"}}')["result"],
                    what="the rollback in Prometheus",
                    timeout=30,
                )
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\noperator log (tail):\n{log.read_text(errors='replace')[-4000:]}"
                ) from None
            # A few more scrapes of the end state, for the rate windows.
            time.sleep(3)
            yield Scenario(
                namespace=namespace,
                started=started,
                ended=time.time(),
                operator_log=log,
                cycles=cycles,
                lineage=lineage,
                prometheus=server,
            )
        finally:
            server.stop()


def test_operator_runs_cycles_with_only_the_charts_permissions(scenario: Scenario) -> None:
    operator_log = scenario.operator_log.read_text(errors="replace")
    assert scenario.cycles["night-1"]["status"]["gate"]["outcome"] == "Passed"
    assert [r["jobName"] for r in scenario.cycles["night-1"]["status"]["records"]][:2] == [
        "night-1-consolidation-1",
        "night-1-consolidation-2",
    ]
    assert scenario.cycles["night-2"]["status"]["gate"]["outcome"] == "Failed"
    assert scenario.lineage["status"]["champion"] == "gen-0"
    assert not DENIED.search(operator_log), f"the operator hit an authorization error:\n{operator_log[-4000:]}"


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(v)) for series in result for _, v in series.get("values", []))


def test_every_dashboard_panel_returns_data(scenario: Scenario) -> None:
    span = max(10, int(scenario.ended - scenario.started) + 1)
    values = {"namespace": scenario.namespace, "lineage": ".*", "step": ".*", "controller": ".*", "datasource": ""}
    empty = []
    for uid, title, expr in targets():
        query = concrete(expr, values=values, rate_interval="5s", range_=f"{span}s")
        result = scenario.prometheus.api("query_range", query=query, start=scenario.started, end=scenario.ended, step=1)
        if not _has_data(result["result"]):
            empty.append(f"{uid} / {title}: {query}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


# Panels whose series only an operator error would create; the scenario has none,
# so they show their explicit zero (the `or ... * 0` branch) instead.
ONLY_ON_OPERATOR_ERRORS = {("reverie-operator", "Error ratio"), ("reverie-operator", "Reconcile errors")}


def test_panels_show_real_series_not_only_their_zero_fallback(scenario: Scenario) -> None:
    span = max(10, int(scenario.ended - scenario.started) + 1)
    values = {"namespace": scenario.namespace, "lineage": ".*", "step": ".*", "controller": ".*", "datasource": ""}
    fallback_only = []
    for uid, title, expr in targets():
        if " or " not in expr or (uid, title) in ONLY_ON_OPERATOR_ERRORS:
            continue
        query = concrete(expr.split(" or ")[0], values=values, rate_interval="5s", range_=f"{span}s")
        result = scenario.prometheus.api("query_range", query=query, start=scenario.started, end=scenario.ended, step=1)
        if not _has_data(result["result"]):
            fallback_only.append(f"{uid} / {title}: {query}")
    assert not fallback_only, "panels with nothing but their fallback:\n" + "\n".join(fallback_only)


def test_every_alert_expression_evaluates_on_live_data(scenario: Scenario) -> None:
    rule = one(render({"prometheusRule": {"enabled": True}}, namespace=scenario.namespace), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            scenario.prometheus.api("query", query=alert["expr"], time=scenario.ended)
    # The operator is up: the operator-down alert is quiet for this release, and
    # speaks for a release whose target Prometheus has never seen.
    down = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "ReverieOperatorDown")["expr"]
    assert scenario.prometheus.api("query", query=down, time=scenario.ended)["result"] == []
    elsewhere = down.replace(f'namespace="{scenario.namespace}"', 'namespace="nowhere"')
    assert scenario.prometheus.api("query", query=elsewhere, time=scenario.ended)["result"] != []
