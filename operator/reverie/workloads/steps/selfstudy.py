"""Self-study: the teacher writes consolidation's curriculum from each memory (the paper's set D).

Knowledge Seeding distils the teacher — the model before expansion, with one
memory in view — into the new slot.  What it distils *on* decides whether a fact
moves at all (``../shared/research/knowledge-injection.md``): the student's own
samples never reach a fact it does not know, and one phrasing per fact is not
extractable knowledge.  So, as in Cartridges' self-study (Eyuboglu et al. 2025),
the teacher writes the prompts itself, from several *seed kinds*, and answers
them greedily with the memory in view:

* ``question`` — a question that names the memory's subject and can be answered
  closed-book (written by the teacher, sampled);
* ``use_case`` — a question a user would ask that needs a fact of the memory
  (written by the teacher, sampled);
* ``summary`` — "Tell me about X", "Summarize what you know about X";
* ``restatement`` — the memory restated one fact per sentence with the full name
  in every sentence (Physics of LMs 3.1: the fact is stored on the name).

An answer is kept only when it is *grounded*: every number and every
capitalised word in it occurs in the memory, and it states at least one of the
memory's content words beyond the subject's name.  A looser filter lets "X is a
fictional character from a TV series" through.

The memory's ``qa`` pairs are evaluation probes and are never read here; a
prompt that happens to contain an evaluation question is dropped
(:mod:`reverie.workloads.data.heldout`).  The kept items and the teacher's top-k
log-probabilities of every answer token are computed once and saved with the
phase's outputs, so a training step needs no teacher forward and a resumed
attempt recomputes nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from reverie.workloads.data.facts import coverage, fact_items, facts
from reverie.workloads.data.memory import Memory, question_prompt
from reverie.workloads.data.questions import CONTENT_STOPWORDS, WORD, fixed_prompts, normalize_answer
from reverie.workloads.ml import distributed
from reverie.workloads.ml.lm import completion_logits, encode
from reverie.workloads.ml.sampling import SamplingBackend, active_adapters
from reverie.workloads.store.atomic import replacing

STUDY_DIR = "selfstudy"  # beside a sleep's consolidated memories
ITEMS_FILE = "items.jsonl"
TARGETS_FILE = "teacher-topk.safetensors"

# Replay of long-term knowledge: general requests answered without any memory (by
# the root with replay.anchorGeneral, else by the model before this sleep); a sleep
# replays the first ReplaySpec.general_prompts of them.  Disjoint from the evaluation's general-QA set
# (reverie.workloads.data.eval_sets) so that retention is never scored on a trained prompt.
GENERAL_REPLAY_PROMPTS = (
    "Write one sentence about the sea.",
    "Name three fruits.",
    "What is a library?",
    "Give me a tip for sleeping well.",
    "Describe a cat in one sentence.",
    "What is the tallest animal?",
    "Explain what rain is.",
    "Name a musical instrument with strings.",
    "What do people use an umbrella for?",
    "Write a short greeting for a friend.",
    "What is the color of snow?",
    "How many wheels does a bicycle have?",
    "What is a doctor's job?",
    "Name a vegetable that is orange.",
    "What is the sun?",
    "Why do people brush their teeth?",
    "What is a bridge for?",
    "Name two seasons of the year.",
    "What does a baker make?",
    "What is the largest country in South America?",
    # Beyond the first 20 (ReplaySpec.general_prompts chooses how many are replayed).
    "How many hours are in a day?",
    "What is a group of wolves called?",
    "Which animal gives us wool?",
    "What do fish use to breathe?",
    "How many minutes are in an hour?",
    "What tool do people use to cut paper?",
    "Which continent is Egypt in?",
    "What do caterpillars turn into?",
    "Who painted the Mona Lisa?",
    "What is the main ingredient of guacamole?",
    "How many sides does a triangle have?",
    "What do we call a person who writes books?",
    "Which bird is a symbol of peace?",
    "What is the hardest natural material?",
    "Which sense do we use our ears for?",
    "What shape is a ball?",
    "What do you call a baby dog?",
    "Which organ pumps blood through the body?",
    "What do plants grow from?",
    "Which meal is eaten in the morning?",
    "Write one sentence about the mountains.",
    "Give me a tip for learning a new language.",
    "Describe a rainy morning in one sentence.",
    "Explain what a map is for.",
    "Write a short thank-you note to a teacher.",
    "Name three colors of the rainbow.",
    "What is a farmer's job?",
    "Explain why we need to drink water.",
    "Describe a forest in one sentence.",
    "Give me one idea for a weekend activity.",
    "What is a calendar used for?",
    "Name two animals that live in the ocean.",
    "Write a sentence that uses the word 'bright'.",
    "What is the difference between a city and a village?",
    "Explain what a recipe is.",
    "Name a sport played with a ball.",
    "Write one sentence about the night sky.",
    "What does a firefighter do?",
    "Give me a tip for staying healthy.",
    "Describe a train station in one sentence.",
)

_NUMBER = re.compile(r"\d+")
_CAPITALISED = re.compile(r"\b[A-Z][\w'-]*")
# Capitalised words any answer may use without them being in the memory.
_FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "he",
        "she",
        "it",
        "they",
        "we",
        "i",
        "you",
        "his",
        "her",
        "their",
        "its",
        "this",
        "that",
        "these",
        "those",
        "in",
        "on",
        "at",
        "of",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "but",
        "as",
        "after",
        "before",
        "during",
        "when",
        "while",
        "where",
        "who",
        "what",
        "which",
        "yes",
        "no",
        "there",
        "here",
        "also",
        "born",
    ]
)


@dataclass(frozen=True)
class StudyItem:
    """One training item: the prompt the student sees (no memory) and the teacher's answer."""

    memory_id: str
    kind: str
    prompt: str
    answer: str
    replay: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StudyItem:
        return cls(**{k: raw[k] for k in ("memory_id", "kind", "prompt", "answer")}, replay=bool(raw.get("replay")))


