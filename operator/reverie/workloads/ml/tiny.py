"""Tiny models and fictional facts, built locally in seconds, for tests, local mode and demos.

Nothing here downloads anything.  A *world* is a set of fictional people, each
with a few attributes (``Zorblat lives in Vemora.``); its facts become memory
documents (the JSONL format of :mod:`reverie.workloads.data.memory`) and closed-book
questions.  The tokenizer is a byte-level BPE trained on the world's own text and
built as the model type's own tokenizer class (``Qwen2Tokenizer``), with pad
``<|pad|>``, eos ``<|im_end|>``, left padding and a ChatML chat template: wrapping
it as a generic fast tokenizer would change token ids after a save/reload,
because ``AutoTokenizer`` rebuilds it from the model type.

:func:`build_base_generation` writes a ready generation folder: a tiny Qwen2
pretrained (all weights, a few hundred steps) on the OLD facts, so retention can
be measured, and on neutral mentions of every person, so that the new people's
names have trained embeddings (as in a real LM) without their facts leaking.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

from reverie.workloads.data.memory import question_prompt
from reverie.workloads.data.questions import fixed_prompts
from reverie.workloads.ml.expansion import add_slot
from reverie.workloads.ml.lm import sft_loss
from reverie.workloads.store.modelio import save_generation

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|im_end|>"
BOS_TURN_TOKEN = "<|im_start|>"
UNK_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [UNK_TOKEN, BOS_TURN_TOKEN, EOS_TOKEN, PAD_TOKEN]

# ChatML; the assistant turn is wrapped in {% generation %} so TRL can build
# assistant-only loss masks.  Newlines are written as expressions because the
# template engine trims the newline that follows a block tag.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SYLLABLES = [
    "zor",
    "bla",
    "ven",
    "qui",
    "mar",
    "tol",
    "dra",
    "fen",
    "kil",
    "sor",
    "nim",
    "bex",
    "tav",
    "lu",
    "rho",
    "gan",
    "pel",
    "ost",
    "vir",
    "yul",
    "cas",
    "dun",
    "ek",
    "mo",
]


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: how it is asked and how a document states it."""

    name: str
    question: str  # format with {entity}
    sentence: str  # format with {entity} and {value}


ATTRIBUTES: dict[str, Attribute] = {
    "city": Attribute("city", "Where does {entity} live?", "{entity} lives in {value}."),
    "pet": Attribute("pet", "What is the name of {entity}'s pet?", "{entity} has a pet named {value}."),
    "craft": Attribute("craft", "What does {entity} build?", "{entity} builds {value}."),
}


@dataclass(frozen=True)
class Fact:
    """``entity`` has ``value`` for ``attribute``."""

    entity: str
    attribute: str
    value: str

    @property
    def question(self) -> str:
        return ATTRIBUTES[self.attribute].question.format(entity=self.entity)

    @property
    def answer(self) -> str:
        return self.value

    @property
    def sentence(self) -> str:
        return ATTRIBUTES[self.attribute].sentence.format(entity=self.entity, value=self.value)


@dataclass
class FactWorld:
    """Fictional people and their facts; ``facts_of(entity)`` lists one person's facts."""

    entities: list[str]
    attributes: list[str]
    values: dict[str, list[str]]  # attribute -> pool of possible values
    facts: list[Fact] = field(default_factory=list)

    def facts_of(self, entities: Iterable[str]) -> list[Fact]:
        wanted = set(entities)
        return [f for f in self.facts if f.entity in wanted]

    def all_text(self) -> list[str]:
        """Every string the world can produce (to train a tokenizer on)."""
        out = [f.sentence for f in self.facts] + [f.question for f in self.facts]
        out += [mention(e) for e in self.entities]
        out += [v for pool in self.values.values() for v in pool]
        return out


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def make_world(
    n_entities: int,
    *,
    seed: int = 0,
    attributes: Sequence[str] = ("city", "pet"),
    values_per_attribute: int = 16,
) -> FactWorld:
    """A world of ``n_entities`` fictional people, each with one value per attribute.

    Values come from a shared pool per attribute, so old and new people use the
    same value words: learning a new fact means binding a known value to a name.
    """
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(syllables: int) -> str:
        while True:
            w = _word(rng, syllables)
            if w not in used:
                used.add(w)
                return w

    entities = [fresh(3) for _ in range(n_entities)]
    values = {a: [fresh(2) for _ in range(values_per_attribute)] for a in attributes}
    facts = [Fact(e, a, rng.choice(values[a])) for e in entities for a in attributes]
    return FactWorld(entities=entities, attributes=list(attributes), values=values, facts=facts)


def tell_prompt(entity: str) -> str:
    """The restatement request a tiny model learns to answer ("Tell me about X." -> X's sentences).

    A real model follows any instruction; a tiny one knows only the turns it was
    pretrained on.  Pretraining old people in both forms (question -> value,
    this request -> the sentences) lets a sleep teach new people through the
    request alone and be scored on the questions, which it never trains on.
    """
    return fixed_prompts(entity)[0][1]


def mention(entity: str) -> str:
    """A neutral sentence naming a person without revealing any fact."""
    return f"{entity} is a person."


def memory_records(facts: Sequence[Fact], *, prefix: str = "mem") -> list[dict[str, Any]]:
    """One memory document per person: its sentences, with the questions and answers."""
    by_entity: dict[str, list[Fact]] = {}
    for f in facts:
        by_entity.setdefault(f.entity, []).append(f)
    return [
        {
            "id": f"{prefix}-{i}",
            "text": " ".join(f.sentence for f in fs),
            "qa": [{"q": f.question, "a": f.answer} for f in fs],
            "kind": "document",
        }
        for i, fs in enumerate(by_entity.values())
    ]


