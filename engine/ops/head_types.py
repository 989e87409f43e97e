"""The fused log-prob head's types, shared by its implementations (engine/ops/logprobs.py and the chunked and
Triton files it dispatches to)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

# per_token_loss(logprob [n], entropy [n] or None, rows: slice of the flat token axis) -> [n] losses
PerTokenLoss = Callable[[Tensor, "Tensor | None", slice], Tensor]


@dataclass(frozen=True)
class Wanted:
    """Which optional statistics to compute (the log-prob and logsumexp always are)."""
    entropy: bool = False
    mean_logit: bool = False  # with logsumexp this gives self-certainty
    top2: bool = False  # the two largest logits, for top-1/top-2 disparity


@dataclass
class HeadStats:
    """Per-token statistics, each [N] float32; None where not asked for."""
    logprob: Tensor  # log p(target)
    logsumexp: Tensor  # logsumexp over the vocabulary of z
    entropy: Tensor | None = None  # H(p) in nats
    mean_logit: Tensor | None = None  # mean over the vocabulary of z
    top1_logit: Tensor | None = None
    top2_logit: Tensor | None = None

    def as_tuple(self) -> tuple[Tensor | None, ...]:
        """The fields in order, the tensors themselves (dataclasses.astuple deep-copies them, which
        breaks autograd)."""
        return tuple(vars(self).values())

    @staticmethod
    def from_tuple(values: tuple[Tensor, ...]) -> "HeadStats":
        """Kernels return (logprob, logsumexp, entropy, mean_logit, top1, top2); empty = not computed."""
        return HeadStats(*(v if v.numel() or i < 2 else None for i, v in enumerate(values)))
