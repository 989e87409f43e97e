"""The chunked PyTorch implementation of `engine.ops.logprobs`: the logits of one chunk of tokens at a time,
in float32, so peak memory is one chunk's [rows x vocab] instead of the whole batch's.

The gradient of g_lp * logprob + g_ent * entropy with respect to the logits z of one token is
    g_lp * (onehot(target) - p) - g_ent * p * (log p + H),
(from dH/dz_j = -p_j (z_j - E[z]) and z_j - E[z] = log p_j + H), times `scale` for the raw logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.ops.head_types import PerTokenLoss, Wanted

CHUNK_BYTES = 128 * 2**20  # float32 logits of one chunk; the backward holds up to two such buffers


def chunk_rows(vocab: int, chunk_tokens: int | None) -> int:
    return chunk_tokens or max(1, CHUNK_BYTES // (4 * vocab))


def chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """[rows, V] float32 logits of one chunk (the matmul runs in the weights' dtype)."""
    z = (hidden @ weight.T).float()
    if bias is not None:
        z += bias.float()
    if scale != 1.0:
        z *= scale
    return z


def chunk_stats(z: Tensor, targets: Tensor, wanted: Wanted) -> list[Tensor | None]:
    """[logprob, logsumexp, entropy, mean_logit, top1, top2] of one chunk's logits (None: not wanted)."""
    return chunk_stats_and_probs(z, targets, wanted)[0]


def chunk_stats_and_probs(z: Tensor, targets: Tensor, wanted: Wanted) -> tuple[list[Tensor | None], Tensor | None]:
    """chunk_stats, plus the [rows, V] probabilities when the entropy needed them (None otherwise): the
    gradient reuses them instead of a second exp over the chunk."""
    # one exp gives the logsumexp and, for the entropy, the probabilities (the same arithmetic either way, so
    # the policy's and the reference's log-probs agree bit for bit on equal weights)
    top = z.amax(-1, keepdim=True)
    p = torch.sub(z, top).exp_()
    total = p.sum(-1, keepdim=True)
    lse = (top + total.log()).squeeze(-1)
    p = p.div_(total) if wanted.entropy else None
    out = [z.gather(-1, targets[:, None]).squeeze(-1) - lse, lse, None, None, None, None]
    if wanted.mean_logit:
        out[3] = z.mean(-1)
    if wanted.top2:
        top = z.topk(2, dim=-1).values
        out[4], out[5] = top[:, 0], top[:, 1]
    if wanted.entropy:  # H = lse - sum_j p_j z_j, the row dot products as one batched matmul (no temporary)
        out[2] = lse - torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)
    return out, p


def logits_grad_(z: Tensor, targets: Tensor, lse: Tensor, entropy: Tensor | None, g_lp: Tensor,
                 g_ent: Tensor | None, scale: float, p: Tensor | None = None) -> Tensor:
    """d(loss)/d(raw logits) of one chunk, written over `z`, or over `p` (the chunk's probabilities, when
    the caller has them) when the loss has no entropy term: no second [rows, V] buffer."""
    if g_ent is None:
        dz = (z.sub_(lse[:, None]).exp_() if p is None else p).mul_(-g_lp[:, None])
    else:
        logp = z.sub_(lse[:, None])
        p = logp.exp() if p is None else p
        dz = logp.add_(entropy[:, None]).mul_(g_ent[:, None]).add_(g_lp[:, None]).mul_(p).neg_()
    dz[torch.arange(len(targets), device=z.device), targets] += g_lp
    if scale != 1.0:
        dz *= scale
    return dz


