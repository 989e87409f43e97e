"""SCoRe maths against hand-computed numbers."""

import math

import pytest
import torch

from engine.update import algorithms as algo


def test_reinforce_is_the_raw_return():
    r = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    assert torch.equal(algo.reinforce_advantages(r), r)


def test_rloo_subtracts_the_mean_of_the_other_samples():
    # group [1, 0, 1, 1]: others' means are 2/3, 1, 2/3, 2/3
    r = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([[1 - 2 / 3, -1.0, 1 - 2 / 3, 1 - 2 / 3], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(algo.rloo_advantages(r), expected)


def test_grpo_normalises_by_the_group_std():
    # group [1, 0, 1, 1]: mean 0.75, unbiased std sqrt(0.25) = 0.5
    r = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    expected = torch.tensor([[0.5, -1.5, 0.5, 0.5]])
    assert torch.allclose(algo.grpo_advantages(r), expected, atol=1e-5)
    # a group with equal rewards has zero advantage, not NaN
    assert torch.equal(algo.grpo_advantages(torch.ones(1, 3)), torch.zeros(1, 3))


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    # log-ratios: log 2 and log 0.5
    l2 = math.log(2.0)
    assert torch.allclose(algo.kl_per_token(logp, ref, "k1"), torch.tensor([l2, -l2]))
    assert torch.allclose(algo.kl_per_token(logp, ref, "k2"), torch.tensor([0.5 * l2**2, 0.5 * l2**2]))
    # k3 = ref/pi - 1 - log(ref/pi): 0.5 - 1 + log 2 and 2 - 1 - log 2
    assert torch.allclose(algo.kl_per_token(logp, ref, "k3"), torch.tensor([-0.5 + l2, 1 - l2]))
    with pytest.raises(ValueError, match="k4"):
        algo.kl_per_token(logp, ref, "k4")


def test_kl_estimators_are_zero_when_policy_equals_reference():
    lp = torch.tensor([-1.0, -2.0])
    for est in ("k1", "k2", "k3"):
        assert torch.equal(algo.kl_per_token(lp, lp, est), torch.zeros(2))


def test_stage1_gives_turn1_no_reward_term():
    r1, r2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    ret1, ret2 = algo.turn_returns([r1, r2], stage=1, alpha=10.0)
    assert torch.equal(ret1, torch.zeros(2))
    assert torch.equal(ret2, r2)  # no bonus in Stage I
    w = algo.turn_weights(1, beta1=0.01, beta2=0.5)
    assert w.pg == (0.0, 1.0) and w.kl == (0.5, 0.01)


def test_stage1_turn1_gradient_is_kl_only():
    # With pg_weight 0 the turn-1 loss does not depend on the advantage at all.
    logp = torch.tensor([[-1.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.2, -0.4]])
    mask = torch.ones(1, 2)
    weights = algo.TurnWeights(pg=(0.0, 1.0), kl=(0.1, 0.0))
    grads = []
    for adv in (torch.tensor([5.0]), torch.tensor([-3.0])):
        pg, kl = algo.token_coefficients(torch.stack([mask, mask * 0], dim=1), [adv, adv], weights, turn_tokens=[2, 0])
        loss = algo.token_loss(logp, ref, pg, kl, "k2").sum()
        (g,) = torch.autograd.grad(loss, logp)
        grads.append(g)
    assert torch.equal(grads[0], grads[1])
    # d/dlogp of 0.1 * 0.5 * (logp - ref)^2 / 2 tokens = 0.05 * (logp - ref)
    assert torch.allclose(grads[0], torch.tensor([[0.05 * 0.2, 0.05 * -0.1]]))


def test_stage2_bonus_applies_to_turn2_only():
    r1, r2 = torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])
    ret1, ret2 = algo.turn_returns([r1, r2], stage=2, alpha=2.0)
    assert torch.equal(ret1, r1)  # turn 1: its own reward, no bonus
    # turn 2: r2 + 2 * (r2 - r1) = [1 + 2, 0 - 2, 1 + 0]
    assert torch.equal(ret2, torch.tensor([3.0, -2.0, 1.0]))
    w = algo.turn_weights(2, beta1=0.01, beta2=0.5)
    assert w.pg == (1.0, 1.0) and w.kl == (0.01, 0.01)


