"""The Triton implementation of `engine.ops.logprobs`: logits live only in registers, one
[BLOCK_N x BLOCK_V] tile at a time.

Forward: a grid of (token blocks x vocabulary splits). Each program sweeps its split tile by tile with
an online softmax, keeping per token the running max m, sum exp(z - m), sum exp(z - m) * z, sum z, the
target's logit and the two largest logits; a tiny PyTorch step merges the splits.
Backward: a grid of (token blocks x vocabulary tiles). Each program recomputes its logits tile, turns it
into d(loss)/dz and adds dz @ W to the hidden gradient and dz^T @ h to the weight gradient with atomic
adds into float32 buffers. The vocabulary is processed in slices so the float32 weight-gradient buffer
stays small when the weights are bf16.

On the CPU it runs under TRITON_INTERPRET=1 (set before this module is imported), for tests only.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from engine.ops.head_types import Wanted

BLOCK_N, BLOCK_V, BLOCK_H = 64, 128, 64  # GPU tile sizes; tests shrink them
SPLITS_TARGET_PROGRAMS = 1024  # enough programs to fill an H100/H200 when the batch is short
GRAD_V_SLICE = 16384  # vocabulary rows per backward launch (its float32 weight-gradient buffer)
STAT_ROWS = 7  # m, sum exp, sum exp*z, sum z, target logit, top1, top2


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, scale,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """scale * (h[rows] @ w[cols]^T + b[cols]) in float32; invalid columns are -inf."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        a = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        b = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_w + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                    other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_ok[None, :], acc * scale, float("-inf"))


@triton.jit
def _forward_kernel(h_ptr, w_ptr, b_ptr, t_ptr, part_ptr, N, V, H, v_per_split, stride_h, stride_w, scale,
                    STAT_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                    PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid_n, pid_s = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    target = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    lane = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    top1 = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    top2 = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    sum_exp = tl.zeros((BLOCK_N,), tl.float32)
    sum_exp_z = tl.zeros((BLOCK_N,), tl.float32)
    sum_z = tl.zeros((BLOCK_N,), tl.float32)
    target_z = tl.zeros((BLOCK_N,), tl.float32)
    v_start = pid_s * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + lane
        col_ok = cols < v_end
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, scale,
                         HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST)
        z_finite = tl.where(col_ok[None, :], z, 0.0)
        target_z += tl.sum(tl.where(cols[None, :] == target[:, None], z_finite, 0.0), 1)
        sum_z += tl.sum(z_finite, 1)
        m_new = tl.maximum(m, tl.max(z, 1))
        rescale = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        sum_exp = sum_exp * rescale + tl.sum(e, 1)
        sum_exp_z = sum_exp_z * rescale + tl.sum(e * z_finite, 1)
        m = m_new
        # Merge this tile's two largest logits into the running pair.
        tile1 = tl.max(z, 1)
        arg1 = tl.argmax(z, 1)
        tile2 = tl.max(tl.where(lane[None, :] == arg1[:, None], float("-inf"), z), 1)
        top2 = tl.maximum(tl.minimum(top1, tile1), tl.maximum(top2, tile2))
        top1 = tl.maximum(top1, tile1)
    base = part_ptr + (pid_s * STAT_ROWS * N + rows).to(tl.int64)
    tl.store(base + 0 * N, m, mask=row_ok)
    tl.store(base + 1 * N, sum_exp, mask=row_ok)
    tl.store(base + 2 * N, sum_exp_z, mask=row_ok)
    tl.store(base + 3 * N, sum_z, mask=row_ok)
    tl.store(base + 4 * N, target_z, mask=row_ok)
    tl.store(base + 5 * N, top1, mask=row_ok)
    tl.store(base + 6 * N, top2, mask=row_ok)


