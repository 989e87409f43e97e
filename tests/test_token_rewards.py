"""Token-level rewards in the learner: turn means, own-reward coefficients, per-token advantages with both
baselines, placement into batch positions and the loss coefficients, checked by hand."""

import pytest
import torch

from engine.update import algorithms as algo


def close(actual, expected):
    assert torch.allclose(torch.as_tensor(actual, dtype=torch.float32), torch.tensor(expected, dtype=torch.float32), atol=1e-6), actual


def test_turn_means_average_each_response_over_its_own_tokens():
    tokens = torch.tensor([[1.0, -1.0, 1.0, 9.0], [2.0, 2.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    close(algo.turn_means(tokens, torch.tensor([3, 2, 0])), [1 / 3, 2.0, 0.0])  # 9 is past row 0's end; empty: 0


def test_own_reward_coefficients_follow_the_returns():
    # Stage II, own credit: R1 = r1, R2 = r2 + 2 (r2 - r1) -> dR1/dr1 = 1, dR2/dr2 = 3
    assert algo.own_reward_coefficients(2, 2.0, 2) == [1.0, 3.0]
    # Stage I: only the last turn has a return
    assert algo.own_reward_coefficients(1, 2.0, 2) == [0.0, 1.0]
    # trajectory credit, Stage II: R1 = r1 + r2 + 2 (r2 - r1) -> dR1/dr1 = 1 - 2 = -1
    assert algo.own_reward_coefficients(2, 2.0, 2, "trajectory") == [-1.0, 3.0]
    # three turns, Stage II: R3 = r3 + 0.5 (r3 - r2) -> 1.5
    assert algo.own_reward_coefficients(2, 0.5, 3) == [1.0, 1.5, 1.5]


def test_turn_mean_baseline_moves_credit_inside_each_response():
    tokens = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, 0.0]])  # row 1 has 2 tokens
    lengths = torch.tensor([3, 2])
    out = algo.token_advantages(torch.tensor([0.5, -0.5]), torch.tensor([9.0, 9.0]), tokens, lengths,
                                coefficient=3.0, n=2, baseline="turn_mean")
    # row 0: mean 1/3, deviations 2/3, 2/3, -4/3 -> 0.5 + 3 * deviation; row 1: all tokens equal its mean
    close(out, [[2.5, 2.5, -3.5], [-0.5, -0.5, 0.0]])
    # the token terms sum to zero over a response: the episode's total credit is its turn advantage
    close(out.sum(-1), [0.5 * 3, -0.5 * 2])


def test_position_baseline_compares_with_the_other_samples_at_the_same_token():
    tokens = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, 0.0]])
    lengths = torch.tensor([3, 2])
    returns = torch.tensor([1.0, 2.0])
    out = algo.token_advantages(torch.zeros(2), returns, tokens, lengths, coefficient=1.0, n=2, baseline="position")
    # token returns: row 0 = 1 + (2/3, 2/3, -4/3) = (5/3, 5/3, -1/3); row 1 = (2, 2)
    # row 0, positions 0-1: minus row 1's 2; position 2: row 1 is not that long -> minus its turn return, 2
    # row 1: minus row 0's 5/3
    close(out, [[-1 / 3, -1 / 3, -7 / 3], [1 / 3, 1 / 3, 0.0]])


def test_position_baseline_is_per_group():
    tokens = torch.tensor([[1.0], [0.0], [4.0], [2.0]])
    out = algo.token_advantages(torch.zeros(4), torch.tensor([1.0, 0.0, 4.0, 2.0]), tokens, torch.ones(4, dtype=torch.long),
                                coefficient=1.0, n=2, baseline="position")
    close(out, [[1.0], [-1.0], [2.0], [-2.0]])  # groups (rows 0-1) and (rows 2-3) never mix
    with pytest.raises(ValueError, match="token baseline"):
        algo.token_advantages(torch.zeros(4), torch.zeros(4), tokens, torch.ones(4), 1.0, 2, "median")


def test_place_turn_tokens_puts_each_value_on_its_sampled_token():
    values = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 0.0]])
    close(algo.place_turn_tokens(values, mask), [[0, 10, 20, 30, 0], [0, 0, 40, 50, 0]])
    close(algo.place_turn_tokens(torch.zeros(2, 0), mask), torch.zeros(2, 5).tolist())  # every response empty


