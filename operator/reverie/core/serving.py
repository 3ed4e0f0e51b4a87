"""What the serving target gets: the champion's servable form.  Pure.

A generation folder is not servable as is (an off-the-shelf server loads its
base weights and ignores the expert slots), so on every champion change the
champion's servable form (``spec.servingTarget.form``: ``merged`` or
``adapter``, written by :mod:`reverie.workloads.steps.export`) is written once, to
:func:`servable_uri`, and the target receives that URI.  Until it is written the
target keeps what it serves: it never sees a half-written folder, nor a
generation folder that would silently serve the base model.

The root generation (``gen-0``, no parent) is ``spec.baseModel``: a plain
model folder already, handed over as is in either form (it has no slots, so
there is nothing to merge and no adapter to serve).

:func:`hand_off` decides; the operator (:mod:`reverie.controller.serving`) and
local mode (:mod:`reverie.local.serving`) carry it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from reverie.api.lineage import ModelLineage, ServableForm, ServableStatus

SERVABLE_DIR = "servable"


def servable_uri(store_uri: str, lineage: str, generation: str, form: ServableForm | str) -> str:
    """Where a generation's servable form lives: ``<store>/<lineage>/servable/<generation>/<form>``."""
    return f"{store_uri.rstrip('/')}/{lineage}/{SERVABLE_DIR}/{generation}/{ServableForm(form).value}"


@dataclass(frozen=True)
class HandOff:
    """The decision for one lineage.

    ``uri``: what the target should serve now (None: nothing to hand over yet).
    ``export``: the servable form still to be written (None: nothing to write).
    """

    generation: str | None
    form: ServableForm
    uri: str | None
    export: ServableStatus | None = None
    source_uri: str | None = None  # the generation folder the export reads


def hand_off(lineage: ModelLineage) -> HandOff:
    """What to hand to serving for ``lineage``'s champion, in the target's form (default merged)."""
    target, status = lineage.spec.serving_target, lineage.status
    form = ServableForm(target.form) if target is not None else ServableForm.MERGED
    champion = next((g for g in status.generations if g.name == status.champion), None)
    if champion is None or status.champion_uri is None:
        return HandOff(generation=None, form=form, uri=None)
    if champion.parent is None:
        return HandOff(generation=champion.name, form=form, uri=status.champion_uri)
    written = status.servable
    if written is not None and written.generation == champion.name and ServableForm(written.form) == form:
        return HandOff(generation=champion.name, form=form, uri=written.uri)
    want = ServableStatus(
        generation=champion.name,
        form=form,
        uri=servable_uri(lineage.spec.store.uri, lineage.metadata.name, champion.name, form),
    )
    return HandOff(generation=champion.name, form=form, uri=None, export=want, source_uri=status.champion_uri)