@triton.jit
def _backward_kernel(h_ptr, w_ptr, b_ptr, t_ptr, lse_ptr, ent_ptr, glp_ptr, gent_ptr, gh_ptr, gw_ptr, gb_ptr,
                     N, V, H, v_offset, v_end, stride_h, stride_w, scale,
                     HAS_BIAS: tl.constexpr, HAS_ENT: tl.constexpr, GRAD_H: tl.constexpr, GRAD_W: tl.constexpr,
                     GRAD_B: tl.constexpr,                      BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr,
                     UPCAST: tl.constexpr):
    pid_n, pid_v = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = v_offset + pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < v_end
    z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w, scale,
                     HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g_lp = tl.load(glp_ptr + rows, mask=row_ok, other=0.0)
    target = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    logp = z - lse[:, None]
    p = tl.where(col_ok[None, :], tl.exp(logp), 0.0)
    coef = g_lp[:, None] + tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    if HAS_ENT:
        entropy = tl.load(ent_ptr + rows, mask=row_ok, other=0.0)
        g_ent = tl.load(gent_ptr + rows, mask=row_ok, other=0.0)
        coef += g_ent[:, None] * (tl.where(col_ok[None, :], logp, 0.0) + entropy[:, None])
    dz = -p * coef + tl.where(cols[None, :] == target[:, None], g_lp[:, None], 0.0)
    dz = tl.where(row_ok[:, None] & col_ok[None, :], dz * scale, 0.0)
    dz_w = dz.to(w_ptr.dtype.element_ty)
    if UPCAST:
        dz_w = dz_w.to(tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        if GRAD_H:
            w = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_w + ks[None, :],
                        mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            if UPCAST:
                w = w.to(tl.float32)
            tl.atomic_add(gh_ptr + rows[:, None].to(tl.int64) * H + ks[None, :],
                          tl.dot(dz_w, w, input_precision=PRECISION), mask=row_ok[:, None] & k_ok[None, :], sem="relaxed")
        if GRAD_W:
            h = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            if UPCAST:
                h = h.to(tl.float32)
            tl.atomic_add(gw_ptr + (cols - v_offset)[:, None].to(tl.int64) * H + ks[None, :],
                          tl.dot(tl.trans(dz_w), h, input_precision=PRECISION), mask=col_ok[:, None] & k_ok[None, :],
                          sem="relaxed")
    if GRAD_B:
        tl.atomic_add(gb_ptr + cols, tl.sum(dz, 0), mask=col_ok, sem="relaxed")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _dot_options(dtype: torch.dtype) -> dict:
    """float32 must not silently drop to tf32. The CPU interpreter multiplies bf16 tiles wrongly, so
    there they are widened first: bf16 products are exact in float32, so the maths is the GPU's."""
    upcast = dtype != torch.float32 and os.environ.get("TRITON_INTERPRET") == "1"
    return {"PRECISION": "ieee" if dtype == torch.float32 or upcast else None, "UPCAST": upcast}


def _forward(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, scale: float) -> tuple[Tensor, ...]:
    """(logprob, logsumexp, entropy, mean_logit, top1, top2), each [N] float32."""
    (n, h), v = hidden.shape, weight.shape[0]
    n_blocks = _cdiv(n, BLOCK_N)
    splits = max(1, min(_cdiv(v, BLOCK_V), SPLITS_TARGET_PROGRAMS // n_blocks))
    v_per_split = _cdiv(_cdiv(v, splits), BLOCK_V) * BLOCK_V
    splits = _cdiv(v, v_per_split)
    part = torch.empty(splits, STAT_ROWS, n, dtype=torch.float32, device=hidden.device)
    _forward_kernel[(n_blocks, splits)](
        hidden, weight, hidden if bias is None else bias, targets, part, n, v, h, v_per_split,
        hidden.stride(0), weight.stride(0), float(scale), STAT_ROWS=STAT_ROWS, HAS_BIAS=bias is not None,
        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H, **_dot_options(hidden.dtype))
    m, sum_exp, sum_exp_z, sum_z, target_z, top1, top2 = part.unbind(1)  # each [splits, N]
    m_all = m.max(0).values
    weight_split = torch.exp(m - m_all)
    total = (sum_exp * weight_split).sum(0)
    lse = m_all + torch.log(total)
    entropy = lse - (sum_exp_z * weight_split).sum(0) / total
    top = torch.cat([top1, top2]).topk(2, dim=0).values
    return target_z.sum(0) - lse, lse, entropy, sum_z.sum(0) / v, top[0], top[1]


def _backward(hidden, weight, bias, targets, scale, lse, entropy, g_lp, g_ent, needs) -> tuple[Tensor | None, ...]:
    (n, h), v = hidden.shape, weight.shape[0]
    grad_h = torch.zeros(n, h, dtype=torch.float32, device=hidden.device) if needs[0] else None
    grad_w = torch.zeros(v, h, dtype=weight.dtype, device=weight.device) if needs[1] else None
    grad_b = torch.zeros(v, dtype=torch.float32, device=weight.device) if needs[2] else None
    dummy = lse
    for v0 in range(0, v, GRAD_V_SLICE):
        v1 = min(v0 + GRAD_V_SLICE, v)
        # float32 weights take their gradient in place; others through a float32 slice buffer.
        if grad_w is None or grad_w.dtype == torch.float32:
            buffer = dummy if grad_w is None else grad_w[v0:v1]
        else:
            buffer = torch.zeros(v1 - v0, h, dtype=torch.float32, device=weight.device)
        _backward_kernel[(_cdiv(n, BLOCK_N), _cdiv(v1 - v0, BLOCK_V))](
            hidden, weight, dummy if bias is None else bias, targets, lse, entropy, g_lp,
            dummy if g_ent is None else g_ent, dummy if grad_h is None else grad_h, buffer,
            dummy if grad_b is None else grad_b, n, v, h, v0, v1, hidden.stride(0), weight.stride(0), float(scale),
            HAS_BIAS=bias is not None, HAS_ENT=g_ent is not None, GRAD_H=grad_h is not None,
            GRAD_W=grad_w is not None, GRAD_B=grad_b is not None,
            BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, BLOCK_H=BLOCK_H, **_dot_options(hidden.dtype))
        if grad_w is not None and buffer.data_ptr() != grad_w[v0:v1].data_ptr():
            grad_w[v0:v1] = buffer
    return (None if grad_h is None else grad_h.to(hidden.dtype), grad_w,
            None if grad_b is None else grad_b.to(bias.dtype))


class TritonStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, wanted: Wanted):
        hidden, weight = hidden.contiguous(), weight.contiguous()
        logprob, lse, entropy, mean_logit, top1, top2 = _forward(hidden, weight, bias, targets, scale)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.scale, ctx.wanted = scale, wanted
        ctx.set_materialize_grads(False)  # an unused entropy leaves g_ent None: the kernel's cheaper form
        empty = lse.new_empty(0)
        out = (logprob, lse, entropy if wanted.entropy else empty, mean_logit if wanted.mean_logit else empty,
               top1 if wanted.top2 else empty, top2 if wanted.top2 else empty)
        ctx.mark_non_differentiable(out[1], *out[3:])
        return out

    @staticmethod
    def backward(ctx, g_lp, _g_lse, g_ent, *_):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        use_ent = ctx.wanted.entropy and g_ent is not None
        g_lp = torch.zeros_like(lse) if g_lp is None else g_lp
        grads = _backward(hidden, weight, bias, targets, ctx.scale, lse, entropy, g_lp.float().contiguous(),
                          g_ent.float().contiguous() if use_ent else None, ctx.needs_input_grad[:3])
        return (*grads, None, None, None)
