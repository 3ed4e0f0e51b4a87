"""The ``reverie`` command (also the kubectl plugin ``kubectl-reverie``).

Local mode, no cluster needed::

    reverie sleep examples/quickstart      # one whole sleep cycle on this CPU (Ctrl-C, rerun: resumes)
    reverie report examples/quickstart     # regenerate its report.html
    reverie ask examples/quickstart "Q?" --compare   # the champion's answer (and base, teacher)
    reverie export GENERATION DIR [--form merged|adapter]  # a folder any server loads
    reverie remember DIR FILE.jsonl...     # validate memories into the run's inbox

On a cluster (kubeconfig as kubectl finds it, or --kubeconfig)::

    reverie status [CYCLE] [-n NS]         # phase, step attempts, gate, generation
    reverie approve|reject CYCLE           # answer a cycle waiting in AwaitingApproval
    reverie rollback LINEAGE GENERATION    # pin an earlier champion (spec.rollbackTo)
    reverie ask --lineage LINEAGE "Q?"     # ask the champion (its URI must be readable from here)
    reverie remember --lineage LINEAGE FILE.jsonl...  # validate memories into the lineage's inbox
    reverie logs CYCLE [--phase STEP]      # logs of the phase Job's pods
    reverie crds [--apply | --write DIR]   # print, apply or write the CRDs

Inside images: ``reverie run-step STEP --config FILE`` (the Job contract) and
``reverie operator``.  The cluster verbs import the Kubernetes client lazily, so
the local verbs work without the ``operator`` extra.
"""

from __future__ import annotations

import os

# Importing the verbs' modules registers them on the app.
from reverie.cli import cluster, local, remember  # noqa: F401
from reverie.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point (``reverie`` and ``kubectl-reverie``)."""
    # Before anything imports torch or the HF hub: no downloads, one BLAS thread
    # (tiny models on a shared CPU are fastest that way); the user may override.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
