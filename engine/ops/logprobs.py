"""Per-token log-probs, entropy and confidence statistics taken straight from hidden states and the LM
head, without building the [tokens x vocab] float32 logits.

    stats = head_stats(hidden, weight, targets, entropy=True)            # autograd through logprob/entropy
    loss, stats = head_loss(hidden, weight, targets, per_token_loss)     # gradient taken during the forward

The logits are z = scale * (hidden @ weight.T + bias). `head_stats` is the general op: its backward
recomputes each chunk's logits (four matmuls in all). `head_loss` is for losses that are a sum of
per-token terms of (logprob, entropy), like every RL loss here: it knows the per-token gradient as soon
as a chunk's log-probs exist, so it takes the weight and hidden gradients in the same pass (three
matmuls, the floor naive autograd also pays).

Implementations: `naive` (full float32 logits; the reference), `chunked` (PyTorch, chunks of tokens),
`triton` (fused GPU kernels; runs on the CPU under TRITON_INTERPRET=1 for tests).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from engine.ops.head_types import HeadStats, PerTokenLoss, Wanted  # noqa: F401  (the op's types, here too)

IMPLS = ("auto", "naive", "chunked", "triton")


def resolve_impl(impl: str, device: torch.device) -> str:
    """`auto` picks triton on a GPU and chunked otherwise; an impossible choice is a clear error."""
    if impl not in IMPLS:
        raise ValueError(f"logprob impl {impl!r} is not one of {IMPLS}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "chunked"
    if impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("logprob impl 'triton' needs a CUDA device (or TRITON_INTERPRET=1 to run it on the CPU, "
                         "slowly, for tests); use 'chunked' on the CPU")
    return impl


def impl_for_this_machine(impl: str) -> torch.device:
    """The device scoring runs on, after checking `learner.logprob_impl` can run there (a UserError if not)."""
    from engine.base.errors import UserError

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolve_impl(impl, device)
    except ValueError as err:
        raise UserError(f"learner.logprob_impl={impl}: {err}.") from None
    return device


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def head_stats(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, scale: float = 1.0,
               wanted: Wanted = Wanted(), impl: str = "auto", chunk_tokens: int | None = None) -> HeadStats:
    """Statistics of p = softmax(z) for each of the N rows of `hidden` [N, H] against `weight` [V, H].

    Differentiable in `hidden`, `weight` and `bias` through `logprob` and `entropy`."""
    impl = resolve_impl(impl, hidden.device)
    if impl == "naive" or hidden.shape[0] == 0:  # no tokens: nothing to launch a kernel for
        return naive_head_stats(hidden, weight, targets, bias, scale, wanted)
    if impl == "chunked":
        from engine.ops.logprobs_chunked import ChunkedStats

        return HeadStats.from_tuple(ChunkedStats.apply(hidden, weight, bias, targets, scale, wanted, chunk_tokens))
    from engine.ops.logprobs_triton import TritonStats

    return HeadStats.from_tuple(TritonStats.apply(hidden, weight, bias, targets, scale, wanted))


def head_loss(hidden: Tensor, weight: Tensor, targets: Tensor, per_token_loss: PerTokenLoss,
              bias: Tensor | None = None, scale: float = 1.0, wanted: Wanted = Wanted(), impl: str = "auto",
              chunk_tokens: int | None = None) -> tuple[Tensor, HeadStats]:
    """sum_t per_token_loss(logprob, entropy, rows)[t] as a differentiable scalar, plus the (detached)
    statistics. `per_token_loss` must be elementwise over tokens: it sees one chunk of rows at a time."""
    impl = resolve_impl(impl, hidden.device)
    if impl == "chunked":
        from engine.ops.logprobs_chunked import ChunkedLoss

        loss, *values = ChunkedLoss.apply(hidden, weight, bias, targets, scale, wanted, per_token_loss, chunk_tokens)
        return loss, HeadStats.from_tuple(tuple(values))
    stats = head_stats(hidden, weight, targets, bias, scale, wanted, impl)
    loss = per_token_loss(stats.logprob, stats.entropy, slice(0, hidden.shape[0])).sum()
    return loss, detached(stats)


def detached(stats: HeadStats) -> HeadStats:
    return HeadStats(*(None if v is None else v.detach() for v in stats.as_tuple()))


def naive_head_stats(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None, scale: float,
                     wanted: Wanted) -> HeadStats:
    """The reference: full [N, V] float32 logits, log_softmax and gather."""
    z = torch.nn.functional.linear(hidden, weight, bias).float() * scale
    logp = torch.log_softmax(z, dim=-1)
    lse = torch.logsumexp(z, dim=-1)
    stats = HeadStats(logprob=logp.gather(-1, targets[:, None]).squeeze(-1), logsumexp=lse.detach())
    if wanted.entropy:
        stats.entropy = -(logp.exp() * logp).sum(-1)
    if wanted.mean_logit:
        stats.mean_logit = z.detach().mean(-1)
    if wanted.top2:
        top = z.detach().topk(2, dim=-1).values
        stats.top1_logit, stats.top2_logit = top[:, 0], top[:, 1]
    return stats
