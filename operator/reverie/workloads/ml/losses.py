"""The sleep's losses, each next to its formula.

Shapes: ``B`` sequences, ``L`` completion positions, ``V`` vocabulary, ``k`` the
teacher's cached top-k.  Logits are ``B × L × V``; masks ``B × L`` (1 on a
completion token, 0 on padding); every token-mean divides by the mask's sum.

``generalized_jsd`` — JSD_β(p_T ‖ p_S) on full logits (the on-policy stage).
``topk_forward_kl`` — KL(p_T ‖ p_S) over the teacher's cached top-k (self-study).
``imitation_reward`` / ``imitation_loss`` — Learning-to-Imitate's reward and its
    group-baseline policy gradient; ``knowledge_seeding_loss`` mixes the two terms.
Token cross-entropy and sequence log-probs are in :mod:`reverie.workloads.ml.lm`.
"""

from __future__ import annotations

import math
import re
from typing import Protocol

import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Token-mean generalized JSD_β(p_T ‖ p_S) (GKD, Agarwal et al. 2024).

    With M = β·p_T + (1 − β)·p_S:  JSD_β = β·KL(p_T ‖ M) + (1 − β)·KL(p_S ‖ M).
    β → 0 behaves like forward KL(p_T ‖ p_S), β = 1 is taken as reverse KL(p_S ‖ p_T)
    (the limits used by GKD and TRL, where the mixture form degenerates to 0).
    ``mask`` (batch × length) selects completion tokens.
    """
    s = F.log_softmax(student_logits.float(), -1)
    t = F.log_softmax(teacher_logits.float(), -1)
    if beta <= 0.0:
        per_token = (t.exp() * (t - s)).sum(-1)
    elif beta >= 1.0:
        per_token = (s.exp() * (s - t)).sum(-1)
    else:
        log_m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), 0)
        per_token = beta * (t.exp() * (t - log_m)).sum(-1) + (1 - beta) * (s.exp() * (s - log_m)).sum(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


def normalized_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance over characters divided by the longer length (0 identical, 1 disjoint)."""
    return float(Levenshtein.normalized_distance(a, b))


_WORD = re.compile(r"\w+")


def token_f1(a: str, b: str) -> float:
    """Word-overlap F1: the default CPU semantic-equivalence judge."""
    x, y = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    if not x or not y:
        return float(x == y)
    common = sum(min(x.count(w), y.count(w)) for w in set(x))
    if common == 0:
        return 0.0
    p, r = common / len(x), common / len(y)
    return 2 * p * r / (p + r)


class SemanticJudge(Protocol):
    """Decides whether two texts mean the same: 1.0 yes, 0.0 no (the paper's frozen reward model)."""

    def __call__(self, completion: str, reference: str) -> float: ...


def overlap_judge(completion: str, reference: str, *, threshold: float = 0.8) -> float:
    """Same meaning iff word-overlap F1 ≥ ``threshold`` (cheap, deterministic, CPU)."""
    return 1.0 if token_f1(completion, reference) >= threshold else 0.0


def imitation_reward(
    completion: str,
    reference: str,
    *,
    gamma: float,
    z0: float,
    judge: SemanticJudge = overlap_judge,
) -> float:
    """r = γ·r_sem + (1 − γ)·r_abs, with r_abs = 1 − z/max(|ŷ|, |d|) when that normalized z ≤ z₀, else 0."""
    z = normalized_edit_distance(completion, reference)
    r_abs = 1.0 - z if z <= z0 else 0.0
    return gamma * judge(completion, reference) + (1.0 - gamma) * r_abs


def imitation_loss(logp_sums: torch.Tensor, rewards: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Group-baseline policy gradient: −mean((r − mean_group r) · log p(ŷ)); rewards carry no gradient."""
    r = rewards.view(-1, group_size)
    advantage = (r - r.mean(dim=1, keepdim=True)).view(-1).detach()
    return -(advantage * logp_sums).mean()


def knowledge_seeding_loss(distill: torch.Tensor, imitation: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """L_KS = α · L_distill + (1 − α) · L_LTI (paper §3.3, written as a loss to minimise)."""
    return alpha * distill + (1.0 - alpha) * imitation


def topk_forward_kl(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Token-mean forward KL(p_T ‖ p_S) over the teacher's cached top-k (the β → 0 end of JSD_β).

    Σ_{v ∈ topk} p_T(v) · (log p_T(v) − log p_S(v)); padding slots carry log p_T = −inf (weight 0).
    The gradient on the student's logits is p_S − p_T (restricted): it raises a
    token the teacher wants even where the student gives it ≈ 0.
    """
    s = F.log_softmax(student_logits.float(), -1).gather(-1, topk_ids)
    p = topk_logprobs.exp()
    per_token = (p * (topk_logprobs.clamp(min=-1e4) - s)).sum(-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)
