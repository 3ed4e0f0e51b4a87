"""The one LM batching: a batch scores each (prompt, target) pair as that pair alone would be scored."""

from __future__ import annotations

import torch

from reverie.workloads.ml import tiny
from reverie.workloads.ml.lm import encode, sft_loss, target_logprobs

TEXTS = ["Zorblat lives in Vemora.", "Ivo was born in Porto.", "Mira writes poems about the sea."]


def _model() -> tuple[torch.nn.Module, object]:
    tok = tiny.build_tokenizer(TEXTS)
    return tiny.build_tiny_model(tok, seed=0), tok


@torch.no_grad()
def _alone(model: torch.nn.Module, tok: object, prompt: str, target: str) -> torch.Tensor:
    """Σ log p(target token) written out on the unpadded sequence."""
    p, t = encode(tok, prompt), encode(tok, target)
    if not p:
        p, t = t[:1], t[1:]
    ids = torch.tensor([p + t])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return sum(logp[len(p) - 1 + i, tok_id] for i, tok_id in enumerate(t))  # type: ignore[return-value]


def test_target_logprobs_equal_each_pair_scored_alone() -> None:
    model, tok = _model()
    pairs = [("Zorblat lives in", " Vemora."), ("Ivo was born", " in Porto."), ("", "Mira writes poems.")]
    batched = target_logprobs(model, tok, pairs)
    for got, (prompt, target) in zip(batched, pairs, strict=True):
        assert abs(got - float(_alone(model, tok, prompt, target))) < 1e-4


def test_sft_loss_is_the_mean_token_nll_of_the_targets() -> None:
    model, tok = _model()
    pairs = [("Zorblat lives in", " Vemora."), ("", "Ivo was born in Porto.")]
    total = -sum(float(_alone(model, tok, p, t)) for p, t in pairs)
    n = len(encode(tok, " Vemora.")) + len(encode(tok, "Ivo was born in Porto.")) - 1
    assert abs(float(sft_loss(model, tok, pairs).detach()) - total / n) < 1e-4