def subject_of(text: str) -> str | None:
    """The memory's subject: the first run of capitalised words ("Ivo Oddwyn was born …" → "Ivo Oddwyn")."""
    words = WORD.findall(text)
    start = 0
    while start < len(words) and words[start].lower() in _FUNCTION_WORDS:
        start += 1
    run: list[str] = []
    for w in words[start:]:
        if w[0].isupper() and w.lower() not in _FUNCTION_WORDS:
            run.append(w)
            if len(run) == 4:
                break
        elif run:
            break
        else:
            return None
    return " ".join(run) or None


def _words(text: str) -> set[str]:
    return set(normalize_answer(text).split())


def grounded(answer: str, memory_text: str, *, subject: str | None = None) -> bool:
    """Whether an answer states only what the memory says, and states something.

    Every number and capitalised word of the answer occurs in the memory (function
    words excepted), and the answer shares a content word with the memory beyond
    the subject's name.
    """
    memory_words = _words(memory_text)
    if len(WORD.findall(answer)) < 3:
        return False
    if any(n not in _NUMBER.findall(memory_text) for n in _NUMBER.findall(answer)):
        return False
    for w in _CAPITALISED.findall(answer):
        lw = normalize_answer(w)
        if lw and lw not in _FUNCTION_WORDS and not set(lw.split()) <= memory_words:
            return False
    subject_words = _words(subject or "")
    content = {w for w in _words(answer) if len(w) >= 3 and w not in CONTENT_STOPWORDS} - subject_words
    return bool(content & memory_words)


def written_question(text: str, subject: str) -> str | None:
    """The question in a teacher's reply: its first line up to the first '?', naming the subject."""
    line = text.strip().split("\n", 1)[0].strip().strip('"')
    if "?" not in line:
        return None
    q = line[: line.index("?") + 1].strip()
    n = len(WORD.findall(q))
    names = _words(subject)
    if not (4 <= n <= 30) or not (names & _words(q)):
        return None
    return q


def writer_instructions(subject: str) -> list[tuple[str, str]]:
    """Instructions with which the teacher writes prompts (sampled; several per memory)."""
    return [
        (
            "question",
            f"Write one question about {subject} that the text above answers. "
            f"Use the full name {subject} in the question. Reply with the question only.",
        ),
        (
            "use_case",
            f"Write a question someone might ask about {subject} whose answer is a fact in the text above. "
            f"Name {subject} in it. Reply with the question only.",
        ),
    ]