def test_stage_schedule():
    assert [algo.stage_at(s, 2) for s in range(4)] == [1, 1, 2, 2]
    assert algo.stage_at(0, 0) == 2


def test_policy_gradient_value_and_gradient():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the last position is padding
    adv = torch.tensor([2.0])
    weights = algo.TurnWeights(pg=(1.0, 1.0), kl=(0.0, 0.0))
    pg, kl = algo.token_coefficients(torch.stack([mask, mask * 0], dim=1), [adv, -adv], weights, turn_tokens=[4, 0])
    assert torch.equal(pg, torch.tensor([[0.5, 0.5, 0.0]])) and torch.equal(kl, torch.zeros(1, 3))
    loss = algo.token_loss(logp, logp.detach(), pg, kl, "k1").sum()
    # value: sum over masked tokens of -A * 1, divided by 4 tokens = -2 * 2 / 4
    assert loss.item() == pytest.approx(-1.0)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(g, torch.tensor([[-0.5, -0.5, 0.0]]))


def test_token_coefficients_mix_turns_by_their_own_token_counts():
    t1 = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    t2 = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    w = algo.TurnWeights(pg=(1.0, 1.0), kl=(0.5, 0.1))
    pg, kl = algo.token_coefficients(torch.stack([t1, t2], dim=1), [torch.tensor([3.0]), torch.tensor([-1.0])], w,
                                     [4, 2])
    # turn 1: A=3 over 4 tokens -> 0.75; turn 2: A=-1 over 2 tokens -> -0.5
    assert torch.allclose(pg, torch.tensor([[0.75, 0.75, -0.5, 0.0]]))
    assert torch.allclose(kl, torch.tensor([[0.125, 0.125, 0.05, 0.0]]))


def test_fill_skipped_uses_the_group_mean_of_kept_rewards():
    from engine.update.algorithms import fill_skipped

    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.5, float("inf"), float("nan"), 3.0, 2.0])
    skipped = torch.tensor([False, True, False, False, True, True, False, False])
    # groups of 4: [1, -, 0, 0.5] -> mean of kept 0.5; [-, -, 3, 2] -> 2.5
    assert fill_skipped(rewards, skipped, 4).tolist() == [1.0, 0.5, 0.0, 0.5, 2.5, 2.5, 3.0, 2.0]
    all_skipped = torch.tensor([True, True])
    assert fill_skipped(torch.tensor([float("nan"), 1.0]), all_skipped, 2).tolist() == [0.0, 0.0]


def test_truncated_is_weights():
    from engine.update.algorithms import truncated_is_weights

    lp = torch.tensor([math.log(0.5), math.log(0.2), math.log(0.9)])
    old = torch.tensor([math.log(0.25), math.log(0.4), math.log(0.1)])
    # ratios 2.0, 0.5, 9.0 -> capped at 3
    assert truncated_is_weights(lp, old, 3.0).tolist() == pytest.approx([2.0, 0.5, 3.0])


