"""The operator's knobs: ``reverie operator`` flags, or REVERIE_* environment variables under ``kopf run``."""

from __future__ import annotations

import os
from dataclasses import dataclass


def port_from_env(name: str) -> int | None:
    """The port in env var ``name``, or None when unset.

    A value like ``tcp://10.0.0.48:443`` is not ours: the kubelet sets
    ``<SERVICE>_PORT`` for every Service of the namespace (Docker links), and
    a release named ``reverie`` has Services ``reverie-webhook`` and
    ``reverie-metrics``.  The chart turns those links off; this ignores them
    anywhere else.  Any other non-number is an error naming the variable.
    """
    value = os.environ.get(name, "").strip()
    if not value or value.startswith(("tcp://", "udp://", "sctp://")):
        return None
    if not value.isdigit():
        raise ValueError(f"{name}={value!r} is not a port number; set it to one (e.g. 9443) or unset it")
    return int(value)


@dataclass
class Options:
    """Operator knobs (``reverie operator`` flags; REVERIE_* env vars for ``kopf run``)."""

    resync_seconds: float = float(os.environ.get("REVERIE_RESYNC_SECONDS", "30"))
    # Reconciles are I/O-bound (a handful of sequential API calls each): many may wait at once.
    max_concurrent: int = int(os.environ.get("REVERIE_MAX_CONCURRENT_RECONCILES", "64"))
    kubeconfig: str | None = os.environ.get("REVERIE_KUBECONFIG") or os.environ.get("KUBECONFIG") or None
    # The admission webhook (controller/admission.py): off without a port.
    webhook_port: int | None = port_from_env("REVERIE_WEBHOOK_PORT")
    webhook_cert_dir: str | None = os.environ.get("REVERIE_WEBHOOK_CERT_DIR") or None
    webhook_addr: str | None = os.environ.get("REVERIE_WEBHOOK_ADDR") or None  # default: every interface
