"""Confidence rewards from the policy's own token statistics: no gold labels.

A confidence reward is a per-token metric, a scope and a reduction:

- `reward.metric`: `disparity` p(top1) - p(top2), `prob` p(sampled token), `neg_entropy` -H(p), or
  `agreement` (turn-level, rewards/agreement.py; there scope and reduction only shape the vote weights).
- `reward.scope`: `answer` (the final-answer tokens, RLSF) or `response` (every sampled token of the turn:
  on a task whose answer is copied from its working, the uncertainty lives in the working).
- `reward.reduction`: `mean`, `min` (the weakest token), or `geomean`, the geometric mean in probability
  space, exp(mean log c): exp(mean log p) for `prob` (the per-token perplexity's inverse), exp(-mean H) for
  `neg_entropy` (-H is the expected log-probability) and exp(mean log(p1 - p2)) for `disparity`.

`self_certainty` is KL(Uniform || p) averaged over the response. A turn without a locatable answer gets 0 here;
the engine then gives it the reward's lowest value (rewards.registry.unanswered_lowest).
"""

from __future__ import annotations

import math

from torch import Tensor

from rewards.registry import RewardInputs, register, turn_has_answer
from rewards.token_confidence import reduce_over_scope, turn_confidence

TOKEN_METRICS = ("disparity", "prob", "neg_entropy")
SCOPES = ("answer", "response")
REDUCTIONS = ("mean", "min", "geomean")


def answer_probability(inputs: RewardInputs, logprob: Tensor | None = None) -> list[Tensor]:
    """p(answer tokens | context) per turn, the confidence that calibration (ECE) is measured on;
    0 where the turn has no answer. `logprob` [B, T]: each token's log-prob (default: the scoring pass's)."""
    per_token = inputs.token_stats.logprob if logprob is None else logprob
    sums = reduce_over_scope(inputs, per_token, "answer", "sum")
    has = turn_has_answer(inputs.episodes, inputs.tokenizer)  # exp(0) = 1 would read as certainty
    return [s.exp() * h for s, h in zip(sums, has)]


def confidence_bounds(options, tokenizer) -> tuple[float, float]:
    """p, p1 - p2, a share of votes and any geometric mean lie in [0, 1]; -H(p) (mean or min) in [-log V, 0]."""
    if options.metric == "neg_entropy" and options.get("reduction", "mean") != "geomean":
        return -math.log(len(tokenizer)), 0.0
    return 0.0, 1.0


def confidence_reads(options) -> tuple[str, ...]:
    if options.metric == "agreement":  # rewards/agreement.py's reward, under this name
        from rewards.agreement import agreement_reads

        return ("metric", *agreement_reads(options))
    return "metric", "scope", "reduction"


@register("confidence", needs_token_stats=True, bounds=confidence_bounds, reads=confidence_reads)
def confidence_reward(inputs: RewardInputs) -> list[Tensor]:
    opts = inputs.options
    if opts.metric == "agreement":  # a turn-level metric; rewards/agreement.py builds on this module
        from rewards.agreement import agreement_reward

        return agreement_reward(inputs)
    return turn_confidence(inputs, opts.metric, opts.get("scope", "answer"), opts.get("reduction", "mean"))


@register("self_certainty", needs_token_stats=True, bounds=(0.0, math.inf), reads=())  # KL(U || p) >= 0
def self_certainty_reward(inputs: RewardInputs) -> list[Tensor]:
    return reduce_over_scope(inputs, inputs.token_stats.self_certainty, "response", "mean")