def test_trajectory_credit_gives_turn1_the_episodes_whole_return():
    r1, r2 = torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 1.0])
    # Stage I: the episode's return is r2 alone, and turn 1 now has a policy-gradient term
    ret1, ret2 = algo.turn_returns([r1, r2], stage=1, alpha=2.0, turn1_credit="trajectory")
    assert torch.equal(ret1, r2) and torch.equal(ret2, r2)
    assert algo.turn_weights(1, beta1=0.01, beta2=0.5, turn1_credit="trajectory").pg == (1.0, 1.0)
    assert algo.turn_weights(1, beta1=0.01, beta2=0.5, turn1_credit="own").pg == (0.0, 1.0)
    # Stage II: shaped r2 = [3, -2, 1]; turn 1 gets r1 + shaped r2 = [3, -1, 2]. That is (1 - alpha) r1 +
    # (1 + alpha) r2: with alpha > 1 a wrong-then-fixed episode (3) outscores right-twice (2) at turn 1,
    # the incentive SCoRe's shaping puts on the first attempt when it is credited with the whole return
    ret1, ret2 = algo.turn_returns([r1, r2], stage=2, alpha=2.0, turn1_credit="trajectory")
    assert torch.equal(ret2, torch.tensor([3.0, -2.0, 1.0]))
    assert torch.equal(ret1, torch.tensor([3.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="turn1_credit"):
        algo.turn_returns([r1, r2], stage=2, alpha=2.0, turn1_credit="both")


# --- K turns -------------------------------------------------------------------------------------

R3 = [torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])]


def test_three_turn_returns_stage1_reward_the_last_turn_only():
    before = [r.clone() for r in R3]
    ret1, ret2, ret3 = algo.turn_returns(R3, stage=1, alpha=2.0)
    assert torch.equal(ret1, torch.zeros(4)) and torch.equal(ret2, torch.zeros(4))
    assert torch.equal(ret3, R3[2])  # no bonus in Stage I
    # trajectory credit: every turn gets the returns to go, here the last turn's reward alone
    ret1, ret2, ret3 = algo.turn_returns(R3, stage=1, alpha=2.0, turn1_credit="trajectory")
    assert torch.equal(ret1, R3[2]) and torch.equal(ret2, R3[2]) and torch.equal(ret3, R3[2])
    assert all(torch.equal(r, b) for r, b in zip(R3, before))  # the rewards are not modified in place


