"""Kopf handlers of SleepCycle: they only trigger the reconciler.

Kopf's bookkeeping lives in annotations under ``kopf.reverie.dev``; our
periodic resync is a single operator-wide loop
(:meth:`~reverie.controller.cycle_reconciler.Reconciler.resync_forever`) rather
than per-object Kopf timers, which would put a finalizer on every cycle and
block its deletion whenever the operator is down.  The handlers register into
Kopf's default registry on import; the ModelLineage handlers
(:mod:`reverie.controller.lineage_handlers`) share this process's API client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from reverie import GROUP, KOPF_PREFIX, VERSION
from reverie.api.sleepcycle import Phase
from reverie.controller import admission, lineage_handlers
from reverie.controller.cycle_reconciler import Reconciler, Seen
from reverie.controller.jobs import LABEL_CYCLE
from reverie.controller.kube import Kube, authorization_header, load_configuration
from reverie.controller.options import Options

# --- Kopf wiring ------------------------------------------------------------------------------
_reconciler: Reconciler | None = None
_resync: asyncio.Task[None] | None = None
OPTIONS = Options()


def reconciler() -> Reconciler:
    if _reconciler is None:
        raise RuntimeError("the SleepCycle reconciler starts with the operator (on.startup)")
    return _reconciler


@kopf.on.startup()
async def _configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global _reconciler, _resync
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
    # Our own Events say what happened; Kopf's per-handler "Handler succeeded" posts are noise.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # Kopf waits this long for more events of one object before handling them; our
    # reconciles coalesce on their own, so a short window only adds latency.
    settings.batching.batch_window = 0.01
    settings.admission.server = admission.server(
        port=OPTIONS.webhook_port,
        cert_dir=OPTIONS.webhook_cert_dir,
        addr=OPTIONS.webhook_addr,
    )
    kube = Kube.from_kubeconfig(OPTIONS.kubeconfig)
    _reconciler = Reconciler(kube=kube, options=OPTIONS)
    # Every handler's memo is a copy of this one: the admission handlers find the client there.
    setattr(memo, admission.MEMO_KUBE, kube)
    _resync = asyncio.get_running_loop().create_task(_reconciler.resync_forever(), name="sleepcycle resync")
    lineage_handlers.use_kube(kube)


@kopf.on.login(id="reverie-login")
def _login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf's credentials: the same kubeconfig / in-cluster identity as our own client."""
    cfg = load_configuration(OPTIONS.kubeconfig)
    token = authorization_header(cfg)
    scheme, _sep, value = token.partition(" ") if token else (None, "", None)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        scheme=scheme or None,
        token=value or None,
    )


@kopf.on.cleanup()
async def _shutdown(**_: Any) -> None:
    global _reconciler, _resync
    if _resync is not None:
        _resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _resync
        _resync = None
    if _reconciler is not None:
        _reconciler.queue.cancel_all()
        await _reconciler.kube.close()
        _reconciler = None


@kopf.on.resume(GROUP, VERSION, "sleepcycles", id="cycle-resume")
@kopf.on.create(GROUP, VERSION, "sleepcycles", id="cycle-create")
@kopf.on.update(GROUP, VERSION, "sleepcycles", id="cycle-update")
async def _cycle_changed(*, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # SleepCycle is namespaced
    reconciler().trigger(namespace, name)


@kopf.on.event(GROUP, VERSION, "sleepcycles")
async def _cycle_event(*, type: str, event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    rec = reconciler()
    if type == "DELETED":
        rec.forget(namespace, name)
        return
    seen = rec.seen.get((namespace, name))
    body: dict[str, Any] = dict(event.get("object") or {})
    if seen is not None and seen.written_rv == (body.get("metadata") or {}).get("resourceVersion"):
        return  # the echo of our own status write
    if seen is None:
        # Unknown to this process (e.g. just restarted): one full pass, even for a finished
        # cycle, so a lineage it still holds gets released.
        rec.seen[(namespace, name)] = Seen(lineage=(body.get("spec") or {}).get("lineageRef", ""))
    rec.trigger(namespace, name)


@kopf.on.event(GROUP, VERSION, "modellineages")
async def _lineage_event(*, name: str, namespace: str | None, **_: Any) -> None:
    """A lineage appeared or changed (e.g. released): wake the cycles waiting for it."""
    assert namespace is not None
    rec = reconciler()
    for (ns, cycle_name), seen in list(rec.seen.items()):
        if ns == namespace and seen.lineage == name and seen.phase in (None, Phase.PENDING.value):
            rec.trigger(ns, cycle_name)


def _job_matters(type_: str | None, body: kopf.Body) -> bool:
    """Only a finished or vanished Job can change a plan; a Job we just created, or one whose
    pods merely progress (the Job controller updates status several times per attempt), cannot."""
    if type_ == "DELETED":
        return True
    if type_ is None or type_ == "ADDED":
        # ADDED after a restart is covered by the cycles' resume; ADDED otherwise is our own create.
        return False
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_CYCLE: kopf.PRESENT})
async def _job_event(
    *, type: str | None, body: kopf.Body, labels: kopf.Labels, namespace: str | None, **_: Any
) -> None:
    assert namespace is not None
    if _job_matters(type, body):
        reconciler().trigger(namespace, labels[LABEL_CYCLE])
