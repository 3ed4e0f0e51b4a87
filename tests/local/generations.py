"""A hand-built lineage on disk, as a finished local sleep leaves it (no cycle runs).

gen-0 is an untrained tiny base; gen-1 adds one slot whose B is non-zero; the
memories its cycle (``c1``) consolidated sit where the planner puts them.
Seconds to build; used by the local serving tests and the cluster `ask` test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FACTS = ["Zorblat lives in Vemora.", "Quillan lives in Ostrava.", "Mirelle works as a potter."]


def build(store: Path, lineage: str = "lin") -> tuple[Path, Path]:
    """Write gen-0 and gen-1 (and c1's memories) under ``store``; returns their folders."""
    import torch

    from reverie.core.contract import consolidated_memories_uri
    from reverie.workloads.ml.expansion import add_slot, slot_parameters
    from reverie.workloads.ml.tiny import build_tiny_model, build_tokenizer, write_memories_jsonl
    from reverie.workloads.store.modelio import save_generation

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = build_tokenizer([*FACTS, "Where does Zorblat live?"], vocab_size=300)
    model = build_tiny_model(tok, seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    g0 = save_generation(model, tok, store / lineage / "gen-0")
    model, name = add_slot(model, rank=2, target_modules=["down_proj"])
    with torch.no_grad():
        for p in slot_parameters(model, name).values():
            p.add_(0.1 * torch.randn_like(p))
    g1 = save_generation(model, tok, store / lineage / "c1" / "dreaming" / "model")
    records = [{"id": f"mem-{i}", "text": t, "qa": []} for i, t in enumerate(FACTS)]
    write_memories_jsonl(consolidated_memories_uri(str(store), lineage, "c1"), records)
    return g0, g1


def status(g0: Path, g1: Path, *, champion: str = "gen-1") -> dict[str, Any]:
    """The lineage status (wire form) with ``champion`` as champion."""
    return {
        "champion": champion,
        "championUri": str(g1 if champion == "gen-1" else g0),
        "generations": [
            {"name": "gen-0", "uri": str(g0), "state": "Retired" if champion == "gen-1" else "Champion"},
            {
                "name": "gen-1",
                "parent": "gen-0",
                "cycle": "c1",
                "uri": str(g1),
                "state": "Champion" if champion == "gen-1" else "Retired",
            },
        ],
    }
