"""The operator process: SleepCycle and ModelLineage handlers, /metrics and /healthz, in one Kopf run.

``reverie operator`` calls :func:`run`; ``kopf run -m reverie.controller.main``
works too (settings then come from REVERIE_* environment variables).
Importing this module registers every handler in Kopf's default registry.
"""

from __future__ import annotations

import contextlib
import logging

import kopf

from reverie.controller import handlers, health

# One process runs both controllers; the lineage handlers register on import.
with contextlib.suppress(ImportError):
    from reverie.controller import lineage_handlers  # noqa: F401


def run(
    namespace: str | None = None,
    *,
    metrics_port: int | None = 8080,
    standalone: bool = True,
    priority: int = 0,
    kubeconfig: str | None = None,
    resync_seconds: float | None = None,
    max_concurrent_reconciles: int | None = None,
    verbose: bool = False,
) -> None:
    """Run the operator until SIGINT/SIGTERM.

    ``namespace``: serve one namespace (None: the whole cluster).  ``standalone``:
    no Kopf peering (run one replica, Deployment strategy Recreate); with
    ``standalone=False`` replicas coordinate through Kopf peering by ``priority``.
    ``metrics_port``: port of /metrics and /healthz (None: off).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    health.PORT = metrics_port
    if kubeconfig:
        handlers.OPTIONS.kubeconfig = kubeconfig
    if resync_seconds is not None:
        handlers.OPTIONS.resync_seconds = resync_seconds
    if max_concurrent_reconciles is not None:
        handlers.OPTIONS.max_concurrent = max_concurrent_reconciles
    kopf.run(
        standalone=standalone,
        priority=priority,
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else (),
    )
