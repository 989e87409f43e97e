"""Per-token statistics of the policy's next-token distribution, for self-rewards and monitoring.

Each statistic is a [B, T] tensor aligned with `input_ids` like `token_logprobs`: entry t describes
the distribution that produced input_ids[t]; entry 0 is 0. This path materialises the logits of one
micro-batch; the fused kernel of a later issue replaces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class TokenStats:
    logprob: Tensor  # log p(chosen token)
    p_top1: Tensor  # probability of the most likely token
    p_top2: Tensor  # probability of the second most likely token
    entropy: Tensor  # H(p) in nats
    self_certainty: Tensor  # KL(Uniform || p) = logsumexp(z) - mean(z) - log V

    @staticmethod
    def cat(parts: list["TokenStats"]) -> "TokenStats":
        width = max(p.logprob.shape[1] for p in parts)
        return TokenStats(**{f.name: torch.cat([F.pad(getattr(p, f.name), (0, width - getattr(p, f.name).shape[1]))
                                                for p in parts]) for f in fields(TokenStats)})


def stats_from_logits(logits: Tensor, input_ids: Tensor) -> TokenStats:
    """`logits` [B, T, V] from a causal LM over `input_ids` [B, T]."""
    z = logits[:, :-1].float()
    logp = torch.log_softmax(z, dim=-1)
    top2 = logp.topk(2, dim=-1).values.exp()
    lse = torch.logsumexp(z, dim=-1)
    values = {
        "logprob": logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1),
        "p_top1": top2[..., 0],
        "p_top2": top2[..., 1],
        "entropy": -(logp.exp() * logp).sum(-1),
        "self_certainty": lse - z.mean(-1) - math.log(z.shape[-1]),
    }
    return TokenStats(**{k: F.pad(v, (1, 0)) for k, v in values.items()})


@torch.no_grad()
def token_stats(model, input_ids: Tensor, attention_mask: Tensor, micro_batch: int) -> TokenStats:
    parts = []
    for start in range(0, input_ids.shape[0], micro_batch):
        ids, mask = input_ids[start:start + micro_batch], attention_mask[start:start + micro_batch]
        part = stats_from_logits(model(input_ids=ids, attention_mask=mask).logits, ids)
        parts.append(TokenStats(**{f.name: getattr(part, f.name).cpu() for f in fields(TokenStats)}))
    return TokenStats.cat(parts)
