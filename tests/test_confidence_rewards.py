"""Confidence scope x reduction, agreement and equivalence-class voting, with hand-computed numbers."""

import math

import pytest
import torch

from rewards import REWARDS
from rewards.agreement import agreement_shares, answer_classes, majority_votes
from tests.test_episodes import _episode
from tests.test_self_rewards import TOK, _answer_positions, _inputs, _stats_with


def _one_episode_stats():
    """Turn 1 "Final Answer: 46": its answer tokens have p(chosen) 0.5 and 0.25, disparities 0.85 and 0.3,
    entropies 1 and 3; every other token of both turns has p(chosen) 1, disparity 1 and entropy 0."""
    ep = _episode(TOK, "2+3=?", "Final Answer: 46", "Final Answer: 5")
    stats = _stats_with([ep], lambda name, shape: torch.ones(shape) if name == "p_top1" else torch.zeros(shape))
    pos = _answer_positions(ep, 1)
    stats.logprob[0, pos] = torch.log(torch.tensor([0.5, 0.25]))
    stats.p_top1[0, pos] = torch.tensor([0.9, 0.6])
    stats.p_top2[0, pos] = torch.tensor([0.05, 0.3])
    stats.entropy[0, pos] = torch.tensor([1.0, 3.0])
    stats.logprob[0, pos[0] - 3] = math.log(0.2)  # a working token: outside the answer, inside the response
    return ep, stats


@pytest.mark.parametrize("metric, reduction, expected", [
    ("prob", "mean", 0.375), ("prob", "min", 0.25), ("prob", "geomean", math.sqrt(0.5 * 0.25)),
    ("disparity", "mean", 0.575), ("disparity", "min", 0.3), ("disparity", "geomean", math.sqrt(0.85 * 0.3)),
    ("neg_entropy", "mean", -2.0), ("neg_entropy", "min", -3.0), ("neg_entropy", "geomean", math.exp(-2.0)),
])
def test_answer_scope_reductions(metric, reduction, expected):
    ep, stats = _one_episode_stats()
    r1, r2 = REWARDS["confidence"].fn(_inputs([ep], stats, metric=metric, scope="answer", reduction=reduction))
    assert r1.item() == pytest.approx(expected, rel=1e-6)
    # turn 2's answer "5" is certain: p 1, disparity 1, entropy 0
    assert r2.item() == pytest.approx({"prob": 1.0, "disparity": 1.0, "neg_entropy": 0.0 if reduction != "geomean"
                                       else 1.0}[metric])


def test_response_scope_covers_every_sampled_token_of_the_turn():
    ep, stats = _one_episode_stats()
    s, e = ep.span(0)
    n = e - s
    assert n == len("Final Answer: 46") + 1  # the characters and the sampled end-of-turn token
    probs = {"mean": (n - 3 + 0.5 + 0.25 + 0.2) / n, "min": 0.2, "geomean": (0.5 * 0.25 * 0.2) ** (1 / n)}
    for reduction, expected in probs.items():
        r1, r2 = REWARDS["confidence"].fn(_inputs([ep], stats, metric="prob", scope="response", reduction=reduction))
        assert r1.item() == pytest.approx(expected, rel=1e-6), reduction
        assert r2.item() == pytest.approx(1.0)
    r1, _ = REWARDS["confidence"].fn(_inputs([ep], stats, metric="neg_entropy", scope="response", reduction="mean"))
    assert r1.item() == pytest.approx(-4.0 / n)


def test_response_scope_gives_zero_without_an_answer():
    from rollout.answer_probe import probe_answer_spans
    from tests.test_answer_span import GreedyAnswers

    ep = _episode(TOK, "2+3=?", "I am not sure.", "Final Answer: 5")
    probe_answer_spans(GreedyAnswers(TOK, " 5."), TOK, [ep], " So the answer is", 4)  # shares only " " and "."
    stats = _stats_with([ep], lambda name, shape: torch.full(shape, 0.5))
    for reduction in ("mean", "min", "geomean"):
        r1, r2 = REWARDS["confidence"].fn(_inputs([ep], stats, metric="prob", scope="response", reduction=reduction))
        assert r1.item() == 0.0 and r2.item() > 0.0


def test_disparity_geomean_of_a_tie_is_finite():
    ep, stats = _one_episode_stats()
    stats.p_top2[0, _answer_positions(ep, 1)[0]] = 0.9  # p1 = p2: log(0) would be -inf
    r1, _ = REWARDS["confidence"].fn(_inputs([ep], stats, metric="disparity", reduction="geomean"))
    assert 0.0 <= r1.item() < 1e-5 and math.isfinite(r1.item())


def test_answer_classes_compare_after_normalisation():
    assert answer_classes(["12", "12.0", "7", None, "\\boxed{12}", " 7 "]) == [0, 0, 1, None, 0, 1]
    assert answer_classes(["\\frac{1}{2}", "0.5", "2"]) == [0, 0, 1]  # math-verify where strings differ


