"""Direct preference optimisation (Rafailov et al. 2023) on (chosen, rejected) pairs against a frozen
reference, with an optional weight per pair (RLSF weighs a pair by its confidence gap).

    loss = sum_p w_p * -log sigmoid(beta * [(log pi(c_p) - log ref(c_p)) - (log pi(r_p) - log ref(r_p))]) / sum_p w_p

A sequence's log-prob is the sum of its response tokens' log-probs (`sequence_logprobs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class DPOStats:
    margin: float  # mean beta * (chosen log-ratio - rejected log-ratio): the implicit reward margin
    chosen_logp: float  # mean policy log-prob of the chosen responses
    rejected_logp: float
    accuracy: float  # share of pairs whose margin is positive
    pairs: int


def sequence_logprobs(token_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """[B, T] per-token log-probs and a 0/1 mask of the response tokens -> [B] summed log-prob."""
    return token_logprobs.masked_fill(response_mask == 0, 0.0).sum(dim=-1)  # a -inf outside stays out


def dpo_loss(chosen_logp: Tensor, rejected_logp: Tensor, ref_chosen_logp: Tensor, ref_rejected_logp: Tensor,
             beta: float, weights: Tensor | None = None) -> tuple[Tensor, DPOStats]:
    """The weighted DPO loss over P >= 1 pairs (each argument [P]; weights >= 0, not all 0) and its statistics.
    An empty round is the caller's to skip: here it would be 0/0."""
    if chosen_logp.numel() == 0:
        raise ValueError("dpo_loss needs at least one pair")
    margin = beta * ((chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp))
    weights = torch.ones_like(margin) if weights is None else weights.to(margin)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"dpo_loss needs non-negative pair weights with a positive sum, got {weights.tolist()}")
    loss = (weights * -F.logsigmoid(margin)).sum() / weights.sum()
    stats = DPOStats(margin=margin.mean().item(), chosen_logp=chosen_logp.mean().item(),
                     rejected_logp=rejected_logp.mean().item(), accuracy=(margin > 0).float().mean().item(),
                     pairs=margin.numel())
    return loss, stats
