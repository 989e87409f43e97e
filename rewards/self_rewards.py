"""Label-free rewards: the registry entries that need no gold answer, and `mix`, a weighted sum of them.

- rewards/confidence.py: `confidence` (metric x scope x reduction) and `self_certainty`.
- rewards/agreement.py: `agreement` (soft majority, p(answer | prompt)) and `majority`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewards.agreement import agreement_reward, majority_reward, majority_votes  # noqa: F401  (registers)
from rewards.confidence import answer_probability, confidence_reward, self_certainty_reward  # noqa: F401
from rewards import seq2seq  # noqa: F401  (registers the seq2seq reward)
from rewards.registry import REWARDS, RewardInputs, register


def mix_bounds(options, tokenizer) -> tuple[float, float]:
    """sum_k weight_k * reward_k ranges over the weighted parts' ranges (a negative weight swaps a part's ends)."""
    lowest = highest = 0.0
    for kind, weight in options.weights.items():
        low, high = REWARDS[kind].bounds(options, tokenizer)
        lowest += weight * (low if weight >= 0 else high)
        highest += weight * (high if weight >= 0 else low)
    return lowest, highest


@register("mix", needs_token_stats=True, bounds=mix_bounds, reads=("weights",))  # + its parts' (reward_needs)
def mix_reward(inputs: RewardInputs) -> list[Tensor]:
    """sum_k weight_k * reward_k over `reward.weights` (a mapping from reward kind to weight), per turn."""
    total = [torch.zeros(len(inputs.episodes)) for _ in inputs.episodes[0].turns]
    for kind, weight in inputs.options.weights.items():
        total = [_add(t, weight * r) for t, r in zip(total, REWARDS[kind].fn(inputs))]
    return total


def _add(total: Tensor, part: Tensor) -> Tensor:
    """Per-episode [B] and per-token [B, L] rewards add per token: an episode's value goes to each of its tokens."""
    if total.dim() == part.dim():
        return total + part
    return total.unsqueeze(-1) + part if total.dim() == 1 else total + part.unsqueeze(-1)