def test_agreement_is_the_share_of_the_prompts_samples():
    # "12", "12.0" and "\boxed{12}" are one answer (3 of 5); "7" is 1 of 5; no answer gets 0
    assert agreement_shares(["12", "12.0", "\\boxed{12}", "7", None]) == pytest.approx([0.6, 0.6, 0.6, 0.2, 0.0])
    texts = ["Final Answer: 12", "Final Answer: 12.0", "\\boxed{12}", "Final Answer: 7"]
    eps = [_episode(TOK, "2+3=?", t, t2) for t, t2 in zip(texts, ["Final Answer: 7", "x", "Final Answer: 7.0", "y"])]
    eps.append(_episode(TOK, "1+1=?", "Final Answer: 2", "Final Answer: 3"))
    eps[4].group = 1
    r1, r2 = REWARDS["agreement"].fn(_inputs(eps))
    assert r1.tolist() == pytest.approx([0.75, 0.75, 0.75, 0.25, 1.0])
    assert r2.tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0, 1.0])  # "7" and "7.0" agree; 2 of 4 samples
    c1, c2 = REWARDS["confidence"].fn(_inputs(eps, metric="agreement"))  # the same as a confidence metric
    assert torch.equal(c1, r1) and torch.equal(c2, r2)


def test_majority_votes_over_equivalence_classes():
    assert majority_votes(["5", "5.0", "6", None]) == [1.0, 1.0, 0.0, 0.0]  # as strings: a three-way tie
    assert majority_votes(["0.5", "\\frac{1}{2}", "1", "1"]) == [0.0, 0.0, 0.0, 0.0]  # 2 against 2


def test_screen_ranking_accuracy_by_hand():
    from scripts.reward_screen import ranking_accuracy

    # prompt 0: right samples 0, 1 (rewards .9, .5), wrong 2 (.5) -> pairs (0,2) win, (1,2) tie: 1.5 of 2
    # prompt 1: right 3 (.1), wrong 4 (.8) -> a loss; prompt 2: all right, no pair
    reward = torch.tensor([0.9, 0.5, 0.5, 0.1, 0.8, 0.3])
    correct = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    assert ranking_accuracy(reward, correct, [0, 0, 0, 1, 1, 2]) == (pytest.approx(1.5 / 3), 3)


def test_weighted_agreement_shares_by_hand():
    # weights .5 + .1 for "12" ~ "12.0", .8 for "7", .6 for the unanswered sample: total 2.0
    assert agreement_shares(["12", "12.0", "7", None], [0.5, 0.1, 0.8, 0.6]) == pytest.approx([0.3, 0.3, 0.4, 0.0])
    assert agreement_shares(["1", "2"], [0.0, 0.0]) == [0.0, 0.0]  # no confidence anywhere: no votes


def test_agreement_votes_weighed_by_each_samples_min_probability():
    eps = [_episode(TOK, "2+3=?", f"Final Answer: {a}", f"Final Answer: {b}") for a, b in [(5, 5), (5, 6), (6, 6)]]
    stats = _stats_with(eps, lambda name, shape: torch.zeros(shape))  # log p = 0: p(chosen) = 1
    for row, weakest in enumerate([0.2, 0.4, 0.9]):  # one weak token in each turn-1 response
        stats.logprob[row, eps[row].span(0)[0] + 2] = math.log(weakest)
    opts = dict(vote_weight="confidence", vote_metric="prob", scope="response", reduction="min")
    r1, r2 = REWARDS["agreement"].fn(_inputs(eps, stats, **opts))
    # turn 1: "5" holds .2 + .4 of 1.5, "6" holds .9 of 1.5; turn 2: every weight 1, "5" 1 of 3, "6" 2 of 3
    assert r1.tolist() == pytest.approx([0.4, 0.4, 0.6])
    assert r2.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    uniform, _ = REWARDS["agreement"].fn(_inputs(eps, stats))
    assert uniform.tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def test_weighted_votes_count_unanswered_samples_in_the_total():
    eps = [_episode(TOK, "2+3=?", t, "Final Answer: 5") for t in ("Final Answer: 5", "Final Answer: 5", "not sure")]
    stats = _stats_with(eps, lambda name, shape: torch.zeros(shape))  # p(chosen) = 1 everywhere
    for row in (0, 1):
        stats.logprob[row, eps[row].span(0)[0] + 2] = math.log(0.5)
    opts = dict(vote_weight="confidence", vote_metric="prob", scope="response", reduction="min")
    r1, _ = REWARDS["agreement"].fn(_inputs(eps, stats, **opts))
    # "5" holds .5 + .5 of the total 2.0: the unanswered sample's confidence (1) counts, as its one vote
    # counts with uniform votes (2 of 3)
    assert r1.tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert REWARDS["agreement"].fn(_inputs(eps, stats))[0].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
