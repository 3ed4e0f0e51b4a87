"""The memory source ``builtin:people``: a few fictional people per sleep, for any base model.

A newcomer trying Reverie on a real pretrained model needs memories the model
cannot already know.  ``uri: builtin:people`` in a SleepCycle's memory sources
means "the next session's people": sleep n of the lineage meets
:data:`PEOPLE_PER_SESSION` people made by :mod:`reverie.workloads.data.people`
(deterministic; no name repeats across sessions), written once into the store
as ``<store>/<lineage>/memories/people-<n>.jsonl``.  Each memory carries its
held-out questions (``qa``: three phrasings per fact), which the evaluation
asks and consolidation never reads.
"""

from __future__ import annotations

import json

from reverie.workloads.data.people import make_people, memory_records
from reverie.workloads.store import store

BUILTIN_PEOPLE = "builtin:people"
PEOPLE_PER_SESSION = 4
SEED = 2026


def is_builtin_people(uri: str | None) -> bool:
    return bool(uri) and str(uri).strip() == BUILTIN_PEOPLE


def session_people(store_uri: str, lineage: str, session: int, *, per_session: int = PEOPLE_PER_SESSION) -> str:
    """The URI of session ``session``'s memories (1-based), written on first use; idempotent."""
    if session < 1:
        raise ValueError(f"session numbers start at 1, got {session}")
    uri = store.join(store_uri, lineage, "memories", f"people-{session}.jsonl")
    if not store.exists(uri):
        people = make_people(per_session * session, seed=SEED)[
            -per_session:
        ]  # a stable prefix: sessions never share a name
        records = memory_records(people, prefix=f"people{session}")
        store.write_text(uri, "".join(json.dumps(r) + "\n" for r in records))
    return uri