def written_questions(
    backend: SamplingBackend,
    tokenizer: Any,
    memories: Sequence[Memory],
    *,
    per_memory: int,
    seed: int,
    adapters: Sequence[str] | None,
    in_context: bool = True,
) -> dict[str, list[tuple[str, str]]]:
    """Per memory, the (kind, question) pairs the teacher writes about it, memory in view (sampled at ``seed``).

    ``per_memory`` requests alternate between the :func:`writer_instructions`;
    a reply is kept when :func:`written_question` finds a question naming the
    subject in it.  Memories without a subject get no request.
    """
    subjects = {m.id: subject_of(m.text) for m in memories}
    requests: list[tuple[Memory, str, str]] = []
    for m in memories:
        subject = subjects[m.id]
        if subject is not None:
            kinds = writer_instructions(subject)
            requests += [(m, *kinds[i % len(kinds)]) for i in range(per_memory)]
    written = (
        backend.generate(
            [question_prompt(tokenizer, ins, context=m.text if in_context else None) for m, _, ins in requests],
            max_new_tokens=40,
            temperature=0.8,
            top_p=0.95,
            seed=seed,
            adapters=adapters,
        ).texts
        if requests
        else []
    )
    out: dict[str, list[tuple[str, str]]] = {m.id: [] for m in memories}
    for (m, kind, _), text in zip(requests, written, strict=True):
        q = written_question(text, subjects[m.id] or "")
        if q is not None:
            out[m.id].append((kind, q))
    return out


def summary_prompts(memories: Sequence[Memory], *, per_memory: int = 2) -> list[StudyItem]:
    """Replay prompts for memories that have no saved self-study set: their subjects' summary seeds.

    The answers are left empty: :func:`replay_items` asks the model for them.
    """
    out: list[StudyItem] = []
    for m in memories:
        subject = subject_of(m.text)
        if subject is not None:
            out += [
                StudyItem(memory_id=m.id, kind=k, prompt=p, answer="") for k, p in fixed_prompts(subject)[:per_memory]
            ]
    return out


