"""The fixed evaluation sets: general QA, few-shot tasks and general text.

The retention, few-shot and perplexity suites need data that does not come from
the memories.  Nothing is downloaded: small sets are built into the package,
deterministically (same items on every machine, so a champion's cached scores
stay comparable), and a user replaces any of them with their own JSONL in the
store:

============================  ==============================================
file (first match wins)        one JSON object per line
============================  ==============================================
``<store>/<lineage>/eval/general_qa.jsonl``, then ``<store>/eval/general_qa.jsonl``
                               ``{"question": "...", "answer": "..."}``
``.../eval/fewshot.jsonl``     ``{"task": "...", "prompt": "...", "answer": "..."}``
                               (the prompt already holds the demonstrations)
``.../eval/general_text.jsonl`` ``{"text": "..."}``
============================  ==============================================

The built-in sets are deliberately small (tens of items): they catch gross
damage (a model that forgot how to answer or to write English), not fine
regressions; a production lineage should point to its own regression suite.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec

GENERAL_QA_FILE = "general_qa.jsonl"
FEWSHOT_FILE = "fewshot.jsonl"
GENERAL_TEXT_FILE = "general_text.jsonl"


@dataclass(frozen=True)
class QAPair:
    """A question with a short reference answer (scored by containment)."""

    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class FewShotItem:
    """A prompt that already holds k demonstrations, and the expected completion."""

    id: str
    task: str
    prompt: str
    answer: str


_GENERAL_QA: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of England?", "London"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("What do bees make?", "honey"),
    ("What color is the sky on a clear day?", "blue"),
    ("What color is grass?", "green"),
    ("How many days are in a week?", "seven"),
    ("How many legs does a spider have?", "eight"),
    ("What is frozen water called?", "ice"),
    ("What gas do plants take in from the air?", "carbon dioxide"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("Which animal is known as the king of the jungle?", "lion"),
    ("What is the boiling point of water in degrees Celsius?", "100"),
    ("What star is at the center of our solar system?", "Sun"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What language is spoken in Brazil?", "Portuguese"),
    ("How many continents are there?", "seven"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What do cows drink?", "water"),
    ("What is two plus two?", "four"),
    ("Which month comes after January?", "February"),
    ("What is the first letter of the English alphabet?", "A"),
    ("What instrument has black and white keys?", "piano"),
)

_GENERAL_TEXT: tuple[str, ...] = (
    "The sun rises in the east and sets in the west. During the day its light warms the land and the sea.",
    "Water boils at one hundred degrees Celsius at sea level. At higher altitudes it boils at a lower temperature.",
    "A library is a quiet place where people borrow books, read newspapers and study for exams.",
    "Many birds fly south for the winter. They return in the spring when the weather becomes warmer.",
    "The human heart pumps blood through the body. It beats about seventy times a minute when we rest.",
    "Bread is made from flour, water, salt and yeast. The dough rises before it is baked in a hot oven.",
    "Trains carry passengers between cities. Some modern trains travel faster than three hundred kilometres an hour.",
    "Plants need sunlight, water and air to grow. Their leaves turn light into the energy they need.",
    "The ocean covers most of the surface of the Earth. It is home to fish, whales, corals and countless small creatures.",
    "Children learn to read by sounding out letters and words. Over time reading becomes fast and automatic.",
    "A computer follows instructions written by programmers. Those instructions are called software.",
    "In autumn the leaves of many trees turn yellow, orange and red before they fall to the ground.",
    "Mountains are formed over millions of years as parts of the Earth's crust push against each other.",
    "A good night's sleep helps the brain store memories and prepares the body for the next day.",
    "Markets sell fresh vegetables, fruit, cheese and bread. Farmers bring their produce early in the morning.",
    "The moon goes around the Earth about once a month. Its shape in the sky seems to change as it moves.",
    "Rain falls when water droplets in clouds grow too heavy to stay in the air.",
    "Music can be played on many instruments, such as the guitar, the violin, the drum and the piano.",
    "Doctors and nurses work in hospitals, where they care for people who are sick or injured.",
    "A river flows from the mountains to the sea, carrying water, sand and small stones along its way.",
)


def general_qa() -> list[QAPair]:
    """The built-in general-knowledge set (short, unambiguous answers)."""
    return [QAPair(id=f"general-{i}", question=q, answer=a) for i, (q, a) in enumerate(_GENERAL_QA)]


def general_text() -> list[str]:
    """The built-in held-out general text (plain English, written for this package)."""
    return list(_GENERAL_TEXT)


def fewshot_items(*, shots: int = 3, per_task: int = 8, seed: int = 1234) -> list[FewShotItem]:
    """Deterministic few-shot tasks a model never trains on: each prompt holds ``shots`` demos.

    Task families: two-digit addition, next letter, word reversal, upper-casing.
    The RNG is seeded, so the items are identical everywhere.
    """
    rng = random.Random(seed)
    words = ["cat", "dog", "sun", "map", "pen", "cup", "box", "hat", "leaf", "tree", "lamp", "door"]

    def addition() -> tuple[str, str]:
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        return f"{a} + {b} =", str(a + b)

    def next_letter() -> tuple[str, str]:
        i = rng.randrange(25)
        return f"after {string.ascii_lowercase[i]} comes", string.ascii_lowercase[i + 1]

    def reverse() -> tuple[str, str]:
        w = rng.choice(words)
        return f"reverse {w} ->", w[::-1]

    def upper() -> tuple[str, str]:
        w = rng.choice(words)
        return f"upper {w} ->", w.upper()

    items: list[FewShotItem] = []
    for task, make in (("addition", addition), ("next_letter", next_letter), ("reverse", reverse), ("upper", upper)):
        for j in range(per_task):
            demos = [make() for _ in range(shots)]
            query, answer = make()
            prompt = "\n".join(f"{q} {a}" for q, a in demos) + f"\n{query}"
            items.append(FewShotItem(id=f"{task}-{j}", task=task, prompt=prompt, answer=answer))
    return items


def _read_jsonl(path: str) -> list[dict[str, object]]:
    with fsspec.open(path, "r", encoding="utf-8") as fh:
        text = fh.read()
    rows: list[dict[str, object]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object")
        rows.append(row)
    return rows


def _require(row: dict[str, object], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _override(store_dirs: Sequence[str], name: str) -> str | None:
    for folder in store_dirs:
        candidate = f"{str(folder).rstrip('/')}/eval/{name}"
        fs, path = fsspec.core.url_to_fs(candidate)
        if fs.isfile(path):
            return candidate
    return None


@dataclass(frozen=True)
class EvalSets:
    """The three fixed sets one evaluation uses, and where each came from."""

    general_qa: list[QAPair]
    fewshot: list[FewShotItem]
    general_text: list[str]
    sources: dict[str, str]


def load_eval_sets(store_dirs: Sequence[str]) -> EvalSets:
    """The fixed sets: a user's JSONL under ``<dir>/eval/`` for the first dir that has one, else built-in."""
    sources: dict[str, str] = {}
    path = _override(store_dirs, GENERAL_QA_FILE)
    if path:
        qa = [
            QAPair(
                id=str(row.get("id", f"general-{i}")),
                question=_require(row, "question", f"{path}:{i + 1}"),
                answer=_require(row, "answer", f"{path}:{i + 1}"),
            )
            for i, row in enumerate(_read_jsonl(path))
        ]
        sources["general_qa"] = path
    else:
        qa, sources["general_qa"] = general_qa(), "builtin"
    path = _override(store_dirs, FEWSHOT_FILE)
    if path:
        fs = [
            FewShotItem(
                id=str(row.get("id", f"fewshot-{i}")),
                task=str(row.get("task", "custom")),
                prompt=_require(row, "prompt", f"{path}:{i + 1}"),
                answer=_require(row, "answer", f"{path}:{i + 1}"),
            )
            for i, row in enumerate(_read_jsonl(path))
        ]
        sources["fewshot"] = path
    else:
        fs, sources["fewshot"] = fewshot_items(), "builtin"
    path = _override(store_dirs, GENERAL_TEXT_FILE)
    if path:
        text = [_require(row, "text", f"{path}:{i + 1}") for i, row in enumerate(_read_jsonl(path))]
        sources["general_text"] = path
    else:
        text, sources["general_text"] = general_text(), "builtin"
    return EvalSets(general_qa=qa, fewshot=fs, general_text=text, sources=sources)
