"""The admission webhook: the pure checks, then the real kube-apiserver calling the
operator's Kopf webhook server over TLS (a CA made here) and refusing what the
schema cannot judge; with the operator down and failurePolicy Ignore, creating
still works."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.k8s_cluster import CertificateAuthority, free_port
from tests.operator.conftest import RunOperator, cycle, lineage, wait
from tests.operator.jobsim import JobSim

from reverie.api.lineage import Generation, GenerationState, ModelLineage
from reverie.api.sleepcycle import SleepCycleSpec
from reverie.controller.admission import check_cycle, check_lineage
from reverie.core import lineage as rules


# --- the checks ---------------------------------------------------------------------------------
def _lineage(**spec: Any) -> ModelLineage:
    return ModelLineage.model_validate(lineage(**spec) | {"metadata": {"name": "lin", "namespace": "ns"}})


def _spec(**kw: Any) -> SleepCycleSpec:
    return SleepCycleSpec.model_validate(cycle(**kw)["spec"])


def test_a_cycle_naming_a_missing_lineage_is_refused_with_the_field_and_the_fix() -> None:
    (problem,) = check_cycle(_spec(), namespace="ns", lineage=None)
    assert problem.startswith("spec.lineageRef:") and "does not exist in namespace ns" in problem
    assert "create the ModelLineage first" in problem


def test_a_cycle_from_an_unknown_base_generation_is_refused_with_the_known_ones() -> None:
    lin = _lineage()
    lin.status = rules.ensure_base(lin.status, lin.spec.base_model, now=rules_now())
    (problem,) = check_cycle(_spec(baseGeneration="gen-7"), namespace="ns", lineage=lin)
    assert problem.startswith("spec.baseGeneration:") and "'gen-7'" in problem and "gen-0" in problem
    assert check_cycle(_spec(baseGeneration="gen-0"), namespace="ns", lineage=lin) == []
    assert check_cycle(_spec(), namespace="ns", lineage=lin) == []


def rules_now() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 11, 25, tzinfo=UTC)


@pytest.mark.parametrize(("target", "ok"), [("gen-0", True), ("gen-1", True), ("gen-2", False), ("gen-99", False)])
def test_rollback_to_must_name_a_generation_that_was_champion(target: str, ok: bool) -> None:
    lin = _lineage(rollbackTo=target)
    lin.status.generations = [
        Generation(name="gen-0", uri="u0", state=GenerationState.RETIRED),
        Generation(name="gen-1", parent="gen-0", uri="u1", state=GenerationState.CHAMPION),
        Generation(name="gen-2", parent="gen-1", uri="u2", state=GenerationState.REJECTED),
    ]
    lin.status.champion = "gen-1"
    problems = check_lineage(lin, old=None)
    assert (problems == []) is ok
    if not ok:
        assert "spec.rollbackTo" in problems[0] and "remove spec.rollbackTo" in problems[0]


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"cron": "61 * * * *"}, "spec.schedule.cron"),
        ({"cron": "0 3 * * *", "timeZone": "Mars/Olympus"}, "spec.schedule.timeZone"),
    ],
)
def test_a_schedule_that_does_not_parse_is_refused(schedule: dict[str, Any], field: str) -> None:
    lin = _lineage(schedule={**schedule, "template": cycle()["spec"]})
    (problem,) = check_lineage(lin, old=None)
    assert problem.startswith(field) and "e.g." in problem


def test_an_update_is_judged_only_on_what_it_changes() -> None:
    # A lineage admitted while the webhook was down keeps working (Kopf's annotations, finalizers).
    broken = _lineage(rollbackTo="gen-99", schedule={"cron": "61 * * * *", "template": cycle()["spec"]})
    assert check_lineage(broken, old=broken) == []
    assert check_lineage(broken, old=_lineage()) != []


# --- the real API server calls the webhook ----------------------------------------------------------
WEBHOOK = "reverie-test-webhook"


def _webhook_config(name: str, *, namespace: str, port: int, ca: Path, failure_policy: str) -> dict[str, Any]:
    bundle = base64.b64encode(ca.read_bytes()).decode()

    def one(kind: str) -> dict[str, Any]:
        return {
            "name": f"{kind}s.validate.reverie.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure_policy,
            "timeoutSeconds": 5,
            "matchPolicy": "Equivalent",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate-{kind}", "caBundle": bundle},
            "rules": [
                {
                    "apiGroups": ["reverie.dev"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [f"{kind}s"],
                    "scope": "Namespaced",
                }
            ],
            # Only this test's namespace: the control plane is shared by the whole session.
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [one("sleepcycle"), one("modellineage")],
    }


@pytest.fixture
def webhook(cluster: Any, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A CA and serving certificate made here, the operator's options pointing at them, and the
    webhook configuration (failurePolicy Fail) registered with the API server for ``namespace``."""
    from reverie.controller import cycle_handlers

    ca = CertificateAuthority(tmp_path)
    cert, key = ca.issue("webhook", common_name="reverie-webhook", server_names=("127.0.0.1",))
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "tls.crt").write_bytes(cert.read_bytes())
    (certs / "tls.key").write_bytes(key.read_bytes())
    port = free_port()
    monkeypatch.setattr(cycle_handlers.OPTIONS, "webhook_port", port)
    monkeypatch.setattr(cycle_handlers.OPTIONS, "webhook_cert_dir", str(certs))
    monkeypatch.setattr(cycle_handlers.OPTIONS, "webhook_addr", "127.0.0.1")
    name = f"{WEBHOOK}-{namespace}"
    config = _webhook_config(name, namespace=namespace, port=port, ca=ca.cert, failure_policy="Fail")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
    try:
        yield {"name": name, "config": config}
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found", check=False)


