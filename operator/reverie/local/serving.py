"""Local mode's serving hand-off: write the champion's servable form after a promotion.

The operator runs an export Job and patches ``spec.servingTarget``
(:mod:`reverie.controller.serving`); locally the runner calls
:func:`serve_champion` in its own process right after a champion change.  The
decision is the same pure :func:`reverie.core.serving.hand_off`: the form is
``spec.servingTarget.form`` (merged when the lineage names no target), written
once to ``<store>/<lineage>/servable/<generation>/<form>``, and recorded in
``status.servable`` and ``status.servingUri`` — the folder to point a server
(or ``AutoModelForCausalLM.from_pretrained``) at.  Only the champion's form is
kept: the previous champion's is removed, since nothing local serves it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from reverie.api.lineage import ModelLineage, ServableForm
from reverie.core.serving import SERVABLE_DIR, hand_off


class Notes(Protocol):
    def event(self, kind: str, reason: str, message: str) -> None: ...


def serve_champion(lineage: ModelLineage, *, observer: Notes) -> str | None:
    """Write (if needed) and record the champion's servable form; returns its URI, None if there is none.

    An export that fails leaves the previous hand-off in place and says so;
    the promotion itself stands (the champion is still the better model).
    """
    from reverie.workloads.steps.export import export_generation
    from reverie.workloads.store.modelio import GenerationError

    decision = hand_off(lineage)
    if decision.export is not None:
        assert decision.source_uri is not None
        # The adapter form names the base a server loads next to it: the lineage's generation 0.
        base_ref = lineage.spec.base_model.uri if decision.form == ServableForm.ADAPTER else None
        observer.event("Normal", "Exporting", f"writing {decision.generation} as a {decision.form.value} model…")
        try:
            export_generation(decision.source_uri, decision.export.uri, form=decision.form, base_ref=base_ref)
        except (GenerationError, OSError) as exc:
            observer.event(
                "Warning",
                "ExportFailed",
                f"writing the {decision.form.value} form of {decision.generation} failed: {exc}",
            )
            return None
        lineage.status.servable = decision.export
        uri: str | None = decision.export.uri
        observer.event("Normal", "Servable", f"{decision.generation} as a {decision.form.value} model: {uri}")
    else:
        uri = decision.uri
    if uri is not None:
        lineage.status.serving_uri = uri
        _prune(lineage, keep=decision.generation)
    return uri


def _prune(lineage: ModelLineage, *, keep: str | None) -> None:
    root = Path(lineage.spec.store.uri) / lineage.metadata.name / SERVABLE_DIR
    if "://" in lineage.spec.store.uri or not root.is_dir():
        return
    for folder in root.iterdir():
        if folder.is_dir() and folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)
