"""Token statistics against direct computations from hand-made logits (an identity head, so the
hidden states are the logits)."""

import math

import pytest
import torch

from engine.ops.logprobs import head_stats
from engine.ops.scoring import targets_of
from engine.ops.token_stats import ALL_STATS, TokenStats


def stats_from_logits(logits, ids, impl="chunked"):
    """[B, T, V] logits over ids [B, T] through the fused head with weight = identity."""
    b, t, v = logits.shape
    mask = torch.ones(b, t, dtype=torch.long)
    flat = head_stats(logits[:, :-1].reshape(-1, v), torch.eye(v), ids[:, 1:].reshape(-1), wanted=ALL_STATS, impl=impl)
    return TokenStats.from_head(flat, targets_of(mask), v)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_stats_by_hand(impl):
    # one sequence of two tokens; position 0's logits predict token 1 (= id 2)
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(5.0)], [0.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 2]])
    s = stats_from_logits(logits, ids, impl)
    # p = [1, 2, 5] / 8 at the predicting position
    assert s.logprob[0, 1].item() == pytest.approx(math.log(5 / 8))
    assert s.p_top1[0, 1].item() == pytest.approx(5 / 8) and s.p_top2[0, 1].item() == pytest.approx(2 / 8)
    p = torch.tensor([1, 2, 5]) / 8
    assert s.entropy[0, 1].item() == pytest.approx(-(p * p.log()).sum().item())
    # self-certainty: KL(U || p) = sum_j (1/3) log((1/3) / p_j)
    kl_uniform = sum((1 / 3) * math.log((1 / 3) / pj) for pj in p.tolist())
    assert s.self_certainty[0, 1].item() == pytest.approx(kl_uniform)
    assert s.logprob[0, 0].item() == 0.0  # nothing predicts the first token


def test_self_certainty_matches_logsumexp_formula_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    ids = torch.randint(0, 11, (2, 5), generator=g)
    s = stats_from_logits(logits, ids)
    z = logits[:, :-1]
    direct = (-(1 / 11) * torch.log_softmax(z, -1).sum(-1)) - math.log(11)
    assert torch.allclose(s.self_certainty[:, 1:], direct, atol=1e-5)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_top_two_probabilities_match_a_full_softmax(impl):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 11, generator=g)
    ids = torch.randint(0, 11, (2, 5), generator=g)
    s = stats_from_logits(logits, ids, impl)
    top = torch.softmax(logits[:, :-1], -1).topk(2, dim=-1).values  # built independently, over every logit
    assert torch.allclose(s.p_top1[:, 1:], top[..., 0], atol=1e-6)
    assert torch.allclose(s.p_top2[:, 1:], top[..., 1], atol=1e-6)
    assert (s.p_top1[:, 0] == 0).all() and (s.p_top2[:, 0] == 0).all()  # nothing predicts the first token
