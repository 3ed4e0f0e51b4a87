"""Fictional people for benchmarks and demos on a real pretrained model.

Each person has a made-up full name and four facts (birth city, birth year,
occupation, instrument); the memory text states them in two sentences, and each
fact is asked in three phrasings (``qa``), none of which consolidation ever sees
(:mod:`reverie.workloads.data.heldout`).  Deterministic for a seed; no pretrained
model has met these people.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

_FIRST = [
    "Ivo",
    "Marta",
    "Tobin",
    "Elspeth",
    "Rurik",
    "Anouk",
    "Casimir",
    "Linnea",
    "Oswin",
    "Petra",
    "Dario",
    "Henrike",
    "Lazlo",
    "Mireille",
    "Bastian",
    "Noor",
    "Evander",
    "Sunniva",
    "Quill",
    "Albin",
    "Rosalind",
    "Teodor",
    "Ysolde",
    "Corvin",
    "Helka",
    "Fenwick",
    "Liesel",
    "Ambrose",
    "Odile",
    "Jory",
]
_LAST_A = [
    "Odd",
    "Brack",
    "Thorn",
    "Vell",
    "Marr",
    "Quen",
    "Ash",
    "Dorn",
    "Fenn",
    "Gault",
    "Hollin",
    "Kest",
    "Lorr",
    "Morv",
    "Pell",
    "Rask",
    "Sorr",
    "Tarr",
    "Ulm",
    "Wex",
]
_LAST_B = ["wyn", "stead", "ley", "mere", "holt", "by", "ford", "ingham", "wick", "aven", "dale", "rook"]
_CITIES = [
    "Porto",
    "Lyon",
    "Krakow",
    "Bergen",
    "Seville",
    "Tampere",
    "Ghent",
    "Trieste",
    "Valletta",
    "Bilbao",
    "Utrecht",
    "Gdansk",
    "Innsbruck",
    "Lucerne",
    "Aarhus",
    "Brno",
    "Cork",
    "Malmo",
    "Split",
    "Turin",
]
_JOBS = [
    "glassblower",
    "beekeeper",
    "cartographer",
    "clockmaker",
    "lighthouse keeper",
    "ferry captain",
    "bookbinder",
    "stonemason",
    "perfumer",
    "astronomer",
    "violin maker",
    "botanist",
    "baker",
    "locksmith",
    "potter",
    "translator",
    "blacksmith",
    "weaver",
    "surveyor",
    "falconer",
]
_INSTRUMENTS = [
    "bassoon",
    "harp",
    "accordion",
    "cello",
    "banjo",
    "oboe",
    "trumpet",
    "mandolin",
    "flute",
    "tuba",
    "clarinet",
    "zither",
]

# Three phrasings per fact; the memory text uses none of them as written.
QUESTIONS = {
    "city": ["Which city was {n} born in?", "Where is {n} from?", "What is the hometown of {n}?"],
    "year": ["In which year was {n} born?", "What year was {n} born?", "When was {n} born?"],
    "job": ["What does {n} do for a living?", "What is {n}'s job?", "What is the profession of {n}?"],
    "instrument": [
        "Which instrument does {n} play?",
        "What instrument does {n} play?",
        "What musical instrument is {n} known to play?",
    ],
}


@dataclass(frozen=True)
class Person:
    name: str
    city: str
    year: str
    job: str
    instrument: str

    @property
    def text(self) -> str:
        return (
            f"{self.name} was born in {self.city} in {self.year}. "
            f"{self.name} works as a {self.job} and plays the {self.instrument}."
        )

    def answers(self) -> dict[str, str]:
        return {"city": self.city, "year": self.year, "job": self.job, "instrument": self.instrument}

    def qa(self) -> list[dict[str, str]]:
        return [{"q": q.format(n=self.name), "a": a} for k, a in self.answers().items() for q in QUESTIONS[k]]


def make_people(n: int, *, seed: int, exclude: set[str] | None = None) -> list[Person]:
    """``n`` people with distinct names (none in ``exclude``), deterministic for ``seed``."""
    rng = random.Random(seed)
    taken = set(exclude or ())
    out: list[Person] = []
    while len(out) < n:
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST_A)}{rng.choice(_LAST_B)}"
        if name in taken:
            continue
        taken.add(name)
        out.append(
            Person(
                name=name,
                city=rng.choice(_CITIES),
                year=str(rng.randint(1890, 1990)),
                job=rng.choice(_JOBS),
                instrument=rng.choice(_INSTRUMENTS),
            )
        )
    return out


def memory_records(people: list[Person], *, prefix: str) -> list[dict[str, Any]]:
    """One memory per person, in the memory-set JSONL format, with its held-out ``qa``."""
    return [{"id": f"{prefix}-{i}", "text": p.text, "kind": "document", "qa": p.qa()} for i, p in enumerate(people)]
