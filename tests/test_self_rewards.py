"""Self-rewards with hand-computed numbers: span aggregation, self-certainty, majority vote, mix."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from engine.builtin.tokenizer import build_char_tokenizer
from engine.ops.token_stats import TokenStats
from engine.update.batch import collate
from rewards import REWARDS, RewardInputs
from rewards.self_rewards import majority_votes
from tests.test_episodes import _episode

TOK = build_char_tokenizer()


def _inputs(episodes, stats=None, **options):
    opts = OmegaConf.create({"metric": "disparity", "weights": {}, **options})
    return RewardInputs(episodes, TOK, opts, stats)


def _stats_with(episodes, fill):
    """TokenStats over the collated batch whose every field is built by `fill(shape)`."""
    shape = collate(episodes, TOK.pad_token_id).input_ids.shape
    return TokenStats(**{name: fill(name, shape) for name in
                         ("logprob", "p_top1", "p_top2", "entropy", "self_certainty")})


def _answer_positions(ep, turn):
    completion, (start, _) = ep.turns[turn - 1], ep.span(turn - 1)
    i = completion.text.index("Final Answer: ") + len("Final Answer: ")
    return [start + j for j in range(i, len(completion.text))]


def test_confidence_metrics_average_over_the_answer_span_only():
    ep = _episode(TOK, "2+3=?", "Final Answer: 46", "Final Answer: 5")
    def fill(name, shape):
        t = torch.full(shape, 0.5)
        if name in ("p_top1", "p_top2", "entropy", "logprob"):
            t = torch.zeros(shape)
        return t
    stats = _stats_with([ep], fill)
    pos1, pos2 = _answer_positions(ep, 1), _answer_positions(ep, 2)
    assert len(pos1) == 2 and len(pos2) == 1
    # turn-1 answer "46": disparities 0.9-0.05 and 0.6-0.3 -> mean (0.85 + 0.3) / 2 = 0.575
    stats.p_top1[0, pos1] = torch.tensor([0.9, 0.6])
    stats.p_top2[0, pos1] = torch.tensor([0.05, 0.3])
    stats.p_top1[0, pos2] = torch.tensor([0.7])
    stats.p_top2[0, pos2] = torch.tensor([0.2])
    stats.p_top1[0, pos1[0] - 1] = 1.0  # a token outside the span must not count
    stats.logprob[0, pos1] = torch.log(torch.tensor([0.5, 0.25]))
    stats.entropy[0, pos1] = torch.tensor([1.0, 3.0])
    r1, r2 = REWARDS["confidence"].fn(_inputs([ep], stats))
    assert r1.item() == pytest.approx(0.575) and r2.item() == pytest.approx(0.5)
    r1, _ = REWARDS["confidence"].fn(_inputs([ep], stats, metric="prob"))
    assert r1.item() == pytest.approx(0.375)  # (0.5 + 0.25) / 2
    r1, _ = REWARDS["confidence"].fn(_inputs([ep], stats, metric="neg_entropy"))
    assert r1.item() == pytest.approx(-2.0)


def test_no_answer_gets_zero():
    from rollout.answer_probe import probe_answer_spans
    from tests.test_answer_span import GreedyAnswers

    ep = _episode(TOK, "2+3=?", "I am not sure.", "Final Answer: 5")
    # as in training, RLSF's probe runs on the unformatted turn 1; " 5." shares only " " and "." with it
    assert probe_answer_spans(GreedyAnswers(TOK, " 5."), TOK, [ep], " So the answer is", 4) == 1
    stats = _stats_with([ep], lambda name, shape: torch.ones(shape))
    r1, r2 = REWARDS["confidence"].fn(_inputs([ep], stats, metric="prob"))
    assert r1.item() == 0.0 and r2.item() == pytest.approx(torch.e)
    r1, r2 = REWARDS["self_certainty"].fn(_inputs([ep], stats))
    assert r1.item() == 0.0 and r2.item() == 1.0


def test_self_certainty_averages_all_response_tokens():
    ep = _episode(TOK, "2+3=?", "Final Answer: 5", "Final Answer: 5")
    stats = _stats_with([ep], lambda name, shape: torch.zeros(shape))
    s, e = ep.span(1)
    stats.self_certainty[0, s:e] = torch.arange(e - s, dtype=torch.float)
    _, r2 = REWARDS["self_certainty"].fn(_inputs([ep], stats))
    assert r2.item() == pytest.approx((e - s - 1) / 2)  # mean of 0..n-1


@pytest.mark.parametrize("answers, expected", [
    (["5", "5", "6", None], [1.0, 1.0, 0.0, 0.0]),
    (["5", "6", "5", "6"], [0.0, 0.0, 0.0, 0.0]),  # tie: no majority
    ([None, None, "7", None], [0.0, 0.0, 1.0, 0.0]),  # only answers vote
    ([None, None], [0.0, 0.0]),
])
def test_majority_votes(answers, expected):
    assert majority_votes(answers) == expected


def test_majority_reward_votes_within_each_prompt_and_turn():
    eps = [_episode(TOK, "2+3=?", f"Final Answer: {a}", f"Final Answer: {b}") for a, b in [(5, 5), (5, 6), (6, 6)]]
    eps.append(_episode(TOK, "1+1=?", "Final Answer: 3", "Final Answer: 2"))
    eps[3].group = 1
    r1, r2 = REWARDS["majority"].fn(_inputs(eps))
    assert r1.tolist() == [1.0, 1.0, 0.0, 1.0]  # turn 1 of prompt 0: 5, 5, 6
    assert r2.tolist() == [0.0, 1.0, 1.0, 1.0]  # turn 2 of prompt 0: 5, 6, 6


def test_mix_is_the_weighted_sum():
    eps = [_episode(TOK, "2+3=?", "Final Answer: 5", "Final Answer: 6"),
           _episode(TOK, "2+3=?", "Final Answer: 5", "Final Answer: 6")]
    stats = _stats_with(eps, lambda name, shape: torch.zeros(shape))
    stats.p_top1[:] = 0.8
    stats.p_top2[:] = 0.1
    r1, r2 = REWARDS["mix"].fn(_inputs(eps, stats, weights={"confidence": 0.5, "majority": 2.0}))
    # confidence 0.7 everywhere; majority 1 everywhere (both turns agree within the prompt)
    assert r1.tolist() == pytest.approx([0.35 + 2.0, 0.35 + 2.0])
    assert r2.tolist() == pytest.approx([0.35 + 2.0, 0.35 + 2.0])


def test_mix_needs_weights():
    from engine.base.errors import UserError
    from rewards.registry import reward_needs

    with pytest.raises(UserError, match="reward.weights"):
        reward_needs("mix", OmegaConf.create({"weights": {}}))
    spec = reward_needs("mix", OmegaConf.create({"weights": {"gold": 1.0, "majority": 1.0}}))
    assert spec.needs_gold and not spec.needs_token_stats


def test_answer_probability_is_the_product_over_the_answer_span():
    from rewards.self_rewards import answer_probability

    eps = [_episode(TOK, "2+3=?", "Final Answer: 46", "no answer")]
    stats = _stats_with(eps, lambda name, shape: torch.zeros(shape))
    stats.logprob[0, _answer_positions(eps[0], 1)] = torch.log(torch.tensor([0.5, 0.8]))
    c1, c2 = answer_probability(_inputs(eps, stats))
    assert c1.item() == pytest.approx(0.4) and c2.item() == 0.0


def test_rewards_score_every_turn_of_three_turn_episodes():
    from rewards.registry import turn_correctness, turn_has_answer
    from tests.test_episodes import _chain

    answers = [(5, 5, 6), (5, 6, 6), (6, 6, "none")]
    eps = [_chain(TOK, "2+3=?", [f"Final Answer: {a}" if a != "none" else "no idea" for a in row]) for row in answers]
    # majority per turn: turn 1 answers 5, 5, 6; turn 2 5, 6, 6; turn 3 6, 6 and no answer
    r1, r2, r3 = REWARDS["majority"].fn(_inputs(eps))
    assert (r1.tolist(), r2.tolist(), r3.tolist()) == ([1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    c = turn_correctness(eps)  # gold answer 5
    assert [t.tolist() for t in c] == [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert [t.tolist() for t in turn_has_answer(eps, TOK)] == [[1.0] * 3, [1.0] * 3, [1.0, 1.0, 0.0]]
    # self-certainty averages each turn's own tokens: 0..n-1 on turn 3 of episode 0, 2 on its turn 2
    stats = _stats_with(eps, lambda name, shape: torch.zeros(shape))
    s, e = eps[0].span(2)
    stats.self_certainty[0, s:e] = torch.arange(e - s, dtype=torch.float)
    stats.self_certainty[0, slice(*eps[0].span(1))] = 2.0
    q1, q2, q3 = REWARDS["self_certainty"].fn(_inputs(eps, stats))
    assert q3[0].item() == pytest.approx((e - s - 1) / 2) and q2[0].item() == pytest.approx(2.0)
    assert q1[0].item() == 0.0 and q3[1:].tolist() == [0.0, 0.0]
    # mix: per turn, 2 x majority + 1 x gold
    m = REWARDS["mix"].fn(_inputs(eps, stats, weights={"majority": 2.0, "gold": 1.0}))
    assert len(m) == 3 and m[2].tolist() == [2.0, 2.0, 0.0] and m[0].tolist() == [3.0, 3.0, 0.0]


@pytest.mark.parametrize("needs_answer, expected_turn1", [(True, [-1.0, 1.0]), (False, [5.0, 1.0])])
def test_the_answer_gate_spares_a_reward_that_reads_no_answer(needs_answer, expected_turn1):
    """A turn with no locatable answer earns the reward's lowest value (declared -1 here) under a reward that
    reads answers; a whole-response reward declared with needs_answer=False (a length reward) keeps its value."""
    from types import SimpleNamespace

    from engine.config.loading import load_config
    from engine.train import score_episodes
    from rewards.registry import RewardSpec

    # len % 7: "I am unsure." 12 -> 5, "Final Answer: 6" 15 -> 1, "Final Answer: 5" 15 -> 1
    episodes = [_episode(TOK, "2+3=?", "I am unsure.", "Final Answer: 5"),
                _episode(TOK, "2+3=?", "Final Answer: 6", "Final Answer: 5")]
    length_mod_7 = lambda inputs: [torch.tensor([float(len(e.turns[k].text) % 7) for e in inputs.episodes])  # noqa: E731
                                   for k in range(2)]
    cfg = load_config(["configs/default.yaml", "rollout.n=2"])
    run = SimpleNamespace(cfg=cfg, tokenizer=TOK, reward=RewardSpec(length_mod_7, False, False, None, needs_answer,
                                                                  lambda options, tokenizer: (-1.0, 6.0)))
    scored = score_episodes(run, 0, 2, episodes, collate(episodes, TOK.pad_token_id), None)
    assert scored.rewards[0].tolist() == expected_turn1
    assert scored.rewards[1].tolist() == [1.0, 1.0]
    assert scored.has_answer[0].tolist() == [0.0, 1.0]  # counted either way (train/no_answer_frac)


# Every built-in reward, with the settings that change its range; each at the answered turn's worst case.
GATE_CASES = [("gold", {}), ("majority", {}), ("agreement", {}), ("self_certainty", {}),
              ("agreement", {"vote_weight": "confidence"}), ("confidence", {"metric": "agreement"}),
              *[("confidence", {"metric": m, "reduction": r, "scope": s}) for m in ("disparity", "prob", "neg_entropy")
                for r in ("mean", "min", "geomean") for s in ("answer", "response")],
              ("mix", {"metric": "neg_entropy", "weights": {"confidence": 1.0, "majority": 0.5}}),
              ("mix", {"weights": {"gold": -1.0, "majority": 1.0}}),
              ("seq2seq", {"model": "a-reward-model"})]


class RewritesEverything:
    """A stand-in reward model whose rewrite shares no token with any response: every token is `change`."""
    max_positions = 10_000

    def rewrite(self, contexts, max_tokens, pad_id, eos_id):
        return [[TOK.convert_tokens_to_ids("#")] for _ in contexts]


@pytest.mark.parametrize("kind, options", GATE_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(GATE_CASES)])
def test_an_answered_turn_scores_at_least_the_same_turn_without_an_answer(kind, options, monkeypatch):
    """Dropping the answer line never pays: an unanswered turn earns the reward's lowest value (it earned 0,
    the top of neg_entropy's range and above a rewritten answer's seq2seq mean of -1)."""
    from engine.config.loading import load_config
    from rewards import seq2seq
    from rewards.registry import reward_needs, turn_has_answer, unanswered_lowest

    monkeypatch.setattr(seq2seq, "load_rewriter", lambda path: RewritesEverything())
    cfg = load_config(["configs/default.yaml"])
    reward_options = OmegaConf.merge(cfg.reward, options)
    spec = reward_needs(kind, reward_options)

    def gated(episodes):
        def worst(name, shape):  # the least confident a turn can be: uniform, p1 = p2, p(sampled) ~ 0
            return {"logprob": torch.full(shape, -30.0), "p_top1": torch.full(shape, 0.3),
                    "p_top2": torch.full(shape, 0.3), "entropy": torch.full(shape, math.log(len(TOK))),
                    "self_certainty": torch.zeros(shape)}[name]
        inputs = RewardInputs(episodes, TOK, reward_options, _stats_with(episodes, worst))
        rewards = [r if r.dim() == 1 else r.sum(-1) / torch.tensor([len(e.turns[k].token_ids) for e in episodes])
                   for k, r in enumerate(spec.fn(inputs))]  # a token-level reward: its turn mean
        return unanswered_lowest(spec, kind, reward_options, TOK, rewards, turn_has_answer(episodes, TOK))

    answered = gated([_episode(TOK, "2+3=?", "Final Answer: 6", "Final Answer: 7"),
                      _episode(TOK, "2+3=?", "Final Answer: 8", "Final Answer: 9")])
    unanswered = gated([_episode(TOK, "2+3=?", "I think it is six.", "Or seven."),
                        _episode(TOK, "2+3=?", "Maybe eight.", "Nine, I guess.")])
    for k in range(2):
        # at the bound itself an answered turn ties the unanswered one, up to float32 rounding of its mean
        assert (answered[k] >= unanswered[k] - 1e-5).all(), (k, answered[k].tolist(), unanswered[k].tolist())


def test_gate_cases_cover_every_built_in_reward():
    built_in = {name for name, spec in REWARDS.items() if spec.fn.__module__.startswith("rewards.")}
    assert built_in == {kind for kind, _ in GATE_CASES}
