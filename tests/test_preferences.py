"""DPO's loss and RLSF/EVOLVE pair selection, by hand."""

import math

import pytest
import torch

from engine.objectives.dpo import dpo_loss, sequence_logprobs
from engine.objectives.pairs.selection import Pair, confidence_pairs, ranked_pairs, refinement_pairs


def test_sequence_logprobs_sum_the_response_tokens_only():
    lp = torch.tensor([[-float("inf"), -1.0, -2.0], [-0.25, -0.25, -4.0]])  # -inf outside the response
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert sequence_logprobs(lp, mask).tolist() == [-3.0, -0.5]


def test_dpo_loss_by_hand():
    # pair 1: log-ratios chosen (-1) - (-2) = 1, rejected (-3) - (-2) = -1: margin 0.1 * 2 = 0.2
    # pair 2: chosen -4 - (-3) = -1, rejected -2 - (-2) = 0: margin 0.1 * -1 = -0.1
    # pair 2 (second version): rejected -1 - (-1) = 0, the same margin with a different rejected log-prob
    chosen, rejected = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-2.0, -3.0]), torch.tensor([-2.0, -1.0])
    l1, l2 = math.log(1 + math.exp(-0.2)), math.log(1 + math.exp(0.1))  # -log sigmoid(m) = log(1 + e^-m)
    loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)
    assert loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    assert stats.margin == pytest.approx(0.05) and stats.accuracy == 0.5 and stats.pairs == 2
    assert stats.chosen_logp == -2.5 and stats.rejected_logp == -2.0
    weighted, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, weights=torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((l1 + 3 * l2) / 4, rel=1e-6)
    empty = torch.tensor([])
    with pytest.raises(ValueError, match="at least one pair"):  # an empty round must be skipped, not NaN
        dpo_loss(empty, empty, empty, empty, beta=0.1)
    with pytest.raises(ValueError, match="positive sum"):
        dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1, weights=torch.tensor([0.0, 0.0]))


def test_dpo_gradient_raises_the_chosen_and_lowers_the_rejected():
    chosen = torch.tensor([-1.0, -4.0], requires_grad=True)
    rejected = torch.tensor([-3.0, -2.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, rejected, torch.tensor([-2.0, -3.0]), torch.tensor([-2.0, -2.0]), beta=0.1,
                       weights=torch.tensor([1.0, 3.0]))
    loss.backward()
    # d/d chosen_p = -beta * sigmoid(-m_p) * w_p / sum(w); rejected: the opposite sign
    sig = torch.sigmoid(-torch.tensor([0.2, -0.1]))
    expected = -0.1 * sig * torch.tensor([1.0, 3.0]) / 4
    assert torch.allclose(chosen.grad, expected) and torch.allclose(rejected.grad, -expected)
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descending the loss raises chosen log-probs


def test_rlsf_pairs_need_a_confident_winner_and_weigh_the_gap():
    pairs = confidence_pairs([0.95, 0.5, 0.92, 0.95], threshold=0.9)
    assert [(p.chosen, p.rejected) for p in pairs] == [(0, 1), (0, 2), (2, 1), (3, 1), (3, 2)]
    assert pairs[0].weight == pytest.approx(math.exp(0.45)) and pairs[1].weight == pytest.approx(math.exp(0.03))
    assert confidence_pairs([0.8, 0.3], threshold=0.9) == []  # nobody confident enough: no pair
    assert confidence_pairs([0.9, 0.9], threshold=0.9) == []  # equal confidence: no preference
    assert confidence_pairs([0.9, 0.5], threshold=0.9) == [Pair(0, 1, pytest.approx(math.exp(0.4)))]  # at the threshold


def test_evolve_refinement_and_direct_pairs():
    # turn 2 improved on turn 1, turn 3 fell back, turn 4 equal to turn 3
    assert refinement_pairs([0.0, 1.0, 0.5, 0.5]) == [Pair(1, 0, 1.0), Pair(1, 2, 1.0)]
    assert ranked_pairs([1.0, 0.0, 1.0]) == [Pair(0, 1, 1.0), Pair(2, 1, 1.0)]
