"""A turn's confidence from the policy's token statistics: a per-token metric, read over a scope of the turn
(its answer or its whole response) and reduced to one number (rewards/confidence.py lists the choices). Both
the confidence rewards and the agreement reward's vote weights build on it."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.tasks.answer_span import locate_answer
from rewards.registry import RewardInputs

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