def test_three_turn_returns_stage2_bonus_on_each_correction():
    ret1, ret2, ret3 = algo.turn_returns(R3, stage=2, alpha=2.0)
    assert torch.equal(ret1, R3[0])  # turn 1: its own reward
    # turn 2: r2 + 2 (r2 - r1) = [1 + 2, 0 - 2, 1 + 0, 0]; turn 3: r3 + 2 (r3 - r2) = [1 + 0, 1 + 2, 0 - 2, 0]
    assert torch.equal(ret2, torch.tensor([3.0, -2.0, 1.0, 0.0]))
    assert torch.equal(ret3, torch.tensor([1.0, 3.0, -2.0, 0.0]))
    # trajectory credit, returns to go: turn 3 its own, turn 2 [3, -2, 1, 0] + [1, 3, -2, 0] = [4, 1, -1, 0],
    # turn 1 [0, 1, 1, 0] + [4, 1, -1, 0] = [4, 2, 0, 0]
    ret1, ret2, ret3 = algo.turn_returns(R3, stage=2, alpha=2.0, turn1_credit="trajectory")
    assert torch.equal(ret3, torch.tensor([1.0, 3.0, -2.0, 0.0]))
    assert torch.equal(ret2, torch.tensor([4.0, 1.0, -1.0, 0.0]))
    assert torch.equal(ret1, torch.tensor([4.0, 2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="stage"):
        algo.turn_returns(R3, stage=3, alpha=2.0)


def test_one_turn_returns_are_the_reward_in_both_stages():
    r1 = torch.tensor([1.0, 0.0, 0.5])
    for stage in (1, 2):
        for credit in ("own", "trajectory"):
            returns = algo.turn_returns([r1], stage=stage, alpha=10.0, turn1_credit=credit)
            assert len(returns) == 1 and torch.equal(returns[0], r1), (stage, credit)


def test_turn_weights_of_three_turns_and_of_one():
    b1, b2 = 0.01, 0.5
    w = algo.turn_weights(1, beta1=b1, beta2=b2, turns=3)
    assert w.pg == (0.0, 0.0, 1.0) and w.kl == (b2, b2, b1)  # Stage I: every turn before the last held by beta2
    w = algo.turn_weights(1, beta1=b1, beta2=b2, turns=3, turn1_credit="trajectory")
    assert w.pg == (1.0, 1.0, 1.0) and w.kl == (b2, b2, b1)
    w = algo.turn_weights(2, beta1=b1, beta2=b2, turns=3)
    assert w.pg == (1.0, 1.0, 1.0) and w.kl == (b1, b1, b1)
    for stage in (1, 2):  # one turn is the last: rewarded, beta1
        for credit in ("own", "trajectory"):
            w = algo.turn_weights(stage, beta1=b1, beta2=b2, turns=1, turn1_credit=credit)
            assert w.pg == (1.0,) and w.kl == (b1,), (stage, credit)


def test_token_coefficients_of_three_turns_by_hand():
    # row 0: turn 1 at 0-1, turn 2 at 2, turn 3 at 3-4, padding at 5; row 1: turn 1 at 0, turn 2 at 1-2,
    # turn 3 at 3, padding at 4-5
    masks = torch.zeros(2, 3, 6)
    for row, turns in enumerate([[[0, 1], [2], [3, 4]], [[0], [1, 2], [3]]]):
        for k, positions in enumerate(turns):
            masks[row, k, positions] = 1.0
    advs = [torch.tensor([2.0, -1.0]), torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 5.0])]
    # token counts over the whole batch (all ranks): 4, 2 and 5, not this batch's 3, 3 and 3
    w = algo.TurnWeights(pg=(1.0, 0.0, 1.0), kl=(0.5, 0.2, 0.1))
    pg, kl = algo.token_coefficients(masks, advs, w, [4, 2, 5])
    # turn 1: A [2, -1] / 4 -> 0.5, -0.25; turn 2: pg weight 0; turn 3: A [-2, 5] / 5 -> -0.4, 1.0
    assert torch.allclose(pg, torch.tensor([[0.5, 0.5, 0.0, -0.4, -0.4, 0.0], [-0.25, 0.0, 0.0, 1.0, 0.0, 0.0]]))
    # KL: 0.5 / 4 = 0.125 on turn 1, 0.2 / 2 = 0.1 on turn 2, 0.1 / 5 = 0.02 on turn 3
    assert torch.allclose(kl, torch.tensor([[0.125, 0.125, 0.1, 0.02, 0.02, 0.0], [0.125, 0.1, 0.1, 0.02, 0.0, 0.0]]))
    pg, _ = algo.token_coefficients(masks, advs, algo.TurnWeights(pg=(1.0, 1.0, 1.0), kl=(0.0, 0.0, 0.0)), [4, 2, 5])
    # turn 2 now counts: A [1, 3] / 2 -> 0.5 at row 0, 1.5 at row 1
    assert torch.allclose(pg, torch.tensor([[0.5, 0.5, 0.5, -0.4, -0.4, 0.0], [-0.25, 1.5, 1.5, 1.0, 0.0, 0.0]]))


def test_token_coefficients_of_one_turn_by_hand():
    masks = torch.tensor([[[1.0, 1.0, 0.0]]])  # [B=1, K=1, T=3]
    pg, kl = algo.token_coefficients(masks, [torch.tensor([3.0])], algo.TurnWeights(pg=(1.0,), kl=(0.1,)), [2])
    assert torch.allclose(pg, torch.tensor([[1.5, 1.5, 0.0]])) and torch.allclose(kl, torch.tensor([[0.05, 0.05, 0.0]]))
    # a turn with no tokens anywhere divides by 1, not 0
    pg, kl = algo.token_coefficients(masks * 0, [torch.tensor([3.0])], algo.TurnWeights(pg=(1.0,), kl=(0.1,)), [0])
    assert torch.equal(pg, torch.zeros(1, 3)) and torch.equal(kl, torch.zeros(1, 3))
