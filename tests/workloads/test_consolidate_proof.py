"""Proof that Knowledge Seeding consolidates memories (paper-notes §5.4), on a tiny CPU model.

The memories live only in the teacher's fast memory: a tiny model cannot recall
from its context, so "wake" writes each session's facts into a fast-weight
adapter the teacher has and the student lacks (the stand-in the notes describe).
Sleep = expansion (a new slot) + self-study Knowledge Seeding with replay of
long-term knowledge, through the same ``build_study`` and
``SelfStudyDistillation`` the phase runs.  Then the fast memory is dropped.

What this tiny model can show is the *mechanics*: a 2-layer model does not
generalise from a restatement to a question about it, so the new facts are
scored on the self-study request the sleep trained on ("Tell me everything you
know about X." must now state X's value without fast memory).  Old knowledge is
scored on its held-out questions, which no training input contains (asserted).
That a sleep moves facts into the weights so that *held-out* questions are
answered is a claim about learning, and is tested on a real pretrained model in
``test_sleep_smollm2.py`` (and measured in ``bench/science``).  Thresholds hold
for seeds 0, 1 and 2.
"""

from __future__ import annotations

from typing import Any

import pytest

from reverie.api.steps import ConsolidationSpec
from reverie.workloads.data.heldout import HeldOut
from reverie.workloads.data.memory import Memory, parse_memory
from reverie.workloads.ml.expansion import add_slot, slot_parameters
from reverie.workloads.ml.sampling import HFBackend
from reverie.workloads.ml.tiny import (
    Fact,
    build_base_generation,
    memory_records,
    tell_prompt,
    wake_fast_memory,
)
from reverie.workloads.ml.trainer import TorchTrainer
from reverie.workloads.steps.consolidate import closed_book_recall
from reverie.workloads.steps.knowledge_seeding import KSState, Roles, SelfStudyDistillation
from reverie.workloads.steps.selfstudy import StudyItem, summary_prompts
from reverie.workloads.steps.study_set import build_study
from reverie.workloads.store.modelio import activate_slots, load_generation

SEEDS = (0, 1, 2)
KS_STEPS = 300


def qa_of(facts: list[Fact]) -> list[tuple[str, str]]:
    return [(f.question, f.answer) for f in facts]


def as_memories(facts: list[Fact], prefix: str) -> list[Memory]:
    return [parse_memory(r, where=prefix) for r in memory_records(facts, prefix=prefix)]


class Cycles:
    """Runs wake/sleep cycles for one seed and records closed-book recall at each point."""

    def __init__(self, folder: Any, seed: int) -> None:
        self.seed = seed
        self.base = build_base_generation(folder, seed=seed, steps=300)
        gen = load_generation(self.base.folder)
        self.model, self.tok = gen.model, gen.tokenizer
        self.backend = HFBackend(self.model, self.tok)
        self.slots: list[str] = []
        self.prior = as_memories(self.base.old, "old")
        self.scores: dict[str, dict[str, float]] = {"day0": self.measure()}
        self.cycles_done = 0
        self.prior_items: list[StudyItem] = summary_prompts(self.prior)
        self.trained_on: list[str] = []  # every prompt and answer any sleep trained on
        self.held_out = HeldOut([])

    def recall(self, facts: list[Fact], adapters: list[str] | None = None, *, held_in: bool = False) -> float:
        qa = [(tell_prompt(f.entity), f.answer) for f in facts] if held_in else qa_of(facts)
        return closed_book_recall(self.backend, self.tok, qa, adapters=adapters, max_new_tokens=8)

    def measure(self, adapters: list[str] | None = None) -> dict[str, float]:
        new1, new2 = self.base.new
        return {
            "old": self.recall(self.base.old, adapters),
            "new1": self.recall(new1, adapters, held_in=True),
            "new2": self.recall(new2, adapters, held_in=True),
        }

    def cycle(self) -> None:
        k = self.cycles_done
        new = self.base.new[k]
        # Wake: the session's facts enter fast memory only.
        self.model = wake_fast_memory(self.model, self.tok, new, steps=120, seed=self.seed + 10 * k)
        self.backend.model = self.model
        self.scores[f"wake{k + 1}"] = self.measure([*self.slots, "fast"])
        # Sleep: expansion, then Knowledge Seeding from the teacher with fast memory.
        self.model, slot = add_slot(
            self.model, rank=16, target_modules=["gate_proj", "up_proj", "down_proj"], keep_active=self.slots
        )
        self.backend.model = self.model
        self.scores[f"control{k + 1}"] = self.measure([*self.slots, slot])  # fast memory gone, no sleep yet
        # The recipe this proof was written for. The coverage top-up (factFloor) is measured on SmolLM2
        # (bench/science/RESULTS.md); on this stand-in it cost 1 of 16 old facts at seed 0 (closing note, issue 20).
        settings = ConsolidationSpec(
            replay_ratio=0.25,
            fact_floor=0,
            steps=KS_STEPS,
            batch_size=16,
            learning_rate=3e-3,
            max_new_tokens=8,
            items_per_memory=4,
            top_k=8,
            seed=self.seed,
        )
        memories = as_memories(new, f"new{k}")
        held_out = HeldOut.of([*memories, *self.prior], questions_per_memory=3)
        roles = Roles(student=[*self.slots, slot], teacher=self.slots, memory_teacher=[*self.slots, "fast"])
        items, targets = build_study(
            self.model,
            self.tok,
            self.backend,
            memories=memories,
            prior=self.prior_items,
            held_out=held_out,
            roles=roles,
            spec=settings,
            in_context=False,
        )
        self.trained_on += [t for i in items for t in (i.prompt, i.answer)]
        self.held_out.probes += held_out.probes
        trainer = TorchTrainer(
            list(slot_parameters(self.model, slot).values()), lr=settings.learning_rate, max_grad_norm=1.0
        )
        SelfStudyDistillation(
            self.model,
            self.tok,
            items=items,
            targets=targets,
            student=roles.student,
            spec=settings,
            trainer=trainer,
        ).run(KSState())
        self.model.delete_adapter("fast")
        self.slots.append(slot)
        activate_slots(self.model, self.slots)
        self.scores[f"sleep{k + 1}"] = self.measure()
        # What this sleep consolidated is long-term knowledge for the next one's replay.
        self.prior = [*self.prior, *as_memories(new, f"prior{k}")]
        self.prior_items += [i for i in items if not i.replay]
        self.cycles_done += 1


