"""Per-token statistics of the policy's next-token distribution, for self-rewards and monitoring.

Each statistic is a [B, T] tensor aligned with `input_ids`: entry t describes the distribution that
produced input_ids[t]; entry 0 and padding are 0. They come from the fused head (engine.ops.logprobs), so
no [tokens x vocab] logits are built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.ops.logprobs import HeadStats, Wanted
from engine.ops.scoring import grid, targets_of

ALL_STATS = Wanted(entropy=True, mean_logit=True, top2=True)


@dataclass
class TokenStats:
    logprob: Tensor  # log p(chosen token)
    p_top1: Tensor  # probability of the most likely token
    p_top2: Tensor  # probability of the second most likely token
    entropy: Tensor  # H(p) in nats
    self_certainty: Tensor  # KL(Uniform || p) = logsumexp(z) - mean(z) - log V

    @staticmethod
    def from_head(stats: HeadStats, scored: Tensor, vocab_size: int) -> "TokenStats":
        values = {
            "logprob": stats.logprob,
            "p_top1": torch.exp(stats.top1_logit - stats.logsumexp),
            "p_top2": torch.exp(stats.top2_logit - stats.logsumexp),
            "entropy": stats.entropy,
            "self_certainty": stats.logsumexp - stats.mean_logit - math.log(vocab_size),
        }
        return TokenStats(**{k: grid(v.detach().float(), scored) for k, v in values.items()})

    @staticmethod
    def cat(parts: list["TokenStats"]) -> "TokenStats":
        width = max(p.logprob.shape[1] for p in parts)
        return TokenStats(**{f.name: torch.cat([F.pad(getattr(p, f.name), (0, width - getattr(p, f.name).shape[1]))
                                                for p in parts]) for f in fields(TokenStats)})


@torch.no_grad()
def token_stats(scorer, input_ids: Tensor, attention_mask: Tensor, micro_batch: int, vocab_size: int,
                passes: int = 0) -> TokenStats:
    """`scorer(input_ids, attention_mask, wanted)` is a ScoringModel (or the DeepSpeed engine around one).
    `passes`: run at least this many forwards, the ones past the batch's own on a throwaway row (a ZeRO-3
    forward is collective: every rank must run as many). An empty batch gives [0, T] statistics."""
    parts = []
    for start in range(0, input_ids.shape[0], micro_batch):
        ids, mask = input_ids[start:start + micro_batch], attention_mask[start:start + micro_batch]
        part = TokenStats.from_head(HeadStats(*scorer(ids, mask, ALL_STATS)), targets_of(mask), vocab_size)
        parts.append(TokenStats(**{f.name: getattr(part, f.name).cpu() for f in fields(TokenStats)}))
    _throwaway_forwards(scorer, input_ids, attention_mask, passes - len(parts))
    if not parts:
        return TokenStats(**{f.name: torch.zeros(input_ids.shape, dtype=torch.float32) for f in fields(TokenStats)})
    return TokenStats.cat(parts)


def _throwaway_forwards(scorer, input_ids: Tensor, attention_mask: Tensor, count: int) -> None:
    """`count` forwards whose results are dropped: on the batch's first row, or on two tokens of id 0 when it
    has none."""
    ids, mask = input_ids[:1], attention_mask[:1]
    if not len(ids):
        ids = torch.zeros(1, 2, dtype=torch.long, device=input_ids.device)
        mask = torch.ones_like(ids)
    for _ in range(count):
        scorer(ids, mask, ALL_STATS)
