"""The operator's knobs: ``reverie operator`` flags, or REVERIE_* environment variables under ``kopf run``."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Options:
    """Operator knobs (``reverie operator`` flags; REVERIE_* env vars for ``kopf run``)."""

    resync_seconds: float = float(os.environ.get("REVERIE_RESYNC_SECONDS", "30"))
    # Reconciles are I/O-bound (a handful of sequential API calls each): many may wait at once.
    max_concurrent: int = int(os.environ.get("REVERIE_MAX_CONCURRENT_RECONCILES", "64"))
    kubeconfig: str | None = os.environ.get("REVERIE_KUBECONFIG") or os.environ.get("KUBECONFIG") or None
    # The admission webhook (controller/admission.py): off without a port.
    webhook_port: int | None = (
        int(os.environ["REVERIE_WEBHOOK_PORT"]) if os.environ.get("REVERIE_WEBHOOK_PORT") else None
    )
    webhook_cert_dir: str | None = os.environ.get("REVERIE_WEBHOOK_CERT_DIR") or None
    webhook_addr: str | None = os.environ.get("REVERIE_WEBHOOK_ADDR") or None  # default: every interface
