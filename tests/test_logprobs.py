"""The fused log-prob / entropy op against a float64 log_softmax + gather reference, forward and
gradients, for every implementation; and a check that the chunked path never builds [N, V] logits."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.ops.logprobs import Wanted, head_loss, head_stats, resolve_impl

ALL = Wanted(entropy=True, mean_logit=True, top2=True)
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def make_inputs(n=37, h=24, v=101, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * 0.5).to(dtype)
    b = (torch.randn(v, generator=g) * 0.3).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


def reference(hidden, weight, bias, targets, scale):
    """Float64 naive maths on the same (possibly bf16-rounded) inputs, with autograd."""
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    z = z * scale
    logp = torch.log_softmax(z, dim=-1)
    top = z.topk(2, dim=-1).values
    return {"logprob": logp.gather(-1, targets[:, None]).squeeze(-1), "entropy": -(logp.exp() * logp).sum(-1),
            "logsumexp": torch.logsumexp(z, -1), "mean_logit": z.mean(-1), "top1_logit": top[:, 0],
            "top2_logit": top[:, 1]}


def rel_err(got, want):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all()
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def leaves(hidden, weight, bias, dtype):
    out = [t.clone().requires_grad_() for t in (hidden, weight)]
    return out + [None if bias is None else bias.clone().requires_grad_()]


def coefficients(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g), torch.randn(n, generator=g)


IMPL_CASES = [("naive", {}), ("chunked", {"chunk_tokens": 8}), ("chunked", {})]


@pytest.mark.parametrize("impl,kw", IMPL_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias,scale", [(False, 1.0), (True, 0.7)])
def test_forward_and_gradients_match_float64(impl, kw, dtype, bias, scale):
    hidden, weight, b, targets = make_inputs(dtype=dtype, bias=bias)
    want = reference(hidden, weight, b, targets, scale)
    h, w, bb = leaves(hidden, weight, b, dtype)
    got = head_stats(h, w, targets, bias=bb, scale=scale, wanted=ALL, impl=impl, **kw)
    for name, value in want.items():
        assert rel_err(getattr(got, name), value) <= TOL[dtype], name
    c_lp, c_ent = coefficients(len(targets))
    (got.logprob * c_lp + got.entropy * c_ent).sum().backward()
    _assert_grads_match(hidden, weight, b, targets, scale, (h, w, bb), dtype, c_lp, c_ent)


def _assert_grads_match(hidden, weight, b, targets, scale, got_leaves, dtype, c_lp, c_ent, use_entropy=True):
    ref_leaves = leaves(hidden, weight, b, torch.float64)
    want = reference(*ref_leaves, targets, scale)
    loss = want["logprob"] * c_lp.double()
    if use_entropy:
        loss = loss + want["entropy"] * c_ent.double()
    loss.sum().backward()
    for name, mine, ref in zip(("hidden", "weight", "bias"), got_leaves, ref_leaves):
        if ref is not None:
            assert mine.grad is not None and mine.grad.dtype == dtype, name
            assert rel_err(mine.grad, ref.grad) <= TOL[dtype], name


# (entropy wanted, the loss uses log-probs, the loss uses entropy): the learner's update wants the entropy
# (train/entropy) and ignores it in its loss; an entropy-only loss has no log-prob gradient.
LOSS_TERMS = [(False, True, False), (True, True, False), (True, True, True), (True, False, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("want_entropy, use_logprob, use_entropy", LOSS_TERMS)
def test_head_loss_takes_the_gradient_in_the_forward(dtype, want_entropy, use_logprob, use_entropy):
    hidden, weight, b, targets = make_inputs(dtype=dtype, bias=True)
    c_lp, c_ent = coefficients(len(targets))
    c_lp = c_lp if use_logprob else torch.zeros_like(c_lp)
    seen_rows = []

    def per_token_loss(lp, ent, rows):  # a loss that is a sum of per-token terms
        seen_rows.append(rows)
        out = lp * c_lp[rows] if use_logprob else torch.zeros_like(lp)
        return out + ent * c_ent[rows] if use_entropy else out

    h, w, bb = leaves(hidden, weight, b, dtype)
    loss, stats = head_loss(h, w, targets, per_token_loss, bias=bb, scale=1.3,
                            wanted=Wanted(entropy=want_entropy), impl="chunked", chunk_tokens=10)
    assert [r.start for r in seen_rows] == [0, 10, 20, 30]  # chunk by chunk, before any backward
    want = reference(hidden, weight, b, targets, 1.3)
    want_loss = (want["logprob"] * c_lp.double() + (want["entropy"] * c_ent.double() if use_entropy else 0)).sum()
    assert loss.item() == pytest.approx(want_loss.item(), rel=TOL[dtype], abs=TOL[dtype])
    assert not stats.logprob.requires_grad
    if want_entropy:  # reported whether or not the loss uses it
        assert rel_err(stats.entropy.double(), want["entropy"]) <= TOL[dtype]
    (2.0 * loss).backward()  # the upstream gradient scales the stored ones
    _assert_grads_match(hidden, weight, b, targets, 1.3, (h, w, bb), dtype, 2 * c_lp, 2 * c_ent, use_entropy)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_extreme_logits_stay_finite(impl):
    hidden, weight, b, targets = make_inputs()
    h = (hidden * 1e3).requires_grad_()  # logits in the tens of thousands: exp overflows without the max shift
    got = head_stats(h, weight, targets, wanted=ALL, impl=impl, chunk_tokens=8)
    (got.logprob.sum() + got.entropy.sum()).backward()
    for value in (got.logprob, got.entropy, got.logsumexp, h.grad):
        assert torch.isfinite(value).all()
    assert (got.entropy >= -1e-4).all() and (got.logprob <= 1e-4).all()


class LargestTensor(TorchDispatchMode):
    """Records the largest float32 tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("loss_in_forward", [False, True])
