"""The operator's HTTP endpoint: Prometheus ``/metrics`` and the ``/healthz`` liveness probe.

Kopf has no metrics endpoint (kopf#289), so the operator serves one itself, on
the same small aiohttp server as the liveness probe (one port for the chart's
Service, ServiceMonitor and probe).  ``/healthz`` is not a constant 200: it
fails when the SleepCycle resync loop has stopped ticking, the one symptom of a
wedged operator that Kopf's own watches would not reveal.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reverie.controller.metrics import REGISTRY
from reverie.controller.options import port_from_env

log = logging.getLogger(__name__)

# Port of /metrics and /healthz; None disables the server (main.run sets it, or REVERIE_METRICS_PORT).
PORT: int | None = port_from_env("REVERIE_METRICS_PORT")
HOST = os.environ.get("REVERIE_METRICS_HOST", "0.0.0.0")


def make_app(*, healthy: Callable[[], bool]) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = healthy()
        return web.json_response({"status": "ok" if ok else "stalled"}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def start(*, port: int, host: str = HOST, healthy: Callable[[], bool]) -> web.AppRunner:
    """Serve /metrics and /healthz until the returned runner is cleaned up."""
    runner = web.AppRunner(make_app(healthy=healthy), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("serving /metrics and /healthz on %s:%d", host, port)
    return runner


_runner: web.AppRunner | None = None


def _reconciler_healthy() -> bool:
    from reverie.controller import cycle_handlers

    try:
        return cycle_handlers.reconciler().healthy()
    except RuntimeError:
        return False


@kopf.on.startup(id="health-server")
async def _start(**_: Any) -> None:
    global _runner
    if PORT is not None:
        _runner = await start(port=PORT, healthy=_reconciler_healthy)


@kopf.on.cleanup(id="health-server")
async def _stop(**_: Any) -> None:
    global _runner
    if _runner is not None:
        with contextlib.suppress(Exception):
            await _runner.cleanup()
        _runner = None
