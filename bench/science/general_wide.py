"""General QA on a wider set: does a slept model still answer everyday questions the base answers?

The built-in general-QA set holds 30 questions, of which SmolLM2-135M answers 17, so one
question moves the score by 6 points and 95 % means all 17.  This script scores saved
generations of a bench run on those 30 plus 100 more (written for this script; none is a
general-QA question or a replay prompt of the product, checked below), closed book, the
way ``run.py`` scores general QA (greedy, 24 new tokens, the answer as whole words).
Retention counts the questions the base answers.

    .venv/bin/python bench/science/general_wide.py --threads 2 --out bench/science/general-wide.json \
        seed0/reverie=/work/sci-grad/seed-0/reverie ...      # NAME=ARM_FOLDER (its sleep-N.json name the models)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

MORE: tuple[tuple[str, str], ...] = (
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Portugal?", "Lisbon"),
    ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of the United States?", "Washington"),
    ("Which planet do we live on?", "Earth"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("Which planet has famous rings?", "Saturn"),
    ("What is the natural satellite of the Earth called?", "Moon"),
    ("What do we call the star that lights our days?", "Sun"),
    ("How many hours are in two days?", "48"),
    ("How many months are in a year?", "twelve"),
    ("How many days are in a year?", "365"),
    ("How many sides does a square have?", "four"),
    ("How many legs does an insect have?", "six"),
    ("How many legs does a dog have?", "four"),
    ("How many wheels does a car have?", "four"),
    ("How many eyes does a person have?", "two"),
    ("How many fingers are on one hand?", "five"),
    ("What is three plus four?", "seven"),
    ("What is ten minus three?", "seven"),
    ("What is five times two?", "ten"),
    ("Which month comes before February?", "January"),
    ("Which month comes after November?", "December"),
    ("Which day comes after Monday?", "Tuesday"),
    ("Which day comes before Sunday?", "Saturday"),
    ("What season comes after winter?", "spring"),
    ("What season comes after summer?", "autumn"),
    ("What color is a banana?", "yellow"),
    ("What color is snow?", "white"),
    ("What color is coal?", "black"),
    ("What color is a ripe tomato?", "red"),
    ("What color do you get by mixing blue and yellow?", "green"),
    ("What is the opposite of big?", "small"),
    ("What is the opposite of day?", "night"),
    ("What is the opposite of left?", "right"),
    ("What is the opposite of black?", "white"),
    ("What is the opposite of open?", "closed"),
    ("What is the opposite of fast?", "slow"),
    ("What animal says moo?", "cow"),
    ("What animal says meow?", "cat"),
    ("What animal barks?", "dog"),
    ("Which animal has a long trunk?", "elephant"),
    ("Which animal has a very long neck?", "giraffe"),
    ("Which bird cannot fly and lives in Antarctica?", "penguin"),
    ("What is a baby cat called?", "kitten"),
    ("What is a baby sheep called?", "lamb"),
    ("What do spiders spin?", "web"),
    ("What do hens lay?", "eggs"),
    ("What do we call a house for bees?", "hive"),
    ("What is the largest mammal?", "whale"),
    ("What is the fastest land animal?", "cheetah"),
    ("What fruit keeps the doctor away?", "apple"),
    ("Which fruit is yellow and curved?", "banana"),
    ("What do we breathe in to live?", "oxygen"),
    ("What is H2O commonly called?", "water"),
    ("What is the chemical symbol for iron?", "Fe"),
    ("What is the chemical symbol for oxygen?", "O"),
    ("What is the freezing point of water in degrees Celsius?", "0"),
    ("What is the largest desert in Africa?", "Sahara"),
    ("What is the longest river in Africa?", "Nile"),
    ("What is the highest mountain in the world?", "Everest"),
    ("Which ocean lies between Europe and America?", "Atlantic"),
    ("On which continent is France?", "Europe"),
    ("On which continent is Kenya?", "Africa"),
    ("On which continent is Japan?", "Asia"),
    ("What language is spoken in France?", "French"),
    ("What language is spoken in Germany?", "German"),
    ("What language is spoken in Mexico?", "Spanish"),
    ("What language is spoken in Italy?", "Italian"),
    ("What currency is used in Japan?", "yen"),
    ("Who painted the Sistine Chapel ceiling?", "Michelangelo"),
    ("Who developed the theory of relativity?", "Einstein"),
    ("Who was the first president of the United States?", "Washington"),
    ("Who wrote Hamlet?", "Shakespeare"),
    ("Who discovered penicillin?", "Fleming"),
    ("Who invented the telephone?", "Bell"),
    ("What is the name of the fairy-tale girl with a red hood?", "Red Riding Hood"),
    ("What do you use to write on a blackboard?", "chalk"),
    ("What do you call frozen rain?", "hail"),
    ("What does a thermometer measure?", "temperature"),
    ("What do you use to see very small things?", "microscope"),
    ("What instrument do you blow into and has a slide?", "trombone"),
    ("What instrument has six strings and is strummed?", "guitar"),
    ("What sport is played at Wimbledon?", "tennis"),
    ("In which sport do players score a touchdown?", "football"),
    ("How many players are on a soccer team on the field?", "eleven"),
    ("What shape has three sides?", "triangle"),
    ("What shape is a wheel?", "circle"),
    ("What is the main language of Australia?", "English"),
    ("What metal is liquid at room temperature?", "mercury"),
    ("What gas do humans breathe out?", "carbon dioxide"),
    ("What organ do we think with?", "brain"),
    ("What part of the body do we hear with?", "ear"),
    ("What do bees collect from flowers?", "nectar"),
)


def wide_set() -> list[tuple[str, str]]:
    from reverie.workloads.data.eval_sets import general_qa
    from reverie.workloads.steps.selfstudy import GENERAL_REPLAY_PROMPTS

    builtin = [(g.question, g.answer) for g in general_qa()]
    taken = {q.lower() for q, _ in builtin} | {p.lower() for p in GENERAL_REPLAY_PROMPTS}
    clash = [q for q, _ in MORE if q.lower() in taken]
    if clash or len({q for q, _ in MORE}) != len(MORE):
        raise SystemExit(f"the wider set repeats a built-in or replay question: {clash}")
    return builtin + list(MORE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arms", nargs="+", help="NAME=ARM_FOLDER: a bench run's arm folder (sleep-N.json with 'model')")
    p.add_argument("--base", type=Path, default=None, help="the base model folder (default: the packaged SmolLM2)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    a = p.parse_args()
    import run  # bench/science/run.py: its CPU setup, answers and matching

    base = a.base or run.cpu_setup(a.threads)
    from reverie.workloads.store.modelio import load_generation

    items = wide_set()
    gen = load_generation(base)
    ok_base = run.general_qa_correct(gen.model, gen.tokenizer, items)
    known = [x for x, y in zip(items, ok_base, strict=True) if y]
    out: dict[str, Any] = {"command": " ".join(sys.argv), "questions": len(items), "base_correct": len(known)}
    builtin_questions = {q for q, _ in items if q not in {m for m, _ in MORE}}
    out["base_builtin_correct"] = sum(y for (q, _), y in zip(items, ok_base, strict=True) if q in builtin_questions)
    in_builtin = [q in builtin_questions for q, _ in known]
    rows = []
    for spec in a.arms:
        name, folder = spec.split("=", 1)
        for f in sorted(Path(folder).glob("sleep-*.json")):
            rec = json.loads(f.read_text())
            if not rec.get("model") or not Path(rec["model"]).exists():
                continue
            g = load_generation(rec["model"])
            ok = run.general_qa_correct(g.model, g.tokenizer, known)
            builtin = [y for y, b in zip(ok, in_builtin, strict=True) if b]
            row = {
                "name": name,
                "sleep": rec["sleep"],
                "model": rec["model"],
                "wide": sum(ok) / len(known),
                "builtin": sum(builtin) / max(1, len(builtin)),
                "added": (sum(ok) - sum(builtin)) / max(1, len(known) - len(builtin)),
                "missed": [q for (q, _), y in zip(known, ok, strict=True) if not y],
            }
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "missed"}), flush=True)
    out["rows"] = rows
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