def synthesize(
    backend: SamplingBackend,
    tokenizer: Any,
    memories: Sequence[Memory],
    *,
    adapters: Sequence[str],
    items_per_memory: int,
    seed: int,
    max_new_tokens: int,
    in_context: bool = True,
    writes_per_memory: int | None = None,
    fact_floor: int = 0,
    keep: Callable[[str], bool] = lambda _prompt: True,
    asked: Counter[str] | None = None,
) -> list[StudyItem]:
    """The self-study set of ``memories``: up to ``items_per_memory`` grounded items each, then the top-up.

    ``adapters`` are the teacher's slots; ``in_context=False`` is the tiny-model
    stand-in whose teacher holds the memories in a fast-weight adapter instead of
    its context.  ``keep(prompt)`` drops prompts (the held-out filter).  Every
    fact of a memory carried by fewer than ``fact_floor`` kept answers gets items
    built from the fact itself (:func:`top_up`).  ``asked`` counts the prompts
    asked per kind.
    """
    writes = writes_per_memory if writes_per_memory is not None else max(4, items_per_memory // 2)
    subjects = {m.id: subject_of(m.text) for m in memories}
    # 1. The teacher writes questions, with the memory in view (sampled, for variety).
    prompts = written_questions(
        backend,
        tokenizer,
        memories,
        per_memory=writes,
        seed=seed * 1_000_003 + 17,
        adapters=adapters,
        in_context=in_context,
    )
    for m in memories:
        subject = subjects[m.id]
        if subject is None:  # no name to ask about: continue the note instead
            head = " ".join(m.text.split()[:8])
            prompts[m.id].append(("summary", f"Continue this note: {head}"))
        else:
            prompts[m.id] = fixed_prompts(subject) + prompts[m.id]
    # 2. The teacher answers every prompt greedily, with the memory in view.
    asks: list[tuple[Memory, str, str]] = []
    for m in memories:
        seen: set[str] = set()
        for kind, p in prompts[m.id]:
            key = normalize_answer(p)
            if key in seen or not keep(p):
                continue
            seen.add(key)
            asks.append((m, kind, p))
    answers = (
        backend.generate(
            [question_prompt(tokenizer, p, context=m.text if in_context else None) for m, _, p in asks],
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            adapters=adapters,
        ).texts
        if asks
        else []
    )
    # 3. Keep grounded answers only, up to the budget per memory.
    out: list[StudyItem] = []
    count: dict[str, int] = {}
    for (m, kind, p), a in zip(asks, answers, strict=True):
        a = a.strip()
        if count.get(m.id, 0) >= items_per_memory or not grounded(a, m.text, subject=subjects[m.id]):
            continue
        count[m.id] = count.get(m.id, 0) + 1
        out.append(StudyItem(memory_id=m.id, kind=kind, prompt=p, answer=a))
    if asked is not None:
        asked.update(kind for _, kind, _ in asks)
    return out + top_up(out, memories, floor=fact_floor, keep=keep, asked=asked)


def top_up(
    items: Sequence[StudyItem],
    memories: Sequence[Memory],
    *,
    floor: int,
    keep: Callable[[str], bool] = lambda _prompt: True,
    asked: Counter[str] | None = None,
) -> list[StudyItem]:
    """Items for the facts fewer than ``floor`` of ``items`` carry: the blank over the fact, the reverse direction.

    Their answers are the fact itself, on the subject's name; the teacher's
    targets on them are taken with the memory in view like every other item's.
    """
    if floor <= 0:
        return []
    out: list[StudyItem] = []
    for m in memories:
        subject = subject_of(m.text)
        if subject is None:
            continue
        answers = [i.answer for i in items if i.memory_id == m.id]
        fact_list = facts(m.text, subject)
        for fact, n in zip(fact_list, coverage(answers, fact_list, subject=subject), strict=True):
            for kind, prompt, answer in fact_items(fact, subject)[: max(0, floor - n)]:
                if asked is not None:
                    asked[kind] += 1
                if keep(prompt):
                    out.append(StudyItem(memory_id=m.id, kind=kind, prompt=prompt, answer=answer))
    return out


def fact_coverage(items: Sequence[StudyItem], memories: Sequence[Memory]) -> list[int]:
    """How many of ``items`` carry each fact of each memory (memories without a subject left out)."""
    out: list[int] = []
    for m in memories:
        subject = subject_of(m.text)
        if subject is not None:
            answers = [i.answer for i in items if i.memory_id == m.id and not i.replay]
            out += coverage(answers, facts(m.text, subject), subject=subject)
    return out


def replay_items(
    backend: SamplingBackend,
    tokenizer: Any,
    *,
    adapters: Sequence[str],
    prior: Sequence[StudyItem],
    max_new_tokens: int,
    general: Sequence[str],
) -> list[StudyItem]:
    """Long-term knowledge to rehearse: earlier sleeps' study prompts and general requests.

    Answers come from ``adapters`` without any memory (the model before this sleep, its
    earlier slots active; for anchored general requests the root): replay pulls the new
    slot towards what those weights already do.
    """
    prompts = [("prior", i.prompt, i.memory_id) for i in prior] + [("general", g, "general") for g in general]
    if not prompts:
        return []
    out = backend.generate(
        [question_prompt(tokenizer, p) for _, p, _ in prompts],
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        adapters=adapters,
    ).texts
    return [
        StudyItem(memory_id=mid, kind=kind, prompt=p, answer=a.strip(), replay=True)
        for (kind, p, mid), a in zip(prompts, out, strict=True)
        if a.strip()
    ]


# ----------------------------------------------------------------------------- teacher targets


@dataclass
class TeacherTargets:
    """The teacher's top-k next-token log-probs at every answer token (items × tokens × k)."""

    answer_ids: list[list[int]]
    topk_ids: torch.Tensor  # int64, N × L × k (padded with 0)
    topk_logprobs: torch.Tensor  # float32, N × L × k (padded with -inf)

    def __len__(self) -> int:
        return len(self.answer_ids)


def answer_tokens(tokenizer: Any, answer: str, *, max_tokens: int) -> list[int]:
    """The answer's tokens, closed with eos when it fits (the teacher stopped there)."""
    ids = encode(tokenizer, answer)[:max_tokens]
    return [*ids, tokenizer.eos_token_id] if len(ids) < max_tokens else ids


@torch.no_grad()
def teacher_targets(
    model: Any,
    tokenizer: Any,
    items: Sequence[StudyItem],
    *,
    teacher_prompts: Sequence[str],
    adapters_of: Callable[[StudyItem], Sequence[str]],
    k: int,
    max_tokens: int,
    batch_size: int = 16,
) -> TeacherTargets:
    """Run the teacher once over every item's answer and keep its top-k log-probs per token."""
    answers = [answer_tokens(tokenizer, i.answer, max_tokens=max_tokens) for i in items]
    width = max((len(a) for a in answers), default=1)
    ids = torch.zeros(len(items), width, k, dtype=torch.long)
    lps = torch.full((len(items), width, k), float("-inf"))
    was_training = model.training
    model.eval()
    groups: dict[tuple[str, ...], list[int]] = {}
    for n, item in enumerate(items):
        groups.setdefault(tuple(adapters_of(item)), []).append(n)
    for adapters, rows in groups.items():
        with active_adapters(model, list(adapters)):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                logits, _, _ = completion_logits(
                    model,
                    tokenizer,
                    [encode(tokenizer, teacher_prompts[r]) for r in chunk],
                    [answers[r] for r in chunk],
                )
                top = F.log_softmax(logits.float(), -1).topk(k, dim=-1)
                for j, r in enumerate(chunk):
                    n_tok = len(answers[r])
                    ids[r, :n_tok] = top.indices[j, :n_tok].cpu()
                    lps[r, :n_tok] = top.values[j, :n_tok].cpu()
    model.train(was_training)
    return TeacherTargets(answer_ids=answers, topk_ids=ids, topk_logprobs=lps)


# ----------------------------------------------------------------------------- persistence


def save_study(folder: str | Path, items: Sequence[StudyItem], targets: TeacherTargets) -> Path:
    """Write the items and the teacher's targets; the targets file is written last (it marks completeness)."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ITEMS_FILE).write_text(
        "".join(
            json.dumps({**i.to_json(), "answer_ids": a}) + "\n" for i, a in zip(items, targets.answer_ids, strict=True)
        )
    )
    with replacing(folder / TARGETS_FILE) as tmp:
        save_file({"topk_ids": targets.topk_ids, "topk_logprobs": targets.topk_logprobs}, str(tmp))
    return folder


def read_items(path: str | Path) -> list[StudyItem]:
    """The study items of a saved set (a folder or its items file), through fsspec."""

    uri = str(path)
    if not uri.endswith(".jsonl"):
        uri = uri.rstrip("/") + "/" + ITEMS_FILE
    with fsspec.open(uri, "r", encoding="utf-8") as fh:
        return [StudyItem.from_json(json.loads(line)) for line in fh if line.strip()]


def load_study(folder: str | Path) -> tuple[list[StudyItem], TeacherTargets] | None:
    """A complete saved set, or None when there is none (or it was cut off before its targets)."""

    folder = Path(folder)
    if not (folder / TARGETS_FILE).exists() or not (folder / ITEMS_FILE).exists():
        return None
    rows = [json.loads(line) for line in (folder / ITEMS_FILE).read_text().splitlines() if line.strip()]
    t = load_file(str(folder / TARGETS_FILE))
    items = [StudyItem.from_json(r) for r in rows]
    return items, TeacherTargets(
        answer_ids=[list(r["answer_ids"]) for r in rows], topk_ids=t["topk_ids"], topk_logprobs=t["topk_logprobs"]
    )


def sharded_teacher_targets(
    world: distributed.World,
    model: Any,
    tokenizer: Any,
    items: Sequence[Any],
    *,
    teacher_prompts: Sequence[str],
    adapters_of: Callable[[Any], Sequence[str]],
    k: int,
    max_tokens: int,
    batch_size: int = 16,
    forwards: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> TeacherTargets:
    """:func:`reverie.workloads.steps.selfstudy.teacher_targets` with its batches split across ranks.

    The rows are grouped and batched as one process groups them; each rank runs
    whole batches, so the gathered targets equal the one-process targets.
    """
    if not world.distributed:
        with forwards():
            return teacher_targets(
                model,
                tokenizer,
                items,
                teacher_prompts=teacher_prompts,
                adapters_of=adapters_of,
                k=k,
                max_tokens=max_tokens,
                batch_size=batch_size,
            )
    groups: dict[tuple[str, ...], list[int]] = {}
    for n, item in enumerate(items):
        groups.setdefault(tuple(adapters_of(item)), []).append(n)
    batches = [rows[s : s + batch_size] for rows in groups.values() for s in range(0, len(rows), batch_size)]
    mine = sorted(r for b in batches[world.rank :: world.size] for r in b)
    with forwards():
        part = (
            teacher_targets(
                model,
                tokenizer,
                [items[r] for r in mine],
                teacher_prompts=[teacher_prompts[r] for r in mine],
                adapters_of=adapters_of,
                k=k,
                max_tokens=max_tokens,
                batch_size=batch_size,
            )
            if mine
            else None
        )
    rows = [(r, (part.topk_ids[j], part.topk_logprobs[j])) for j, r in enumerate(mine)] if part else []
    answers = [answer_tokens(tokenizer, i.answer, max_tokens=max_tokens) for i in items]
    width = max((len(a) for a in answers), default=1)
    ids = torch.zeros(len(items), width, k, dtype=torch.long)
    lps = torch.full((len(items), width, k), float("-inf"))
    for r, (i, lp) in enumerate(distributed.merge_indexed(world, len(items), rows)):
        n_tok = len(answers[r])
        ids[r, :n_tok], lps[r, :n_tok] = i[:n_tok], lp[:n_tok]
    return TeacherTargets(answer_ids=answers, topk_ids=ids, topk_logprobs=lps)
