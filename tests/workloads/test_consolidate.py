"""Knowledge Seeding's losses and data, checked against their definitions (paper §2.4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reverie.api.steps import ConsolidationSpec
from reverie.workloads.data.memory import QA, Memory
from reverie.workloads.ml.lm import answer_cross_entropy
from reverie.workloads.ml.losses import (
    generalized_jsd,
    imitation_loss,
    imitation_reward,
    knowledge_seeding_loss,
    token_f1,
    topk_forward_kl,
)
from reverie.workloads.ml.tiny import build_tokenizer
from reverie.workloads.steps.knowledge_seeding import Cue, LoopKnobs, step_batch, study_cues
from reverie.workloads.steps.selfstudy import StudyItem


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    return (p_log.exp() * (p_log - q_log)).sum(-1)


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 11, generator=g), torch.randn(2, 3, 11, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return s, t, mask


def test_jsd_limits_are_forward_and_reverse_kl(logits) -> None:
    s, t, mask = logits
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    m = mask.float()
    fwd = (kl(lt, ls) * m).sum() / m.sum()
    rev = (kl(ls, lt) * m).sum() / m.sum()
    assert generalized_jsd(s, t, mask, beta=0.0).item() == pytest.approx(fwd.item(), rel=1e-5)
    assert generalized_jsd(s, t, mask, beta=1.0).item() == pytest.approx(rev.item(), rel=1e-5)


def test_jsd_matches_its_mixture_definition_and_masks(logits) -> None:
    s, t, mask = logits
    beta = 0.3
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)
    mix = (beta * pt + (1 - beta) * ps).log()
    per = beta * kl(pt.log(), mix) + (1 - beta) * kl(ps.log(), mix)
    expected = (per * mask).sum() / mask.sum()
    assert generalized_jsd(s, t, mask, beta=beta).item() == pytest.approx(expected.item(), rel=1e-5)
    s2 = s.clone()
    s2[0, 2] += 100.0  # a masked position cannot matter
    assert generalized_jsd(s2, t, mask, beta=beta).item() == pytest.approx(expected.item(), rel=1e-5)
    assert generalized_jsd(t, t, mask, beta=beta).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= generalized_jsd(s, t, mask, beta=0.5).item() <= math.log(2) + 1e-6


def test_imitation_reward_mixes_semantics_and_edit_similarity() -> None:
    assert imitation_reward("Vemora", "Vemora", gamma=0.5, z0=0.5) == pytest.approx(1.0)
    # One edit in ten characters: r_abs = 0.9; the overlap judge sees different words.
    assert imitation_reward("Vemora abc", "Vemora abd", gamma=0.0, z0=0.5) == pytest.approx(0.9)
    assert imitation_reward("Vemora abc", "Vemora abd", gamma=1.0, z0=0.5) == pytest.approx(0.0)
    # Beyond the threshold z0 the edit part is zero.
    assert imitation_reward("xyz", "Vemora", gamma=0.0, z0=0.5) == 0.0
    judge_yes = imitation_reward("q", "Vemora", gamma=0.5, z0=0.1, judge=lambda a, b: 1.0)
    assert judge_yes == pytest.approx(0.5)
    assert token_f1("lives in Vemora", "Vemora") == pytest.approx(0.5)


def test_imitation_loss_uses_a_group_baseline() -> None:
    logp = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])  # second group: equal rewards → no signal
    loss = imitation_loss(logp, rewards, group_size=2)
    loss.backward()
    assert logp.grad is not None
    assert logp.grad.tolist() == pytest.approx([-0.125, 0.125, 0.0, 0.0])


def test_knowledge_seeding_loss_is_the_alpha_mix() -> None:
    d, i = torch.tensor(2.0), torch.tensor(-1.0)
    assert knowledge_seeding_loss(d, i, alpha=0.9).item() == pytest.approx(0.9 * 2.0 + 0.1 * -1.0)
    assert knowledge_seeding_loss(d, i, alpha=1.0).item() == pytest.approx(2.0)


def test_settings_take_the_paper_knobs_from_the_spec() -> None:
    spec = ConsolidationSpec.model_validate(
        {
            "alpha": 0.7,
            "beta": 1.0,
            "lambda": 0.25,
            "gamma": 0.2,
            "z0": 0.3,
            "replayRatio": 0.4,
            "imitationGroupSize": 6,
        }
    )
    assert (spec.alpha, spec.beta, spec.lam, spec.gamma, spec.z0, spec.replay_ratio, spec.imitation_group_size) == (
        0.7,
        1.0,
        0.25,
        0.2,
        0.3,
        0.4,
        6,
    )
    assert LoopKnobs(teacher_temperature=0.5).teacher_temperature == 0.5


def test_topk_forward_kl_is_the_forward_kl_over_the_teachers_support(logits) -> None:
    s, t, mask = logits
    lt = F.log_softmax(t, -1)
    # With k = V the top-k form is the full forward KL, i.e. JSD at beta = 0.
    top = lt.topk(lt.shape[-1], dim=-1)
    full = topk_forward_kl(s, top.indices, top.values, mask)
    assert full.item() == pytest.approx(generalized_jsd(s, t, mask, beta=0.0).item(), rel=1e-5)
    assert topk_forward_kl(t, top.indices, top.values, mask).item() == pytest.approx(0.0, abs=1e-6)
    # Padding slots (log p = -inf) carry no weight.
    top3 = lt.topk(3, dim=-1)
    padded_ids = torch.cat([top3.indices, torch.zeros_like(top3.indices[..., :1])], -1)
    padded_lp = torch.cat([top3.values, torch.full_like(top3.values[..., :1], float("-inf"))], -1)
    assert topk_forward_kl(s, padded_ids, padded_lp, mask).item() == pytest.approx(
        topk_forward_kl(s, top3.indices, top3.values, mask).item(), rel=1e-6
    )


def test_forward_kl_raises_a_token_the_student_gives_almost_no_probability() -> None:
    """The reason for stage 1: reverse KL's gradient on a ~0-probability fact token vanishes; forward KL's does not."""
    s = torch.zeros(1, 1, 5)
    s[0, 0, 4] = -20.0  # the fact token: p_S ~ 1e-9
    s.requires_grad_(True)
    t = torch.full((1, 1, 5), -20.0)
    t[0, 0, 4] = 5.0  # the teacher is sure of it
    mask = torch.ones(1, 1)
    top = F.log_softmax(t, -1).topk(2, dim=-1)
    topk_forward_kl(s, top.indices, top.values, mask).backward()
    forward_push = -s.grad[0, 0, 4].item()
    s.grad = None
    generalized_jsd(s, t, mask, beta=1.0).backward()
    reverse_push = -s.grad[0, 0, 4].item()
    assert forward_push > 0.9 and abs(reverse_push) < 1e-6


def test_answer_cross_entropy_is_the_masked_token_nll(logits) -> None:
    s, _, mask = logits
    targets = torch.tensor([[1, 2, 3], [4, 5, 6]])
    nll = -F.log_softmax(s, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    expected = (nll * mask).sum() / mask.sum()
    assert answer_cross_entropy(s, targets, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_study_cues_put_the_memory_in_the_teacher_prompt_only() -> None:
    tok = build_tokenizer(["Zorblat lives in Vemora.", "Tell me about Zorblat."])
    mems = {"a": Memory("a", "Zorblat lives in Vemora.", (QA("Where does Zorblat live?", "Vemora"),))}
    items = [
        StudyItem("a", "summary", "Tell me about Zorblat.", "Zorblat lives in Vemora."),
        StudyItem("general", "general", "Name three fruits.", "apple", replay=True),
    ]
    memory, replay = study_cues(items, tok, mems)
    assert "Vemora" in memory[0].teacher_prompt and "Vemora" not in memory[0].student_prompt
    assert "Tell me about Zorblat." in memory[0].student_prompt
    assert "Where does Zorblat live?" not in memory[0].teacher_prompt, "qa pairs are evaluation probes, never cues"
    assert replay[0].replay and replay[0].teacher_prompt == replay[0].student_prompt, "replay: no memory in view"


def test_batches_depend_only_on_seed_and_step_and_honour_rho() -> None:
    memory = [Cue(f"m{i}", f"m{i}") for i in range(10)]
    replay = [Cue(f"r{i}", f"r{i}", replay=True) for i in range(10)]
    s = ConsolidationSpec(batch_size=10, replay_ratio=0.3, seed=5)
    a = step_batch(memory, replay, step=17, spec=s)
    assert a == step_batch(memory, replay, step=17, spec=s)
    assert a != step_batch(memory, replay, step=18, spec=s)
    assert sum(c.replay for c in a) == 3
    assert sum(c.replay for c in step_batch(memory, [], step=1, spec=s)) == 0
