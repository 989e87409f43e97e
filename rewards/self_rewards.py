"""Rewards from the model's own confidence: no gold labels.

- `confidence` (RLSF): a confidence metric averaged over the final-answer tokens.
- `self_certainty`: KL(Uniform || p) averaged over all response tokens of the turn.
- `majority` (TTRL-style): 1 when the turn's answer is the strict majority among the prompt's samples.
- `mix`: a weighted sum of registered rewards (`reward.weights`).

A turn without a locatable answer gets 0 from every reward here.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
from torch import Tensor

from rewards.answer import extract_answer
from rewards.answer_span import locate_answer
from rewards.registry import REWARDS, RewardInputs, register, turn_has_answer


def confidence_per_token(stats, metric: str) -> Tensor:
    """[B, T] per-token confidence: disparity p(top1) - p(top2), prob p(chosen), or neg_entropy -H(p)."""
    if metric == "disparity":
        return stats.p_top1 - stats.p_top2
    if metric == "prob":
        return stats.logprob.exp()
    if metric == "neg_entropy":
        return -stats.entropy
    raise ValueError(f"unknown confidence metric {metric!r}")


def _turns(episode):
    return ((episode.turn1, episode.turn1_span), (episode.turn2, episode.turn2_span))


def answer_span_means(inputs: RewardInputs, per_token: Tensor, reduce: str = "mean") -> tuple[Tensor, Tensor]:
    """Mean (or sum) of `per_token` over each turn's answer tokens; 0 where the turn has no answer."""
    out = torch.zeros(2, len(inputs.episodes))
    for row, ep in enumerate(inputs.episodes):
        for turn, (completion, (start, _)) in enumerate(_turns(ep)):
            span = locate_answer(inputs.tokenizer, completion)
            if span is not None:
                values = per_token[row, start + span[0]:start + span[1]]
                out[turn, row] = values.sum() if reduce == "sum" else values.mean()
    return out[0], out[1]


def answer_probability(inputs: RewardInputs) -> tuple[Tensor, Tensor]:
    """p(answer tokens | context) per turn, the confidence that calibration (ECE) is measured on;
    0 where the turn has no answer."""
    s1, s2 = answer_span_means(inputs, inputs.token_stats.logprob, reduce="sum")
    h1, h2 = turn_has_answer(inputs.episodes, inputs.tokenizer)  # exp(0) = 1 would read as certainty
    return s1.exp() * h1, s2.exp() * h2


def response_means(inputs: RewardInputs, per_token: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of `per_token` over each turn's sampled tokens; 0 where the turn has no answer."""
    out = torch.zeros(2, len(inputs.episodes))
    for row, ep in enumerate(inputs.episodes):
        for turn, (completion, (start, end)) in enumerate(_turns(ep)):
            if end > start and locate_answer(inputs.tokenizer, completion) is not None:
                out[turn, row] = per_token[row, start:end].mean()
    return out[0], out[1]


@register("confidence", needs_token_stats=True)
def confidence_reward(inputs: RewardInputs) -> tuple[Tensor, Tensor]:
    return answer_span_means(inputs, confidence_per_token(inputs.token_stats, inputs.options.metric))


@register("self_certainty", needs_token_stats=True)
def self_certainty_reward(inputs: RewardInputs) -> tuple[Tensor, Tensor]:
    return response_means(inputs, inputs.token_stats.self_certainty)


def majority_votes(answers: list[str | None]) -> list[float]:
    """1.0 for answers equal to the strict majority of the non-empty answers; a tie has no majority."""
    counts = Counter(a for a in answers if a is not None).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return [0.0] * len(answers)
    return [float(a == counts[0][0]) for a in answers]


@register("majority")
def majority_reward(inputs: RewardInputs) -> tuple[Tensor, Tensor]:
    groups: dict[int, list[int]] = defaultdict(list)
    for row, ep in enumerate(inputs.episodes):
        groups[ep.group].append(row)
    out = torch.zeros(2, len(inputs.episodes))
    for rows in groups.values():
        for turn in (0, 1):
            texts = [(inputs.episodes[r].turn1 if turn == 0 else inputs.episodes[r].turn2).text for r in rows]
            out[turn, rows] = torch.tensor(majority_votes([extract_answer(t) for t in texts]))
    return out[0], out[1]


@register("mix", needs_token_stats=True)
def mix_reward(inputs: RewardInputs) -> tuple[Tensor, Tensor]:
    """sum_k weight_k * reward_k over `reward.weights` (a mapping from reward kind to weight)."""
    r1 = torch.zeros(len(inputs.episodes))
    r2 = torch.zeros(len(inputs.episodes))
    for kind, weight in inputs.options.weights.items():
        k1, k2 = REWARDS[kind].fn(inputs)
        r1, r2 = r1 + weight * k1, r2 + weight * k2
    return r1, r2
