"""Kubernetes Events about our objects: one builder, one reporting component.

Every transition of a SleepCycle and every change of a ModelLineage (promoted,
rolled back, serving synced, schedule missed) is told as a core/v1 Event, so
``kubectl describe`` shows the story.  Posting is best effort: an Event is never
worth failing a reconcile or a promotion.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import Any

from reverie import GROUP
from reverie.controller.kube import EVENTS, ApiError, Kube, Obj

log = logging.getLogger(__name__)

# ``source.component`` (what ``kubectl describe`` shows as From) and the
# ``reportingComponent`` of events.k8s.io, which wants a ``<domain>/<name>``.
SOURCE_COMPONENT = "reverie-operator"
REPORTING_COMPONENT = f"{GROUP}/operator"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_body(obj: Obj, *, reason: str, message: str, type: str = "Normal", now: datetime) -> dict[str, Any]:
    """The core/v1 Event about ``obj`` (reason and message cut to the API server's limits)."""
    meta = obj.get("metadata", {})
    stamp = _iso(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'reverie')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason[:128],
        "message": message[:1024],
        "type": type,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": SOURCE_COMPONENT},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
    }


async def emit_event(
    kube: Kube,
    obj: Obj,
    *,
    reason: str,
    message: str,
    type: str = "Normal",
    now: datetime | None = None,
) -> None:
    """Post an Event about ``obj``; a failure is logged, never raised."""
    body = event_body(obj, reason=reason, message=message, type=type, now=now or datetime.now(UTC))
    try:
        await kube.create(EVENTS, body["metadata"]["namespace"], body)
    except ApiError as exc:
        log.warning("could not post event %s on %s: %s", reason, body["involvedObject"]["name"], exc)
