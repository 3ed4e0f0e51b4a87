"""The operator process: SleepCycle and ModelLineage handlers, /metrics and /healthz, in one Kopf run.

``reverie operator`` calls :func:`run`; ``kopf run -m reverie.controller.main``
works too (settings then come from REVERIE_* environment variables).
Importing this module registers every handler in Kopf's default registry.
"""

from __future__ import annotations

import logging

import kopf

# One process runs both controllers: importing cycle_handlers registers the SleepCycle
# handlers and imports (so registers) the ModelLineage handlers, which share its API client.
from reverie.controller import admission, cycle_handlers, health

# The admission handlers are always registered; whether they are served (--webhook-port)
# is decided at start-up (cycle_handlers.OPTIONS), so one import serves both kinds of run.
admission.register(kopf.get_default_registry())


def run(
    namespace: str | None = None,
    *,
    namespaces: list[str] | None = None,
    metrics_port: int | None = 8080,
    standalone: bool = True,
    priority: int = 0,
    kubeconfig: str | None = None,
    resync_seconds: float | None = None,
    max_concurrent_reconciles: int | None = None,
    verbose: bool = False,
    log_level: str | None = None,
    webhook_port: int | None = None,
    webhook_cert_dir: str | None = None,
) -> None:
    """Run the operator until SIGINT/SIGTERM.

    ``namespace``/``namespaces``: serve these namespaces (neither: the whole cluster).  ``standalone``:
    no Kopf peering (run one replica, Deployment strategy Recreate); with
    ``standalone=False`` replicas coordinate through Kopf peering by ``priority``.
    ``metrics_port``: port of /metrics and /healthz (None: off).
    ``webhook_port``: serve the validating admission webhook on this port (TLS from
    ``webhook_cert_dir``/tls.crt and tls.key); None: no webhook.
    """
    level = logging.DEBUG if verbose else getattr(logging, (log_level or "info").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    health.PORT = metrics_port
    if kubeconfig:
        cycle_handlers.OPTIONS.kubeconfig = kubeconfig
    if resync_seconds is not None:
        cycle_handlers.OPTIONS.resync_seconds = resync_seconds
    if max_concurrent_reconciles is not None:
        cycle_handlers.OPTIONS.max_concurrent = max_concurrent_reconciles
    if webhook_port is not None:
        cycle_handlers.OPTIONS.webhook_port, cycle_handlers.OPTIONS.webhook_cert_dir = webhook_port, webhook_cert_dir
        admission.server(port=webhook_port, cert_dir=webhook_cert_dir)  # a missing certificate fails here, clearly
    served = sorted({*(namespaces or ()), *([namespace] if namespace else [])})
    kopf.run(standalone=standalone, priority=priority, clusterwide=not served, namespaces=served)
