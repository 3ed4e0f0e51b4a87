"""Held-out evaluation: no question a cycle is scored on, nor its answer-bearing form, reaches training.

The whole-cycle test runs the real consolidation and dreaming phases (the Job
contract, ``run_step``) on the tiny model and assembles every training input
they wrote — self-study prompts and answers, replay prompts and answers, every
dream — then looks for each evaluation probe of this cycle's and earlier
memories in them.  Its memories are built so that a careless implementation
leaks: one ``qa`` question *is* a self-study seed prompt ("Tell me about X."),
and consolidation would train on it if it did not drop it.
"""

from __future__ import annotations

import json
from pathlib import Path

from reverie.core.contract import AttemptConfig
from reverie.workloads.data.heldout import HeldOut, evaluation_probes
from reverie.workloads.data.memory import QA, Memory, load_memory_uris
from reverie.workloads.data.questions import Question
from reverie.workloads.ml.tiny import (
    TinyBase,
    build_tokenizer,
    memory_records,
    tell_prompt,
    write_memories_jsonl,
)
from reverie.workloads.steps import run_step as rp
from reverie.workloads.steps.selfstudy import grounded, read_items, subject_of, written_question


def test_probes_are_every_qa_pair_or_else_the_cloze_questions() -> None:
    with_qa = Memory(
        "a",
        "Zorblat lives in Vemora. Zorblat builds boats.",
        tuple(QA(f"Question {i} about Zorblat?", "Vemora") for i in range(5)),
    )
    without = Memory("b", "Quimar lives in Tolven. Quimar builds kites.")
    probes = evaluation_probes([with_qa, without], questions_per_memory=3)
    assert [q.form for q in probes if q.source_id == "a"] == ["qa"] * 5, "all qa pairs, not only the evaluated 3"
    assert {q.form for q in probes if q.source_id == "b"} == {"cloze"}


def test_a_training_text_leaks_a_probe_when_it_contains_the_question_as_words() -> None:
    probe = Question(id="a/qa-0", source_id="a", form="qa", question="Where does Zorblat live?", answer="Vemora")
    held = HeldOut([probe])
    assert not held.allows("Q: where does ZORBLAT live? A: Vemora")
    assert held.allows("Where did Zorblat live?") and held.allows("Zorblat lives in Vemora.")
    assert held.leaks(["Tell me: Where does Zorblat live?", "fine"]) == [("Tell me: Where does Zorblat live?", probe)]


def test_grounding_keeps_answers_the_memory_states_and_drops_inventions() -> None:
    text = "Ivo Oddwyn was born in Porto in 1916. Ivo Oddwyn works as a glassblower and plays the bassoon."
    assert subject_of(text) == "Ivo Oddwyn"
    assert grounded("Ivo Oddwyn was born in Porto in 1916.", text, subject="Ivo Oddwyn")
    assert grounded("He works as a glassblower.", text, subject="Ivo Oddwyn")
    assert not grounded("Ivo Oddwyn is a fictional character from a TV series.", text, subject="Ivo Oddwyn")
    assert not grounded("Ivo Oddwyn was born in Lisbon.", text, subject="Ivo Oddwyn"), "a name not in the memory"
    assert not grounded("Ivo Oddwyn was born in 1920.", text, subject="Ivo Oddwyn"), "a number not in the memory"
    assert not grounded("Ivo Oddwyn is a person.", text, subject="Ivo Oddwyn"), "states nothing the memory says"


def test_a_written_question_must_name_the_subject_and_end_with_a_question_mark() -> None:
    assert written_question("Where was Ivo Oddwyn born? He was born", "Ivo Oddwyn") == "Where was Ivo Oddwyn born?"
    assert written_question("What is your occupation?", "Ivo Oddwyn") is None
    assert written_question("Ivo Oddwyn was born in Porto.", "Ivo Oddwyn") is None