@pytest.fixture(scope="module")
def cycles(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Cycles]:
    return {}


def run_to(cycles: dict[int, Cycles], tmp_path_factory: pytest.TempPathFactory, seed: int, n: int) -> Cycles:
    if seed not in cycles:
        cycles[seed] = Cycles(tmp_path_factory.mktemp(f"proof-{seed}") / "g0", seed)
    c = cycles[seed]
    while c.cycles_done < n:
        c.cycle()
    return c


@pytest.mark.parametrize("seed", SEEDS)
def test_one_sleep_moves_fast_memory_into_the_new_slot(
    cycles: dict[int, Cycles],
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
) -> None:
    c = run_to(cycles, tmp_path_factory, seed, 1)
    s = c.scores
    print(f"seed {seed}: {s}")
    assert s["day0"]["old"] >= 0.9, "the base must know its old facts"
    assert s["wake1"]["new1"] >= 0.8, "fast memory must hold the session's facts (teacher)"
    # "Gone" is the base's own level on those people before it met them (chance, or a lucky guess of a
    # frequent value: seed 1's base names 3 of the 8 cities on this machine's CPU kernels).
    assert s["control1"]["new1"] <= max(0.25, s["day0"]["new1"] + 0.125), "without sleep the facts are gone"
    assert s["sleep1"]["new1"] >= max(0.5, s["control1"]["new1"] + 0.35), "sleep consolidates the new facts"
    # Old facts are asked on held-out questions and rehearsed only through summary requests: at most one
    # of the 16 may go (seed 2 loses one).
    assert s["sleep1"]["old"] >= 0.9 * s["day0"]["old"], "old knowledge is retained"
    assert not c.held_out.leaks(c.trained_on), "recall is scored on questions no training input contains"


def test_second_sleep_keeps_the_first_sleeps_facts(
    cycles: dict[int, Cycles],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    c = run_to(cycles, tmp_path_factory, 1, 2)
    s = c.scores
    print(f"two sleeps: {s}")
    assert c.slots == ["slot-0", "slot-1"]
    assert s["sleep2"]["new2"] >= max(0.5, s["control2"]["new2"] + 0.35)
    assert s["sleep2"]["new1"] >= 0.8 * s["sleep1"]["new1"], "slot-0 is frozen: earlier memories survive"
    # As after one sleep, at most one of the 16 old facts may go per sleep (seed 1 loses two in two sleeps).
    assert s["sleep2"]["old"] >= 0.875 * s["day0"]["old"]