def test_token_coefficients_take_per_token_advantages():
    masks = torch.tensor([[[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])  # turn 1: 2 tokens, turn 2: 1
    weights = algo.TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.2))
    per_token_turn1 = torch.tensor([[0.0, 2.0, -1.0, 0.0]])
    pg, kl = algo.token_coefficients(masks, [per_token_turn1, torch.tensor([3.0])], weights, turn_tokens=[2, 1])
    close(pg, [[0.0, 1.0, -0.5, 3.0]])  # turn 1 per token over its 2 tokens; turn 2 its episode advantage
    close(kl, [[0.0, 0.05, 0.05, 0.2]])


def _episodes(lengths):
    from engine.tasks.data import Problem
    from rollout.episodes import Episode
    from rollout.vllm_engine import Completion

    def turn(k):
        return Completion(token_ids=[1] * k, logprobs=[0.0] * k, text="x" * k, finished=True)

    return [Episode(Problem("a", None, 1), i // 2, [[0]], [turn(k)]) for i, k in enumerate(lengths)]


def test_checked_rewards_accept_token_rewards_and_name_a_short_row():
    from rewards.checked import RewardError, checked_rewards
    from rewards.registry import RewardInputs

    inputs = RewardInputs(_episodes([2, 3]), tokenizer=None, options=None)
    wide = torch.tensor([[1.0, -1.0, float("nan"), 7.0], [1.0, 1.0, -1.0, 7.0]])  # past a response's end: ignored
    (rewards,), skipped = checked_rewards("tok", lambda _: [wide], inputs, step=1, nonfinite="error")
    assert rewards.tolist() == [[1.0, -1.0, 0.0], [1.0, 1.0, -1.0]] and skipped.tolist() == [False, False]
    with pytest.raises(RewardError, match=r"returned \(2, 2\) as its turn-1 rewards at step 5; expected a tensor of "
                                          r"shape \(2,\), one value per episode, or \(2, L\) with L >= 3"):
        checked_rewards("tok", lambda _: [torch.ones(2, 2)], inputs, step=5, nonfinite="error")
    nan_inside = wide.clone()
    nan_inside[1, 0] = float("nan")
    (rewards,), skipped = checked_rewards("tok", lambda _: [nan_inside], inputs, step=1, nonfinite="skip")
    assert skipped.tolist() == [False, True]


def test_edit_operations_by_hand():
    from rewards.alignment import edit_operations

    # "12+3" -> "13+3": one substitution at position 1
    assert edit_operations([1, 2, 9, 3], [1, 3, 9, 3]) == [("match", 0, 0), ("substitute", 1, 1), ("match", 2, 2),
                                                           ("match", 3, 3)]
    # a token too many is deleted, a token missing is inserted
    assert edit_operations([1, 2, 3], [1, 3]) == [("match", 0, 0), ("delete", 1, None), ("match", 2, 1)]
    assert edit_operations([1, 3], [1, 2, 3]) == [("match", 0, 0), ("insert", None, 1), ("match", 1, 2)]
    assert edit_operations([], [4]) == [("insert", None, 0)] and edit_operations([4], []) == [("delete", 0, None)]


def test_token_labels_and_rewards_by_hand():
    from rewards.alignment import CHANGE, KEEP, token_labels, token_rewards

    assert token_labels([1, 2, 9, 3], [1, 3, 9, 3]) == [KEEP, CHANGE, KEEP, KEEP]
    assert token_labels([1, 2, 3], [1, 3]) == [KEEP, CHANGE, KEEP]  # deleted
    assert token_labels([1, 3], [1, 2, 3]) == [KEEP, CHANGE]  # 3 was sampled where 2 was missing
    assert token_labels([1, 3], [1, 3, 5]) == [KEEP, CHANGE]  # missing at the end: the last token
    # "7+5=12, 4+8+0=12. Final Answer: 122" vs the rewrite "... 4+8+1=13 ... 132": the carry, the tens sum and
    # the answer's tens digit change; everything else is kept
    wrong, right = list(b"4+8+0=12. A: 122"), list(b"4+8+1=13. A: 132")
    labels = token_labels(wrong, right)
    assert [i for i, label in enumerate(labels) if label == CHANGE] == [4, 7, 14]
    assert token_rewards(wrong, right, keep=0.5, change=-2.0, identical=1.0)[4:8] == [-2.0, 0.5, 0.5, -2.0]
    assert token_rewards(right, right, keep=0.5, change=-2.0, identical=1.0) == [1.0] * len(right)  # fallback
    assert token_rewards([], [], 0.5, -2.0, 1.0) == []


def test_the_trainer_gives_each_token_of_a_token_rewarded_turn_its_own_advantage():
    """engine.train.per_token_advantages, by hand: Stage II, alpha 2, own credit, so turn 2's coefficient is
    1 + 2 = 3; turn 2 has token rewards, turn 1 does not. A_t = A + 3 (r_t - mean r), at turn 2's positions;
    turn 1 keeps its per-episode advantage (a per-episode result for turn 2 would fail here)."""
    from engine.builtin.tokenizer import build_char_tokenizer
    from engine.config.loading import load_config
    from engine.train import per_token_advantages
    from engine.update.batch import collate
    from tests.test_episodes import _episode

    tok = build_char_tokenizer()
    episodes = [_episode(tok, "2+3=?", "Final Answer: 6", "ab"), _episode(tok, "2+3=?", "Final Answer: 5", "abc")]
    batch = collate(episodes, tok.pad_token_id)
    lengths = [batch.turn_mask(k).sum(-1) for k in range(2)]
    assert lengths[1].tolist() == [3, 4]  # "ab" + end of turn, "abc" + end of turn
    dense = torch.tensor([[1.0, -1.0, 1.0, 0.0], [1.0, 1.0, -1.0, -1.0]])  # row 0: 3 tokens, mean 1/3; row 1: 0
    cfg = load_config(["rollout.n=2", "algo.alpha=2", "algo.turn1_credit=own", "algo.token_baseline=turn_mean"])
    turn1, turn2 = torch.tensor([0.5, -0.5]), torch.tensor([0.25, -0.25])
    out = per_token_advantages(cfg, 2, batch, [turn1, turn2], [torch.zeros(2), torch.zeros(2)], [None, dense],
                               lengths, torch.tensor([False, False]))
    assert out[0] is turn1
    placed = out[1][batch.turn_mask(1).bool()]
    expected = [0.25 + 3 * (1 - 1 / 3), 0.25 + 3 * (-1 - 1 / 3), 0.25 + 3 * (1 - 1 / 3),
                -0.25 + 3, -0.25 + 3, -0.25 - 3, -0.25 - 3]
    assert placed.tolist() == pytest.approx(expected)
    assert out[1][~batch.turn_mask(1).bool()].eq(0).all()  # nothing outside turn 2's sampled tokens


def test_negative_token_frac_counts_what_the_update_trains_with():
    """A turn without an answer trains with the reward's lowest value on each of its sampled tokens (-1 here):
    those count as negative; padding past a turn's tokens never does. By hand: turn 1 of episode 0 is
    unanswered (3 sampled tokens: 'ab' + end of turn, all -1); the answered turns' tokens are +1 but one."""
    from types import SimpleNamespace

    from engine.builtin.tokenizer import build_char_tokenizer
    from engine.config.loading import load_config
    from engine.train import score_episodes
    from engine.update.batch import collate
    from rewards.registry import RewardSpec
    from tests.test_episodes import _episode

    tok = build_char_tokenizer()
    episodes = [_episode(tok, "2+3=?", "ab", "Final Answer: 5"), _episode(tok, "2+3=?", "Final Answer: 6", "Final Answer: 5")]
    batch = collate(episodes, tok.pad_token_id)

    def plus_one_but_the_first(inputs):  # [B, longest turn] per turn; padding positions 0
        out = []
        for k in range(2):
            lengths = [len(e.turns[k].token_ids) for e in inputs.episodes]
            values = torch.zeros(len(lengths), max(lengths))
            for row, n in enumerate(lengths):
                values[row, :n] = 1.0
                values[row, 0] = -1.0
            out.append(values)
        return out

    spec = RewardSpec(plus_one_but_the_first, False, False, None, True, lambda options, tokenizer: (-1.0, 1.0))
    run = SimpleNamespace(cfg=load_config(["configs/default.yaml", "rollout.n=2"]), tokenizer=tok, reward=spec)
    scored = score_episodes(run, 0, 2, episodes, batch, None)
    sampled = sum(len(t.token_ids) for e in episodes for t in e.turns)
    assert scored.dense_tokens == sampled
    # unanswered turn: all 3 of its tokens at -1; each of the 3 answered turns: its first token at -1
    assert scored.negative_tokens == 3 + 3
    assert scored.rewards[0][0].item() == -1.0  # the unanswered turn's mean: the lowest
