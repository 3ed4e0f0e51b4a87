"""The cluster verbs: ``operator``, ``status``, ``approve``/``reject``, ``rollback``, ``logs``, ``crds``.

They drive SleepCycles and ModelLineages through the API server as kubectl
would (kubeconfig as kubectl finds it, or ``--kubeconfig``).  The Kubernetes
client is imported lazily, so the local verbs work without the ``operator`` extra.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from reverie import APPROVAL_ANNOTATION, GROUP, VERSION

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

from reverie.cli.app import KubeconfigOpt, NamespaceOpt, app, console, err, fail, show


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Namespace to serve (repeatable); default: all.")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Serve every namespace (the default without --namespace).")
    ] = False,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Port of /metrics and /healthz (0: off).")] = 8080,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    kubeconfig: KubeconfigOpt = None,
    peering: Annotated[
        bool,
        typer.Option("--peering", help="Coordinate replicas through Kopf peering (default: standalone, one replica)."),
    ] = False,
    priority: Annotated[int, typer.Option("--priority", help="Kopf peering priority of this replica.")] = 0,
    webhook_port: Annotated[
        int | None, typer.Option("--webhook-port", help="Port of the admission webhook, when enabled.")
    ] = None,
    webhook_cert_dir: Annotated[
        Path | None, typer.Option("--webhook-cert-dir", help="Folder with the webhook's tls.crt and tls.key.")
    ] = None,
) -> None:
    """Run the Kopf operator (the Helm chart's Deployment runs this)."""
    from reverie.controller import main as controller_main

    namespaces = [] if all_namespaces else list(namespace or [])
    controller_main.run(
        namespaces[0] if len(namespaces) == 1 else None,
        namespaces=namespaces,
        metrics_port=metrics_port or None,
        standalone=not peering,
        priority=priority,
        kubeconfig=str(kubeconfig) if kubeconfig else None,
        verbose=log_level.lower() == "debug",
        log_level=log_level,
        webhook_port=webhook_port,
        webhook_cert_dir=str(webhook_cert_dir) if webhook_cert_dir else None,
    )


class ClusterClient:
    """The few API calls the cluster verbs make (kubernetes client, loaded lazily).

    Why not the operator's :class:`reverie.controller.kube.Kube`: that one is an
    ``aiohttp`` client that lives inside Kopf's event loop (request counting,
    conflict retries on shared status); a CLI verb makes one or two blocking
    calls and exits, so it uses the official client's synchronous API and the
    same kubeconfig loading, and starts no event loop.
    """

    def __init__(self, kubeconfig: Path | None, namespace: str | None) -> None:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            if kubeconfig is not None:
                config.load_kube_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
            else:
                try:
                    config.load_kube_config()  # type: ignore[no-untyped-call]
                except (ConfigException, OSError):
                    config.load_incluster_config()  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as exc:
            raise fail(f"cannot load a kubeconfig ({exc}); pass --kubeconfig or set KUBECONFIG") from exc
        self.client = client
        self.api: ApiClient = client.ApiClient()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.namespace = namespace or self._context_namespace(kubeconfig)

    @staticmethod
    def _context_namespace(kubeconfig: Path | None) -> str:
        from kubernetes import config

        try:
            _, active = config.list_kube_config_contexts(config_file=str(kubeconfig) if kubeconfig else None)  # type: ignore[no-untyped-call]
            return str(active.get("context", {}).get("namespace") or "default")
        except Exception:
            return "default"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise fail(f"{what}: not found in namespace {self.namespace}") from exc
            if exc.status == 403:
                raise fail(
                    f"{what}: forbidden ({_api_message(exc)}); ask for the reverie-edit/reverie-view role"
                ) from exc
            raise fail(f"{what}: {exc.status} {_api_message(exc)}") from exc
        except HTTPError as exc:
            raise fail(f"{what}: cannot reach the API server ({exc})") from exc

    def get(self, plural: str, name: str) -> dict[str, Any]:
        kind = "SleepCycle" if plural == "sleepcycles" else "ModelLineage"
        return self._call(  # type: ignore[no-any-return]
            f"{kind} {name}", self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, plural, name
        )

    def get_or_none(self, plural: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)  # type: ignore[return-value]
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, plural: str, *, all_namespaces: bool = False) -> list[dict[str, Any]]:
        if all_namespaces:
            out = self._call(plural, self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
        else:
            out = self._call(plural, self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, plural)
        return list(out.get("items", []))

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        kind = "SleepCycle" if plural == "sleepcycles" else "ModelLineage"
        return self._call(  # type: ignore[no-any-return]
            f"{kind} {name}",
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            plural,
            name,
            body,
        )


def cluster_lineage(name: str, namespace: str | None, kubeconfig: Path | None) -> Any:
    """A ModelLineage from the cluster as the API model (status keys of other writers ignored)."""
    from reverie.api.lineage import ModelLineage, ModelLineageStatus

    obj = ClusterClient(kubeconfig, namespace).get("modellineages", name)
    known = {f.alias or n for n, f in ModelLineageStatus.model_fields.items()}
    status = {k: v for k, v in (obj.get("status") or {}).items() if k in known}
    return ModelLineage.model_validate({**obj, "status": status})


def _api_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", exc.reason))
    except Exception:
        return str(exc.reason)


def _age(stamp: str | None) -> str:
    if not stamp:
        return "–"
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return "–"
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


_RESULT_MARK = {"Succeeded": "✓", "Failed": "✗", "Running": "▶", "Pending": "…"}


def step_attempts(records: list[dict[str, Any]]) -> str:
    """``consolidation ✓1  dreaming ✗1 ▶2`` — every attempt of every step, in order."""
    parts: dict[str, list[str]] = {}
    for rec in records:
        parts.setdefault(rec.get("step", "?"), []).append(
            f"{_RESULT_MARK.get(rec.get('result', ''), '?')}{rec.get('attempt', '?')}"
        )
    return "  ".join(f"{step} {' '.join(marks)}" for step, marks in parts.items()) or "–"


@app.command()
def status(
    cycle: Annotated[
        str | None, typer.Argument(help="A SleepCycle to show in detail (default: list them all).")
    ] = None,
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List cycles of every namespace.")
    ] = False,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Sleep cycles on the cluster: phase, step attempts, gate, generation."""
    kube = ClusterClient(kubeconfig, namespace)
    if cycle is None:
        items = kube.list("sleepcycles", all_namespaces=all_namespaces)
        problems = status_problems(items, kube.list("modellineages", all_namespaces=all_namespaces))
        if not items:
            where = "any namespace" if all_namespaces else f"namespace {kube.namespace}"
            console.print(f"No SleepCycles in {where}.")
            _print_problems(problems)
            return
        table = Table(box=None, header_style="bold")
        if all_namespaces:
            table.add_column("NAMESPACE")
        for column in ("NAME", "LINEAGE", "PHASE", "STEPS", "GATE", "GENERATION", "AGE"):
            table.add_column(column)
        for obj in sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
            st = obj.get("status") or {}
            row = [
                obj["metadata"]["name"],
                obj.get("spec", {}).get("lineageRef", "–"),
                st.get("phase", "Pending"),
                step_attempts(st.get("records", [])),
                (st.get("gate") or {}).get("outcome", "–"),
                st.get("generation") or "–",
                _age(obj["metadata"].get("creationTimestamp")),
            ]
            table.add_row(*([obj["metadata"].get("namespace", "")] if all_namespaces else []), *row)
        show(table)
        _print_problems(problems)
        return
    obj = kube.get("sleepcycles", cycle)
    st = obj.get("status") or {}
    lineage_obj = kube.get_or_none("modellineages", obj["spec"].get("lineageRef", ""))
    _print_problems(status_problems([obj], [lineage_obj] if lineage_obj else []))
    console.print(f"[bold]{cycle}[/bold] (lineage {obj['spec'].get('lineageRef')}, namespace {kube.namespace})")
    console.print(f"phase:      {st.get('phase', 'Pending')}")
    console.print(f"message:    {st.get('message', '')}")
    console.print(f"base:       {st.get('baseGeneration') or '–'}    generation: {st.get('generation') or '–'}")
    approval = obj["metadata"].get("annotations", {}).get(APPROVAL_ANNOTATION)
    if approval:
        console.print(f"approval:   {approval}")
    records = st.get("records", [])
    if records:
        table = Table(title="step attempts", box=None, header_style="bold", title_justify="left")
        for column in ("STEP", "ATTEMPT", "JOB", "RESULT", "REASON", "MESSAGE"):
            table.add_column(column)
        for rec in records:
            table.add_row(
                rec.get("step", ""),
                str(rec.get("attempt", "")),
                rec.get("jobName", ""),
                rec.get("result", ""),
                rec.get("reason", ""),
                (rec.get("message") or "")[:80],
            )
        show(table)
    gate = st.get("gate")
    if gate:
        table = Table(title=f"gate: {gate.get('outcome')}", box=None, header_style="bold", title_justify="left")
        for column in ("RULE", "VERDICT", "REASON"):
            table.add_column(column)
        for verdict in gate.get("rules", []):
            table.add_row(verdict.get("rule", ""), verdict.get("verdict", ""), verdict.get("reason", ""))
        show(table)
    conditions = st.get("conditions", [])
    if conditions:
        table = Table(title="conditions", box=None, header_style="bold", title_justify="left")
        for column in ("TYPE", "STATUS", "REASON", "MESSAGE"):
            table.add_column(column)
        for cond in conditions:
            table.add_row(
                cond.get("type", ""), cond.get("status", ""), cond.get("reason", ""), (cond.get("message") or "")[:80]
            )
        show(table)


def status_problems(cycles: list[dict[str, Any]], lineages: list[dict[str, Any]]) -> list[str]:
    """What a person must fix: cycles waiting on a problem, lineages that are not Ready (with the reason)."""
    from reverie.core.planner import WAITING_PROBLEMS

    out = []
    for kind, objects in (("sleepcycle", cycles), ("modellineage", lineages)):
        for obj in objects:
            ready = next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == "Ready"), None)
            if (
                ready is None
                or ready.get("status") != "False"
                or (kind == "sleepcycle" and ready.get("reason") not in WAITING_PROBLEMS)
            ):
                continue
            out.append(f"{kind}/{obj['metadata']['name']}: {ready.get('reason')}: {ready.get('message', '')}")
    return out


def _print_problems(problems: list[str]) -> None:
    for line in problems:
        console.print(f"[yellow]problem:[/yellow] {line}", soft_wrap=True)


def _annotate_approval(cycle: str, value: str, namespace: str | None, kubeconfig: Path | None) -> None:
    kube = ClusterClient(kubeconfig, namespace)
    obj = kube.get("sleepcycles", cycle)
    phase = (obj.get("status") or {}).get("phase", "Pending")
    kube.patch("sleepcycles", cycle, {"metadata": {"annotations": {APPROVAL_ANNOTATION: value}}})
    console.print(f"sleepcycle/{cycle} annotated {APPROVAL_ANNOTATION}={value}")
    if phase != "AwaitingApproval":
        err.print(
            f"[yellow]note:[/yellow] {cycle} is {phase}, not AwaitingApproval; the answer counts if the cycle asks for approval later"
        )


@app.command()
def approve(
    cycle: Annotated[str, typer.Argument(help="The SleepCycle waiting in AwaitingApproval.")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Approve promotion of a cycle's candidate (writes the approval annotation)."""
    _annotate_approval(cycle, "approved", namespace, kubeconfig)


@app.command()
def reject(
    cycle: Annotated[str, typer.Argument(help="The SleepCycle waiting in AwaitingApproval.")],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Reject a cycle's candidate (writes the approval annotation)."""
    _annotate_approval(cycle, "rejected", namespace, kubeconfig)


@app.command()
def rollback(
    lineage: Annotated[str, typer.Argument(help="The ModelLineage.")],
    generation: Annotated[
        str, typer.Argument(help="The generation to make champion again (e.g. gen-1); 'none' removes the pin.")
    ],
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Pin an earlier generation as champion (patches spec.rollbackTo)."""
    kube = ClusterClient(kubeconfig, namespace)
    obj = kube.get("modellineages", lineage)
    if generation == "none":
        kube.patch("modellineages", lineage, {"spec": {"rollbackTo": None}})
        console.print(f"modellineage/{lineage}: spec.rollbackTo removed; promotion resumes")
        return
    gens = (obj.get("status") or {}).get("generations", [])
    known = {g.get("name"): g.get("state") for g in gens}
    if generation not in known:
        names = ", ".join(f"{n} ({s})" for n, s in known.items()) or "none"
        raise fail(f"lineage {lineage} has no generation {generation!r}; known: {names}")
    if known[generation] not in ("Champion", "Retired"):
        raise fail(
            f"{generation} is {known[generation]}: only a generation that was champion (Retired) can be restored"
        )
    kube.patch("modellineages", lineage, {"spec": {"rollbackTo": generation}})
    console.print(
        f"modellineage/{lineage}: spec.rollbackTo={generation} (the operator makes it champion; "
        f"`reverie rollback {lineage} none` resumes normal promotion)"
    )


@app.command()
def logs(
    cycle: Annotated[str, typer.Argument(help="The SleepCycle.")],
    phase: Annotated[
        str | None, typer.Option("--phase", help="consolidation, dreaming or evaluation (default: the latest attempt).")
    ] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="Attempt number (default: the latest of that step).")
    ] = None,
    tail: Annotated[int | None, typer.Option("--tail", help="Only the last N lines of each pod.")] = None,
    namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Logs of the pods of a cycle's phase Job."""
    kube = ClusterClient(kubeconfig, namespace)
    obj = kube.get("sleepcycles", cycle)
    records = (obj.get("status") or {}).get("records", [])
    if phase is not None:
        if phase not in ("consolidation", "dreaming", "evaluation"):
            raise fail(f"--phase must be consolidation, dreaming or evaluation, not {phase!r}")
        records = [r for r in records if r.get("step") == phase]
    if attempt is not None:
        records = [r for r in records if r.get("attempt") == attempt]
    if not records:
        what = f"{phase} " if phase else ""
        raise fail(f"{cycle} has no {what}attempt yet (phase {(obj.get('status') or {}).get('phase', 'Pending')})")
    job = records[-1]["jobName"]
    pods = kube._call(
        f"pods of Job {job}",
        kube.core.list_namespaced_pod,
        kube.namespace,
        label_selector=f"job-name={job}",
    ).items
    if not pods:
        raise fail(f"Job {job} has no pods in namespace {kube.namespace} (not scheduled yet, or already cleaned up)")
    from kubernetes.client.exceptions import ApiException

    shown = 0
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        name = pod.metadata.name
        started = any(
            (s.state and (s.state.running or s.state.terminated)) for s in (pod.status.container_statuses or [])
        )
        if not started:
            err.print(
                f"pod {name} ({pod.status.phase or 'Pending'}): no container has started yet, so there are no logs"
            )
            continue
        try:
            text = kube.core.read_namespaced_pod_log(name, kube.namespace, tail_lines=tail)
        except ApiException as exc:
            err.print(f"pod {name}: logs unavailable ({exc.status} {_api_message(exc)})")
            continue
        console.rule(f"{name} ({job})")
        console.print(text, end="", markup=False)
        shown += 1
    if shown == 0:
        raise typer.Exit(1)


@app.command()
def crds(
    apply: Annotated[bool, typer.Option("--apply", help="Create or update the CRDs on the cluster.")] = False,
    write: Annotated[Path | None, typer.Option("--write", help="Write the CRD files into this directory.")] = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Print the CRDs (default), write them to a directory, or apply them to the cluster."""
    from reverie.api import crdgen

    if write is not None:
        for path in crdgen.write(write):
            console.print(f"wrote {path}")
        if not apply:
            return
    if not apply:
        sys.stdout.write("---\n".join(crdgen.rendered_files().values()))
        return
    kube = ClusterClient(kubeconfig, None)
    ext = kube.client.ApiextensionsV1Api(kube.api)
    from kubernetes.client.exceptions import ApiException

    for crd in crdgen.render_crds():
        name = crd["metadata"]["name"]
        try:
            existing = ext.read_custom_resource_definition(name)
        except ApiException as exc:
            if exc.status != 404:
                raise fail(f"reading CRD {name}: {exc.status} {_api_message(exc)}") from exc
            kube._call(f"CRD {name}", ext.create_custom_resource_definition, crd)
            console.print(f"customresourcedefinition/{name} created")
            continue
        crd["metadata"]["resourceVersion"] = existing.metadata.resource_version
        kube._call(f"CRD {name}", ext.replace_custom_resource_definition, name, crd)
        console.print(f"customresourcedefinition/{name} configured")