def test_chunked_never_builds_full_logits(loss_in_forward):
    n, v = 64, 1000
    hidden, weight, _, targets = make_inputs(n=n, h=16, v=v)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    with LargestTensor() as seen:
        if loss_in_forward:
            loss, _ = head_loss(h, w, targets, lambda lp, ent, rows: -lp + 0.1 * ent, wanted=ALL,
                                impl="chunked", chunk_tokens=16)
        else:
            stats = head_stats(h, w, targets, wanted=ALL, impl="chunked", chunk_tokens=16)
            loss = (stats.logprob + stats.entropy).sum()
        loss.backward()
    assert seen.numel <= 16 * v  # one chunk's logits; [64, 1000] would be 4x that
    with LargestTensor() as naive:
        head_stats(hidden, weight, targets, impl="naive").logprob.sum().backward()
    assert naive.numel >= n * v  # the probe does see full logits when they exist


def test_auto_picks_chunked_on_cpu_and_triton_needs_a_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_impl("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match="not one of"):
        resolve_impl("fast", torch.device("cpu"))


def test_self_certainty_from_logsumexp_and_mean():
    """KL(U || p) = logsumexp(z) - mean(z) - log V: zero for uniform logits."""
    hidden, weight, _, targets = make_inputs()
    stats = head_stats(hidden * 0, weight, targets, wanted=ALL, impl="chunked")
    sc = stats.logsumexp - stats.mean_logit - math.log(weight.shape[0])
    assert sc.abs().max().item() < 1e-6
    assert torch.allclose(stats.entropy, torch.full_like(stats.entropy, math.log(weight.shape[0])), atol=1e-5)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_no_tokens_is_not_an_error(impl):
    """A micro-batch whose episodes sampled nothing scores zero tokens: an empty result and a zero loss."""
    hidden, weight, _, targets = make_inputs(n=0)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    loss, stats = head_loss(h, w, targets, lambda lp, ent, rows: -lp, impl=impl)
    loss.backward()
    assert stats.logprob.shape == (0,) and loss.item() == 0.0 and w.grad.abs().sum().item() == 0.0


def test_a_loss_without_an_entropy_term_asks_for_no_entropy_gradient():
    """The chunked head's per-chunk gradients: an entropy the loss ignores gives g_ent None (the backward
    then skips the entropy term's extra [rows, V] pass); one it uses gives its coefficients."""
    from engine.ops.logprobs_chunked import _loss_and_grads

    lp, ent = torch.tensor([-1.0, -2.0]), torch.tensor([0.5, 0.25])
    loss, g_lp, g_ent = _loss_and_grads(lambda lp, _ent, rows: -3.0 * lp, lp, ent, slice(0, 2))
    assert loss.item() == 9.0 and g_lp.tolist() == [-3.0, -3.0] and g_ent is None
    loss, g_lp, g_ent = _loss_and_grads(lambda _lp, ent, rows: 2.0 * ent, lp, ent, slice(0, 2))
    assert loss.item() == 1.5 and g_lp.tolist() == [0.0, 0.0] and g_ent.tolist() == [2.0, 2.0]