class _Grads:
    """Gradient buffers for hidden, weight and bias; the weight's accumulates in float32."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, needs: tuple[bool, ...]):
        self.hidden = torch.empty_like(hidden) if needs[0] else None
        self.weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs[1] else None
        self.bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs[2] else None
        self.dtype = weight.dtype

    def add_chunk(self, rows: slice, dz: Tensor, hidden: Tensor, weight: Tensor) -> None:
        dz_w = dz.to(self.dtype)
        if self.hidden is not None:
            self.hidden[rows] = dz_w @ weight
        if self.weight is not None:
            if self.dtype == torch.float32:
                self.weight.addmm_(dz_w.T, hidden)
            else:
                self.weight += (dz_w.T @ hidden).float()
        if self.bias is not None:
            self.bias += dz.sum(0)

    def result(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor | None, ...]:
        return (self.hidden, None if self.weight is None else self.weight.to(weight.dtype),
                None if self.bias is None else self.bias.to(bias.dtype))


def _stack(parts: list[list[Tensor | None]], like: Tensor) -> tuple[Tensor, ...]:
    """Per-chunk statistic lists -> one [N] tensor each (empty where not computed)."""
    return tuple(torch.cat([p[i] for p in parts]) if parts and parts[0][i] is not None
                 else like.new_empty(0, dtype=torch.float32) for i in range(6))


class ChunkedStats(torch.autograd.Function):
    """Forward: statistics chunk by chunk. Backward: recompute each chunk's logits, then both gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, wanted, chunk_tokens):
        step = chunk_rows(weight.shape[0], chunk_tokens)
        parts = []
        for start in range(0, hidden.shape[0], step):
            rows = slice(start, start + step)
            parts.append(chunk_stats(chunk_logits(hidden[rows], weight, bias, scale), targets[rows], wanted))
        out = _stack(parts, hidden)
        ctx.save_for_backward(hidden, weight, bias, targets, out[1], out[2])
        ctx.scale, ctx.step = scale, step
        ctx.set_materialize_grads(False)  # an unused entropy leaves g_ent None: the backward's cheaper form
        ctx.mark_non_differentiable(*out[1:2], *out[3:])
        return out

    @staticmethod
    def backward(ctx, g_lp, _g_lse, g_ent, *_):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        has_ent = entropy.numel() > 0 and g_ent is not None
        grads = _Grads(hidden, weight, bias, ctx.needs_input_grad[:3])
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.float()
        for start in range(0, hidden.shape[0], ctx.step):
            rows = slice(start, start + ctx.step)
            z = chunk_logits(hidden[rows], weight, bias, ctx.scale)
            dz = logits_grad_(z, targets[rows], lse[rows], entropy[rows] if has_ent else None, g_lp[rows],
                              g_ent[rows].float() if has_ent else None, ctx.scale)
            grads.add_chunk(rows, dz, hidden[rows], weight)
        return (*grads.result(weight, bias), None, None, None, None)


class ChunkedLoss(torch.autograd.Function):
    """A token-separable loss with its gradient taken in the forward pass, chunk by chunk: each chunk's
    logits are built once (no recompute). Backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, wanted, per_token_loss: PerTokenLoss, chunk_tokens):
        step = chunk_rows(weight.shape[0], chunk_tokens)
        grads = _Grads(hidden, weight, bias, ctx.needs_input_grad[:3])
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        parts = []
        for start in range(0, hidden.shape[0], step):
            rows = slice(start, start + step)
            z = chunk_logits(hidden[rows], weight, bias, scale)
            stats, p = chunk_stats_and_probs(z, targets[rows], wanted)
            chunk_loss, g_lp, g_ent = _loss_and_grads(per_token_loss, stats[0], stats[2], rows)
            loss += chunk_loss
            dz = logits_grad_(z, targets[rows], stats[1], stats[2], g_lp, g_ent, scale, p)
            grads.add_chunk(rows, dz, hidden[rows], weight)
            parts.append(stats)
        out = _stack(parts, hidden)
        result = grads.result(weight, bias)
        ctx.save_for_backward(*(g for g in result if g is not None))
        ctx.present = [g is not None for g in result]
        ctx.mark_non_differentiable(*out)
        return (loss, *out)

    @staticmethod
    def backward(ctx, g_loss, *_):
        saved = iter(ctx.saved_tensors)
        # In place: a second [V, H] copy would cost as much as the weight itself (backward runs once).
        grads = [next(saved).mul_(g_loss) if present else None for present in ctx.present]
        return (*grads, None, None, None, None, None)


def _loss_and_grads(per_token_loss: PerTokenLoss, logprob: Tensor, entropy: Tensor | None,
                    rows: slice) -> tuple[Tensor, Tensor, Tensor | None]:
    """The chunk's summed loss and its gradient with respect to each token's log-prob (and entropy)."""
    with torch.enable_grad():
        lp = logprob.detach().requires_grad_()
        ent = None if entropy is None else entropy.detach().requires_grad_()
        loss = per_token_loss(lp, ent, rows).sum()
        inputs = [lp] if ent is None else [lp, ent]
        # unmaterialized: a loss that ignores the entropy leaves g_ent None, and the backward its cheap form
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    g_lp = torch.zeros_like(logprob, dtype=torch.float32) if grads[0] is None else grads[0].float()
    g_ent = grads[1].float() if ent is not None and grads[1] is not None else None
    return loss.detach().float(), g_lp, g_ent
