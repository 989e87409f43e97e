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

import torch
from torch import Tensor

from rewards.answer_span import locate_answer
from rewards.registry import RewardInputs, register, turn_has_answer

TOKEN_METRICS = ("disparity", "prob", "neg_entropy")
SCOPES = ("answer", "response")
REDUCTIONS = ("mean", "min", "geomean")
LOG_FLOOR = 1e-12  # log(p1 - p2) of a tie would be -inf


def confidence_per_token(stats, metric: str) -> Tensor:
    """[B, T] per-token confidence: disparity p(top1) - p(top2), prob p(chosen), or neg_entropy -H(p)."""
    if metric == "disparity":
        return stats.p_top1 - stats.p_top2
    if metric == "prob":
        return stats.logprob.exp()
    if metric == "neg_entropy":
        return -stats.entropy
    raise ValueError(f"unknown confidence metric {metric!r}")


def log_confidence_per_token(stats, metric: str) -> Tensor:
    """[B, T] log of the per-token confidence in probability space, for the geometric mean."""
    if metric == "prob":
        return stats.logprob
    if metric == "neg_entropy":
        return -stats.entropy  # E_p[log p]: the log of the distribution's geometric-mean probability
    if metric == "disparity":
        return (stats.p_top1 - stats.p_top2).clamp(min=LOG_FLOOR).log()
    raise ValueError(f"unknown confidence metric {metric!r}")


def reduce_tokens(values: Tensor, reduction: str) -> Tensor:
    """One number from a turn's per-token values (log-confidences for `geomean`)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "min":
        return values.min()
    if reduction == "geomean":
        return values.mean().exp()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"unknown reduction {reduction!r}")


def scope_tokens(tokenizer, completion, turn_span: tuple[int, int], scope: str,
                 require_answer: bool = True) -> tuple[int, int] | None:
    """[start, end) of the scope's tokens in the collated row; None when there are none, or when the turn
    has no locatable answer and `require_answer` (a reward: an unanswered turn scores 0, then the engine's lowest)."""
    start, end = turn_span
    if end <= start:
        return None
    if scope == "response":
        return (start, end) if not require_answer or locate_answer(tokenizer, completion) is not None else None
    if scope == "answer":
        answer = locate_answer(tokenizer, completion)
        return None if answer is None else (start + answer[0], start + answer[1])
    raise ValueError(f"unknown scope {scope!r}")


def reduce_over_scope(inputs: RewardInputs, per_token: Tensor, scope: str, reduction: str,
                      require_answer: bool = True) -> list[Tensor]:
    """Per turn, `reduction` of `per_token` [B, T] over each episode's `scope` tokens; 0 where there are none
    (see scope_tokens)."""
    out = torch.zeros(len(inputs.episodes[0].turns), len(inputs.episodes))
    for row, ep in enumerate(inputs.episodes):
        for turn, completion in enumerate(ep.turns):
            tokens = scope_tokens(inputs.tokenizer, completion, ep.span(turn), scope, require_answer)
            if tokens is not None and tokens[1] > tokens[0]:
                out[turn, row] = reduce_tokens(per_token[row, tokens[0]:tokens[1]], reduction)
    return list(out)


def turn_confidence(inputs: RewardInputs, metric: str, scope: str, reduction: str,
                    require_answer: bool = True) -> list[Tensor]:
    """Per-turn confidence of a per-token `metric` over `scope`, reduced by `reduction`."""
    stats = inputs.token_stats
    if reduction == "geomean":
        return reduce_over_scope(inputs, log_confidence_per_token(stats, metric), scope, reduction, require_answer)
    return reduce_over_scope(inputs, confidence_per_token(stats, metric), scope, reduction, require_answer)


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
