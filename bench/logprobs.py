"""Benchmark of the fused log-prob head: forward + backward time and peak memory per implementation.

    python -m bench.logprobs [--quick] [--check] [--json PATH]

Each case scores N tokens of hidden size H against a vocabulary of V (a Qwen2.5-0.5B-sized head:
H=896, V=151936) with the learner's kind of loss, sum_t c_t * log p(target_t), and times forward +
backward (median of repeats, after one warm-up).
- mode `loss`: `head_loss`, the learner's path (gradient taken in the forward; naive = plain autograd).
- mode `autograd`: `head_stats` then `.backward()` (the general op; chunked/triton recompute logits).
- impl `liger` (GPU only): Liger's fused linear cross-entropy with reduction=sum, the peer.
peak_mem_bytes is the peak memory above what was resident before the step (inputs and weights), so it
counts logits, buffers and the gradients themselves. On the CPU each case runs in a child process and
reads the kernel's resident-memory high-water mark; on a GPU, torch.cuda's peak allocator statistics.
With --check, each implementation's log-probs and gradients are first compared with float64 maths.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.models.paths import DTYPES
from engine.ops.logprobs import head_loss, head_stats

H, V = 896, 151936


@dataclass(frozen=True)
class Case:
    impl: str
    mode: str
    N: int
    H: int
    V: int
    dtype: str
    device: str
    repeats: int


def inputs(case: Case, seed: int = 0):
    g = torch.Generator(device=case.device).manual_seed(seed)
    dt = DTYPES[case.dtype]
    hidden = torch.randn(case.N, case.H, generator=g, device=case.device).to(dt)
    weight = (torch.randn(case.V, case.H, generator=g, device=case.device) * 0.05).to(dt)
    targets = torch.randint(0, case.V, (case.N,), generator=g, device=case.device)
    coef = torch.randn(case.N, generator=g, device=case.device)
    return hidden, weight, targets, coef


def fwd_bwd(case: Case, hidden, weight, targets, coef):
    """One forward + backward; returns (per-token log-probs or None, d hidden, d weight)."""
    h, w = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    logprob = None
    if case.impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        LigerFusedLinearCrossEntropyLoss(reduction="sum")(w, h, targets).backward()
    elif case.mode == "loss":
        loss, stats = head_loss(h, w, targets, lambda lp, ent, rows: coef[rows] * lp, impl=case.impl)
        loss.backward()
        logprob = stats.logprob
    else:
        stats = head_stats(h, w, targets, impl=case.impl)
        (coef * stats.logprob).sum().backward()
        logprob = stats.logprob.detach()
    return logprob, h.grad, w.grad


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def resident_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def measure(case: Case) -> dict:
    """Median forward+backward time and peak memory above the resident inputs, in this process."""
    hidden, weight, targets, coef = inputs(case)
    fwd_bwd(case, hidden, weight, targets, coef)  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(case.repeats):
        sync(case.device)
        start = time.perf_counter()
        out = fwd_bwd(case, hidden, weight, targets, coef)
        sync(case.device)
        times.append(time.perf_counter() - start)
        del out
    if case.device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fwd_bwd(case, hidden, weight, targets, coef)
        sync(case.device)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = resident_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        out = fwd_bwd(case, hidden, weight, targets, coef)
        peak = resident_bytes("VmHWM") - base
    del out
    return {**asdict(case), "fwd_bwd_ms": 1e3 * statistics.median(times), "peak_mem_bytes": peak,
            "naive_logits_bytes": 4 * case.N * case.V}


def measure_in_child(case: Case) -> dict:
    """CPU peaks need a fresh process: freed memory stays resident, and the high-water mark is per process."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large buffers go back to the kernel when freed
    proc = subprocess.run([sys.executable, "-m", "bench.logprobs", "--case", json.dumps(asdict(case))],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        return {**asdict(case), "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(impls: list[str], dtype: str, device: str, n: int = 256) -> dict[str, float]:
    """Max relative error (norm-wise) of log-probs and both gradients against float64 maths."""
    case = Case("naive", "loss", n, H, V, dtype, device, 1)
    hidden, weight, targets, coef = inputs(case, seed=1)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref = torch.log_softmax(h64 @ w64.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    (coef.double() * ref).sum().backward()
    errors = {}
    for impl in impls:
        if impl == "liger":
            continue
        for mode in ("loss", "autograd"):
            lp, gh, gw = fwd_bwd(Case(impl, mode, n, H, V, dtype, device, 1), hidden, weight, targets, coef)
            errors[f"{impl}/{mode}"] = max(((a.double() - b).norm() / b.norm()).item()
                                           for a, b in ((lp, ref), (gh, h64.grad), (gw, w64.grad)))
    return errors


def machine_name(device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        model = next((line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
        name = f"cpu {os.cpu_count()}core {model}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def matmul_tflops(device: str, dtype: str, n: int) -> float:
    """The measured matmul rate for [n, H] @ [H, V]: the floor for three such matmuls is 6 n H V FLOPs."""
    a = torch.randn(n, H, device=device).to(DTYPES[dtype])
    b = torch.randn(H, V, device=device).to(DTYPES[dtype])
    a @ b
    sync(device)
    start, reps = time.perf_counter(), (20 if device == "cuda" else 2)
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n * H * V * reps / (time.perf_counter() - start) / 1e12


def plan(args) -> list[Case]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        impls = ["naive", "chunked", "triton"] + (["liger"] if _has_liger() else [])
        sizes, dtypes, repeats = ([1024] if args.quick else [4096, 16384]), ["bfloat16", "float32"], 10
    else:  # naive at N=16384 would need ~30 GB of logits on a 24 GB machine
        impls, sizes, dtypes, repeats = ["naive", "chunked"], ([256] if args.quick else [1024, 4096]), ["float32"], 3
    cases = []
    for dtype in dtypes[:1] if args.quick else dtypes:
        for n in sizes:
            for impl in impls:
                modes = ["loss", "autograd"] if impl in ("chunked", "triton") else ["loss"]
                cases += [Case(impl, mode, n, H, V, dtype, device, 2 if args.quick else repeats) for mode in modes]
    return cases


def _has_liger() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(results: list[dict]) -> None:
    print(f"{'impl':8} {'mode':9} {'N':>6} {'dtype':9} {'fwd+bwd ms':>11} {'peak MiB':>9} {'vs naive t':>10} "
          f"{'vs naive mem':>12}")
    naive = {(r["N"], r["dtype"]): r for r in results if r["impl"] == "naive" and "error" not in r}
    for r in results:
        if "error" in r:
            print(f"{r['impl']:8} {r['mode']:9} {r['N']:>6} {r['dtype']:9} error: {r['error']}")
            continue
        base = naive.get((r["N"], r["dtype"]))
        rel_t = f"{r['fwd_bwd_ms'] / base['fwd_bwd_ms']:.2f}x" if base else "-"
        rel_m = f"{r['peak_mem_bytes'] / base['peak_mem_bytes']:.3f}x" if base else "-"
        print(f"{r['impl']:8} {r['mode']:9} {r['N']:>6} {r['dtype']:9} {r['fwd_bwd_ms']:>11.1f} "
              f"{r['peak_mem_bytes'] / 2**20:>9.0f} {rel_t:>10} {rel_m:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute on a 2-core CPU")
    parser.add_argument("--check", action="store_true", help="compare with float64 maths before timing")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: measure one case in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(Case(**json.loads(args.case)))))
        return
    cases = plan(args)
    device = cases[0].device
    report = {"machine": machine_name(device), "device": device, "torch": torch.__version__, "results": []}
    if args.check:
        report["max_rel_err_vs_float64"] = {d: check(sorted({c.impl for c in cases}), d, device)
                                            for d in sorted({c.dtype for c in cases})}
        print("max relative error vs float64:", json.dumps(report["max_rel_err_vs_float64"]), flush=True)
    for case in cases:
        result = measure(case) if device == "cuda" else measure_in_child(case)
        report["results"].append(result)
        print(f"  {case.impl}/{case.mode} N={case.N} {case.dtype}: "
              f"{result.get('fwd_bwd_ms', float('nan')):.1f} ms", flush=True)
    if device == "cuda":
        for dtype in sorted({c.dtype for c in cases}):
            for n in sorted({c.N for c in cases}):
                rate = matmul_tflops(device, dtype, n)
                report.setdefault("matmul_tflops", {})[f"{dtype}/N={n}"] = rate
                report.setdefault("three_matmul_floor_ms", {})[f"{dtype}/N={n}"] = 6 * n * H * V / (rate * 1e12) * 1e3
    print_table(report["results"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
