"""The serving hand-off decision: the champion's servable form, never a bare generation folder."""

from __future__ import annotations

from typing import Any

from reverie.api.lineage import ModelLineage
from reverie.core.serving import hand_off, servable_uri


def lineage(
    *,
    champion: str = "gen-1",
    target: dict[str, Any] | None = None,
    servable: dict[str, Any] | None = None,
) -> ModelLineage:
    spec: dict[str, Any] = {"baseModel": {"uri": "s3://models/base/"}, "store": {"uri": "s3://store/"}}
    if target is not None:
        spec["servingTarget"] = target
    gens = [
        {"name": "gen-0", "uri": "s3://models/base/", "state": "Retired"},
        {
            "name": "gen-1",
            "parent": "gen-0",
            "cycle": "c1",
            "uri": "s3://store/assistant/c1/dreaming/model",
            "state": "Retired",
        },
    ]
    for g in gens:
        if g["name"] == champion:
            g["state"] = "Champion"
    status: dict[str, Any] = {
        "champion": champion,
        "championUri": next(g["uri"] for g in gens if g["name"] == champion),
        "generations": gens,
    }
    if servable is not None:
        status["servable"] = servable
    return ModelLineage.model_validate({"metadata": {"name": "assistant"}, "spec": spec, "status": status})


ISVC = {"kind": "InferenceService", "name": "assistant"}


def test_a_new_champion_needs_its_merged_form_and_the_target_waits_for_it() -> None:
    decision = hand_off(lineage(target=ISVC))
    assert decision.uri is None, "the target keeps what it serves until the servable form exists"
    assert decision.export is not None and decision.export.form == "merged"
    assert decision.export.uri == "s3://store/assistant/servable/gen-1/merged"
    assert decision.source_uri == "s3://store/assistant/c1/dreaming/model"


def test_a_written_servable_form_is_what_the_target_gets() -> None:
    written = {
        "generation": "gen-1",
        "form": "merged",
        "uri": servable_uri("s3://store/", "assistant", "gen-1", "merged"),
    }
    decision = hand_off(lineage(target=ISVC, servable=written))
    assert decision.export is None and decision.uri == "s3://store/assistant/servable/gen-1/merged"


def test_changing_the_form_asks_for_the_other_export() -> None:
    written = {"generation": "gen-1", "form": "merged", "uri": "s3://store/assistant/servable/gen-1/merged"}
    decision = hand_off(lineage(target={**ISVC, "form": "adapter"}, servable=written))
    assert decision.uri is None and decision.export is not None
    assert decision.export.uri == "s3://store/assistant/servable/gen-1/adapter"


def test_the_servable_form_of_an_earlier_champion_is_not_reused() -> None:
    written = {"generation": "gen-1", "form": "merged", "uri": "s3://store/assistant/servable/gen-1/merged"}
    status = lineage(target=ISVC, servable=written)
    status.status.generations.append(
        status.status.generations[1].model_copy(
            update={"name": "gen-2", "parent": "gen-1", "cycle": "c2", "uri": "s3://store/assistant/c2/dreaming/model"}
        )
    )
    status.status.champion, status.status.champion_uri = "gen-2", "s3://store/assistant/c2/dreaming/model"
    decision = hand_off(status)
    assert decision.export is not None and decision.export.generation == "gen-2"


def test_generation_zero_is_the_base_model_folder_and_is_handed_over_as_is() -> None:
    for form in ("merged", "adapter"):
        decision = hand_off(lineage(champion="gen-0", target={**ISVC, "form": form}))
        assert decision.export is None and decision.uri == "s3://models/base/"


def test_merged_is_the_default_form() -> None:
    assert hand_off(lineage()).form == "merged"
    assert lineage(target=ISVC).spec.serving_target.form == "merged"  # type: ignore[union-attr]