def write_memories_jsonl(path: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write memory records as JSONL (one object per line)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return p


def build_tokenizer(corpus: Iterable[str], *, vocab_size: int = 512) -> Qwen2Tokenizer:
    """Train a byte-level BPE on ``corpus`` and wrap it as a ``Qwen2Tokenizer`` (ChatML, left padding)."""
    chat_words = ["user", "assistant", "system", "\n"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat each line so that whole words win merges over rare pairs.
    bpe.train_from_iterator([*list(corpus), *chat_words] * 2, trainer)
    model = json.loads(bpe.to_str())["model"]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],  # type: ignore[misc]  # pairs, as the tokenizer expects
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=None,
        padding_side="left",
    )
    tok.add_special_tokens({"additional_special_tokens": [BOS_TURN_TOKEN, EOS_TOKEN]})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_config(
    tokenizer: Qwen2Tokenizer,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 256,
    num_hidden_layers: int = 2,
) -> Qwen2Config:
    """A few-layer Qwen2 config sized to the tokenizer (≈0.1M parameters by default)."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
    )


def build_tiny_model(tokenizer: Qwen2Tokenizer, *, seed: int = 0, **config: Any) -> Qwen2ForCausalLM:
    """A randomly initialised tiny Qwen2 for ``tokenizer`` (deterministic under ``seed``)."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(tokenizer, **config))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.do_sample = False
    return model


def qa_text(tokenizer: Qwen2Tokenizer, question: str, answer: str) -> tuple[str, str]:
    """(prompt, completion) of one chat turn; the completion ends with eos."""

    return question_prompt(tokenizer, question), answer + tokenizer.eos_token


def pretrain(
    model: torch.nn.Module,
    tokenizer: Qwen2Tokenizer,
    *,
    facts: Sequence[Fact],
    mention_entities: Sequence[str],
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    mention_share: float = 0.25,
    params: Iterable[torch.nn.Parameter] | None = None,
) -> float:
    """Teach ``model`` the closed-book answers to ``facts`` (plus neutral mentions); returns the last loss."""
    rng = random.Random(seed)
    pairs = [qa_text(tokenizer, f.question, f.answer) for f in facts]
    by_entity: dict[str, list[Fact]] = {}
    for f in facts:
        by_entity.setdefault(f.entity, []).append(f)
    pairs += [qa_text(tokenizer, tell_prompt(e), " ".join(f.sentence for f in fs)) for e, fs in by_entity.items()]
    mentions = [qa_text(tokenizer, f"Who is {e}?", mention(e)) for e in mention_entities]
    trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = [
            rng.choice(mentions) if mentions and rng.random() < mention_share else rng.choice(pairs)
            for _ in range(batch_size)
        ]
        loss = sft_loss(model, tokenizer, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    model.eval()
    return float(loss.detach())


@dataclass
class TinyBase:
    """A tiny base generation on disk and the world it was built from."""

    folder: Path
    world: FactWorld
    old: list[Fact]
    new: list[list[Fact]]  # one list per later wake session
    final_loss: float


def build_base_generation(
    folder: str | Path,
    *,
    seed: int = 0,
    n_old: int = 16,
    n_new: Sequence[int] = (8, 8),
    attributes: Sequence[str] = ("city",),
    values_per_attribute: int = 12,
    steps: int = 400,
    hidden_size: int = 64,
    intermediate_size: int = 256,
    num_hidden_layers: int = 2,
) -> TinyBase:
    """Write a tiny base generation that knows the OLD facts closed-book; NEW people are only mentioned.

    ``n_new`` gives the number of people per later wake session (their facts are
    returned, for the tests to put in fast memory).  Takes a few seconds on one thread.
    """

    world = make_world(n_old + sum(n_new), seed=seed, attributes=attributes, values_per_attribute=values_per_attribute)
    old_entities = world.entities[:n_old]
    new_groups: list[list[Fact]] = []
    start = n_old
    for n in n_new:
        new_groups.append(world.facts_of(world.entities[start : start + n]))
        start += n
    tokenizer = build_tokenizer(world.all_text())
    model = build_tiny_model(
        tokenizer,
        seed=seed,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
    )
    old = world.facts_of(old_entities)
    loss = pretrain(model, tokenizer, facts=old, mention_entities=world.entities, steps=steps, seed=seed)
    out = save_generation(model, tokenizer, folder)
    return TinyBase(folder=out, world=world, old=old, new=new_groups, final_loss=loss)


def wake_fast_memory(
    model: Any,
    tokenizer: Qwen2Tokenizer,
    facts: Sequence[Fact],
    *,
    name: str = "fast",
    rank: int = 8,
    steps: int = 150,
    lr: float = 1e-2,
    seed: int = 0,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
) -> Any:
    """The fast-weight stand-in for in-context memory: a LoRA adapter ``name`` that learns ``facts`` by SFT.

    A tiny CPU model cannot recall facts from its context, so "wake" writes them
    into fast weights instead; the teacher uses this adapter, the student does not.
    Earlier slots stay active (and frozen) underneath.  Returns the PEFT model.
    """

    torch.manual_seed(seed)
    earlier = list(getattr(model, "peft_config", {}) or {})
    model, _ = add_slot(model, rank=rank, target_modules=target_modules, name=name, keep_active=earlier)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    pretrain(
        model, tokenizer, facts=facts, mention_entities=[], steps=steps, lr=lr, seed=seed, params=params, batch_size=16
    )
    for p in params:
        p.requires_grad_(False)
    return model
