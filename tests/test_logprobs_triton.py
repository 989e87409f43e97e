"""The Triton kernels on the CPU under TRITON_INTERPRET=1, at small sizes, against the float64 reference
(forward statistics and gradients). Tile sizes shrink so several token blocks, vocabulary splits and
backward vocabulary slices are all exercised.

TRITON_INTERPRET must be set before anything imports triton (vLLM does, in the main test process), so
the main process runs these tests again in a child process that has it set from the start."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    def test_triton_kernels_under_the_interpreter():
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                               env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                               timeout=900)
        assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-4000:]
        assert " passed" in child.stdout and "failed" not in child.stdout and "skipped" not in child.stdout

    @pytest.mark.parametrize("dtype", ["fp32", "bf16"])
    def test_kernels_compile_for_hopper(dtype):
        """Triton's real compiler (not the interpreter) builds both kernels for sm_90 on this CPU machine,
        so code the interpreter accepts but a GPU would reject (a non-constexpr global, say) fails here."""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        import engine.ops.logprobs_triton as lt

        options = {"STAT_ROWS": lt.STAT_ROWS, "HAS_BIAS": True, "HAS_ENT": True, "GRAD_H": True, "GRAD_W": True,
                   "GRAD_B": True, "BLOCK_N": lt.BLOCK_N, "BLOCK_V": lt.BLOCK_V, "BLOCK_H": lt.BLOCK_H,
                   "PRECISION": "ieee" if dtype == "fp32" else None, "UPCAST": False}
        for kernel in (lt._forward_kernel, lt._backward_kernel):
            names = kernel.arg_names
            constexprs = {names[i]: options[names[i]] for i in kernel.constexprs}
            signature = {n: "constexpr" if n in constexprs else
                         ("*i64" if n == "t_ptr" else f"*{dtype}" if n in ("h_ptr", "w_ptr", "b_ptr") else "*fp32")
                         if n.endswith("_ptr") else "fp32" if n == "scale" else "i32" for n in names}
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32))
            assert compiled.metadata.shared <= 227 * 1024  # fits an H100's shared memory

    if torch.cuda.is_available():  # compiled kernels at the GPU tile sizes (bench/gpu.sh runs these)
        from engine.ops.logprobs import head_stats
        from tests.test_logprobs import ALL, TOL, _assert_grads_match, coefficients, make_inputs, reference, rel_err

        @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
        @pytest.mark.parametrize("n,h,v", [(300, 256, 5003), (1000, 896, 32000)])
        def test_triton_on_gpu_matches_float64(dtype, n, h, v):
            hidden, weight, b, targets = make_inputs(n=n, h=h, v=v, dtype=dtype, bias=True)
            want = reference(hidden, weight, b, targets, 0.9)
            h_, w_, b_ = (t.cuda().requires_grad_() for t in (hidden, weight, b))
            got = head_stats(h_, w_, targets.cuda(), bias=b_, scale=0.9, wanted=ALL, impl="triton")
            for name, value in want.items():
                assert rel_err(getattr(got, name).cpu(), value) <= TOL[dtype], name
            c_lp, c_ent = coefficients(n)
            (got.logprob * c_lp.cuda() + got.entropy * c_ent.cuda()).sum().backward()
            on_cpu = [SimpleNamespace(grad=t.grad.cpu()) for t in (h_, w_, b_)]
            _assert_grads_match(hidden, weight, b, targets, 0.9, on_cpu, dtype, c_lp, c_ent)
else:
    from engine.ops.logprobs import head_loss, head_stats
    from tests.test_logprobs import ALL, TOL, _assert_grads_match, coefficients, leaves, make_inputs, reference, rel_err


    @pytest.fixture(scope="module")
    def interpreted_triton():
        import engine.ops.logprobs_triton as module

        patch = pytest.MonkeyPatch()
        for name, value in {"BLOCK_N": 16, "BLOCK_V": 16, "BLOCK_H": 16, "SPLITS_TARGET_PROGRAMS": 9,
                            "GRAD_V_SLICE": 48}.items():
            patch.setattr(module, name, value)
        yield module
        patch.undo()


    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("bias,scale", [(False, 1.0), (True, 0.7)])
    def test_triton_matches_float64(interpreted_triton, dtype, bias, scale):
        hidden, weight, b, targets = make_inputs(n=37, h=24, v=101, dtype=dtype, bias=bias)
        want = reference(hidden, weight, b, targets, scale)
        h, w, bb = leaves(hidden, weight, b, dtype)
        got = head_stats(h, w, targets, bias=bb, scale=scale, wanted=ALL, impl="triton")
        for name, value in want.items():
            assert rel_err(getattr(got, name), value) <= TOL[dtype], name
        c_lp, c_ent = coefficients(len(targets))
        (got.logprob * c_lp + got.entropy * c_ent).sum().backward()
        _assert_grads_match(hidden, weight, b, targets, scale, (h, w, bb), dtype, c_lp, c_ent)


    def test_triton_head_loss_and_logprob_only_gradient(interpreted_triton):
        hidden, weight, b, targets = make_inputs(n=20, h=16, v=70)
        c_lp, c_ent = coefficients(len(targets))
        h, w, bb = leaves(hidden, weight, b, torch.float32)
        loss, stats = head_loss(h, w, targets, lambda lp, ent, rows: lp * c_lp[rows], impl="triton")
        assert stats.entropy is None and stats.top1_logit is None  # only what was asked for
        loss.backward()
        _assert_grads_match(hidden, weight, b, targets, 1.0, (h, w, bb), torch.float32, c_lp, c_ent, use_entropy=False)