def test_no_training_input_of_a_cycle_contains_an_evaluation_probe(
    attempt_config,
    tiny_base: TinyBase,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    records = memory_records(tiny_base.new[0], prefix="s1")
    # A probe equal to a self-study seed: consolidation must drop that prompt, not train on it.
    first = subject_of(records[0]["text"])
    assert first is not None
    records[0]["qa"].append({"q": tell_prompt(first), "a": tiny_base.new[0][0].answer})
    write_memories_jsonl(store / "memories" / "session-1.jsonl", records)
    path = attempt_config(steps=2, itemsPerMemory=6, onPolicySteps=0)
    assert rp.run_step("consolidation", str(path)) == 0
    cfg = AttemptConfig.model_validate_json(path.read_text())
    out = store / "l/c1/consolidation"
    dream_cfg = cfg.model_copy(
        update={
            "step": "dreaming",
            "output_uri": str(store / "l/c1/dreaming"),
            "inputs": {"consolidation": str(out / "model")},
            "dreaming": cfg.dreaming.model_copy(
                update={
                    "enabled": True,
                    "dreams_per_context": 2,
                    "top_k": 1,
                    "random_extra": 0,
                    "probe_steps": 1,
                    "m_step_epochs": 1,
                    "max_new_tokens": 8,
                }
            ),
        }
    )
    (tmp_path / "dream.json").write_text(dream_cfg.model_dump_json(by_alias=True))
    assert rp.run_step("dreaming", str(tmp_path / "dream.json")) == 0

    items = read_items(out / "selfstudy")
    rows = [json.loads(line) for line in (store / "l/c1/dreaming/dreams.jsonl").read_text().splitlines()]
    dreams = [t for d in rows for t in (d["prompt"], d["text"], f"{d['prompt']} {d['text']}", d["writer"])]
    quiz = [json.loads(line)["prompt"] for line in (store / "l/c1/dreaming/quiz.jsonl").read_text().splitlines()]
    assert rows and quiz, "dreaming quizzed and dreamt"
    training = [t for i in items for t in (i.prompt, i.answer)] + dreams + quiz
    assert any(not i.replay for i in items) and any(i.replay for i in items), "self-study and replay both ran"
    memories = load_memory_uris([str(store / "memories/session-1.jsonl"), str(store / "memories/old.jsonl")])
    held = HeldOut.of(memories, questions_per_memory=cfg.evaluation.questions_per_memory)
    assert any(q.question == tell_prompt(first) for q in held.probes)
    assert held.leaks(training) == []


class EchoTeacher:
    """A generation backend whose every answer restates the memory in its prompt (a perfect, grounded teacher)."""

    def __init__(self, memories: list[Memory]) -> None:
        self.memories = memories

    def generate(self, prompts, **_kwargs):
        from reverie.workloads.ml.sampling import Generated

        texts = [next((m.text for m in self.memories if m.text in p), "Who is Zorblat Venqui?") for p in prompts]
        return Generated(texts=texts, token_ids=[[] for _ in texts])


def test_synthesis_drops_a_self_study_prompt_that_is_an_evaluation_probe() -> None:
    from reverie.workloads.steps.selfstudy import synthesize

    probe = tell_prompt("Zorblat Venqui")
    memory = Memory("a", "Zorblat Venqui lives in Vemora and builds boats.", (QA(probe, "Vemora"),))
    tok = build_tokenizer([memory.text, probe])
    held = HeldOut.of([memory], questions_per_memory=3)
    kwargs = {"adapters": [], "items_per_memory": 20, "seed": 0, "max_new_tokens": 16}
    unfiltered = synthesize(EchoTeacher([memory]), tok, [memory], **kwargs)
    assert probe in [i.prompt for i in unfiltered], "without the filter the probe would be trained on"
    kept = synthesize(EchoTeacher([memory]), tok, [memory], keep=held.allows, **kwargs)
    assert kept and probe not in [i.prompt for i in kept]
    assert held.leaks([t for i in kept for t in (i.prompt, i.answer)]) == []