def _try(cluster: Any, namespace: str, body: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


def _serving(cluster: Any, namespace: str) -> bool:
    # The first request after start-up can race Kopf's resource scan (404) or the API server
    # picking up the configuration: wait until a bad object is refused by *our* message.
    done = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(cycle("probe", lineage_ref="missing")),
        check=False,
    )
    return done.returncode != 0 and "does not exist in namespace" in done.stderr


BAD = {
    "missing-lineage": (cycle("c-missing", lineage_ref="nowhere"), "spec.lineageRef", "create the ModelLineage first"),
    "unknown-base": (cycle("c-base", baseGeneration="gen-7"), "spec.baseGeneration", "omit baseGeneration"),
    "rollback-gen-99": (lineage(rollbackTo="gen-99"), "spec.rollbackTo", "remove spec.rollbackTo"),
    "cron-61": (lineage(schedule={"cron": "61 * * * *", "template": cycle()["spec"]}), "spec.schedule.cron", "e.g."),
    "time-zone-mars": (
        lineage(schedule={"cron": "0 3 * * *", "timeZone": "Mars/Olympus", "template": cycle()["spec"]}),
        "spec.schedule.timeZone",
        "e.g.",
    ),
}


def test_the_api_server_refuses_what_the_webhook_finds_wrong(
    cluster: Any, namespace: str, webhook: dict[str, Any], run_operator: RunOperator, sim: JobSim
) -> None:
    with run_operator():
        wait(lambda: _serving(cluster, namespace), what="the webhook refusing a bad cycle")
        assert _try(cluster, namespace, lineage()).returncode == 0
        for case, (bad, field, fix) in BAD.items():
            done = _try(cluster, namespace, bad)
            assert done.returncode != 0, f"{case} was admitted"
            assert "denied the request" in done.stderr and field in done.stderr and fix in done.stderr, (
                case,
                done.stderr,
            )
        # What is right still goes through, and the operator's own writes (Kopf's annotations,
        # status) are never refused: the cycle gets its first Job.
        good = _try(cluster, namespace, cycle("fine"))
        assert good.returncode == 0, good.stderr
        sim.wait_for_job("fine-consolidation-1")


def test_with_the_operator_down_failure_policy_ignore_still_admits(
    cluster: Any, namespace: str, webhook: dict[str, Any]
) -> None:
    # No operator runs: the webhook's port is closed. With failurePolicy Fail nothing is admitted...
    def refused() -> bool:
        done = _try(cluster, namespace, cycle("strict"))
        return done.returncode != 0 and "failed calling webhook" in done.stderr

    wait(refused, what="creation refused while the webhook is down (failurePolicy Fail)")
    relaxed = json.loads(json.dumps(webhook["config"]))
    for hook in relaxed["webhooks"]:
        hook["failurePolicy"] = "Ignore"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(relaxed))

    # ...with Ignore (the chart's default) creating works, and the operator's conditions report later.
    def admitted() -> bool:
        return bool(_try(cluster, namespace, cycle("relaxed", lineage_ref="nowhere")).returncode == 0)

    wait(admitted, what="creation with failurePolicy Ignore while the webhook is down")
