"""Language-model batches and the token log-likelihoods every workload trains or scores on.

Two batch layouts, both with position ids counting real tokens only:

* :func:`completion_logits` (token ids in): prompts left-padded, completions
  right-padded after them, the LM head applied to the completion positions
  alone (``logits_to_keep``: on a 49k vocabulary the head over the prompt would
  cost more than the model), so completion position t lines up with a cached
  teacher target t.  Consolidation's distillation and self-study, dreaming's
  M-step and every (prompt, target) likelihood (:func:`target_nll`,
  :func:`completion_nll`) use it; :func:`pair_tokens` turns text pairs into it.
* :func:`lm_batch` (text in): whole sequences left-padded, as at generation
  time.  :func:`sft_loss` uses it: dreaming's isolated probe update, the naive
  SFT baseline and the tiny test models' pretraining.

The losses on top are the same few lines for every workload: the token-mean
NLL (:func:`answer_cross_entropy`, :func:`sft_loss`) and the per-sequence
log-likelihood (:func:`sequence_logprobs`, :func:`target_nll`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def pack(
    tokenizer: Any,
    prompts: Sequence[list[int]],
    completions: Sequence[list[int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-pad prompts, right-pad completions; returns ids, attention mask, position ids, prompt width."""
    width_p = max(len(p) for p in prompts)
    width_c = max(1, max(len(c) for c in completions))
    pad = tokenizer.pad_token_id
    ids = torch.full((len(prompts), width_p + width_c), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[row, width_p - len(p) : width_p] = torch.tensor(p, dtype=torch.long)
        mask[row, width_p - len(p) : width_p] = 1
        if c:
            ids[row, width_p : width_p + len(c)] = torch.tensor(c, dtype=torch.long)
            mask[row, width_p : width_p + len(c)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, width_p


def completion_logits(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    completions: Sequence[list[int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits predicting each completion token (batch × L × V), the completion mask and the targets (batch × L).

    Only the completion positions go through the LM head (``logits_to_keep``):
    on a 49k vocabulary the head over the prompt would cost more than the model.
    """
    ids, mask, positions, width_p = pack(tokenizer, prompts, completions)
    device = next(model.parameters()).device
    length = ids.shape[1] - width_p
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        logits_to_keep=length + 1,
    )
    logits = out.logits[:, :length]
    return logits, mask[:, width_p:].to(device), ids[:, width_p:].to(device)


def answer_cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean −log p_S(y_t) of the teacher's answer tokens."""
    lp = F.log_softmax(student_logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    m = mask.to(lp.dtype)
    return -(lp * m).sum() / m.sum().clamp(min=1.0)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p(y_t) per sequence, over masked completion tokens."""
    lp = F.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (lp * mask.to(lp.dtype)).sum(-1)


def lm_batch(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``(ids, attention_mask, labels)`` of whole (prompt, target) text sequences; labels on targets only.

    With an empty prompt the target's first token has nothing to be predicted
    from, so it is context, not label.
    """
    rows = [(encode(tokenizer, prompt) if prompt else [], encode(tokenizer, target)) for prompt, target in pairs]
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (p, t) in enumerate(rows):
        seq = p + t
        start = width - len(seq)  # left padding, as at generation time
        ids[r, start:] = torch.tensor(seq, dtype=torch.long)
        mask[r, start:] = 1
        first = max(len(p), 1)
        labels[r, start + first :] = torch.tensor(seq[first:], dtype=torch.long)
    return ids, mask, labels


def next_token_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits at every position but the last (each predicts the next token), as float."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, :-1].float()  # type: ignore[no-any-return]


def sft_loss(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """L_SFT: the mean token NLL of the targets after their prompts (whole sequences in the batch)."""
    ids, mask, labels = lm_batch(tokenizer, pairs)
    logits = next_token_logits(model, ids, mask)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)


def pair_tokens(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, target ids) of text pairs for :func:`completion_logits`.

    With an empty prompt the target's first token has nothing to be predicted
    from, so it becomes the prompt (context, not label), as in :func:`lm_batch`.
    """
    prompts, targets = [], []
    for prompt, target in pairs:
        p, t = (encode(tokenizer, prompt) if prompt else []), encode(tokenizer, target)
        if not p:
            p, t = t[:1], t[1:]
        prompts.append(p)
        targets.append(t)
    return prompts, targets


def token_nll(
    model: Any, tokenizer: Any, prompts: Sequence[list[int]], completions: Sequence[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (summed NLL of the completion after its prompt, its token count), with gradient where enabled."""
    logits, mask, targets = completion_logits(model, tokenizer, prompts, completions)
    return -sequence_logprobs(logits, targets, mask), mask.sum(1)


def target_nll(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair (summed NLL of the target's tokens, their count), with gradient where the caller enables it."""
    return token_nll(model, tokenizer, *pair_tokens(tokenizer, pairs))


@torch.no_grad()
def target_logprobs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """log p(target | prompt), summed over the target's tokens, of each pair."""
    return [float(x) for x in -target_nll(model, tokenizer, pairs)[0]]


@torch.no_grad()
def text_nll(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16) -> list[tuple[float, int]]:
    """Summed next-token NLL (nats) and scored-token count of each text (its first token is context)."""
    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logits = next_token_logits(model, ids, mask)
        target = ids[:, 1:]
        valid = mask[:, 1:].bool() & mask[:, :-1].bool()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none").view_as(target)
        for row in range(ids.shape[0]):
            out.append((float(nll[row][valid[row]].sum()), int(valid[row].sum())))
    model.train(was_training)
    return out


@torch.no_grad()
def completion_nll(
    model: Any, tokenizer: Any, prompts: Sequence[list[int]], completions: Sequence[list[int]]
) -> list[tuple[float, int]]:
    """Summed NLL (nats) of each completion after its prompt, and its token count (one batch)."""
    nll, counted = token_nll(model, tokenizer, prompts, completions)
    return [(float(n), int(m)) for n, m in zip(nll.tolist(), counted.tolist(), strict=True)]
