"""Self-correction metrics (Acc@t1, Acc@t2, deltas with standard errors) and run logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor


def correction_metrics(correct1: Tensor, correct2: Tensor) -> dict[str, float]:
    """Accuracy at each turn and how the correction turn moved it.

    delta = Acc@t2 - Acc@t1 = delta_i2c - delta_c2i, where delta_i2c is the fraction of problems
    wrong at turn 1 and right at turn 2, and delta_c2i the reverse. se_* are standard errors.
    """
    c1, c2 = correct1.float(), correct2.float()
    n = c1.numel()
    diff = c2 - c1
    acc1, acc2 = c1.mean().item(), c2.mean().item()
    return {
        "acc_t1": acc1,
        "acc_t2": acc2,
        "delta": diff.mean().item(),
        "delta_i2c": ((1 - c1) * c2).mean().item(),
        "delta_c2i": (c1 * (1 - c2)).mean().item(),
        "n": n,
        "se_acc_t1": math.sqrt(acc1 * (1 - acc1) / n),
        "se_acc_t2": math.sqrt(acc2 * (1 - acc2) / n),
        "se_delta": diff.std(unbiased=False).item() / math.sqrt(n),
    }


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int = 10) -> float:
    """ECE over `bins` equal-width confidence bins on [0, 1]: sum_b (n_b / N) |accuracy_b - confidence_b|."""
    confidence, correct = confidence.float(), correct.float()
    index = (confidence * bins).long().clamp(0, bins - 1)  # confidence 1.0 falls in the last bin
    ece = torch.zeros(())
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            ece += in_bin.float().mean() * (correct[in_bin].mean() - confidence[in_bin].mean()).abs()
    return ece.item()


def calibration_metrics(conf1: Tensor, conf2: Tensor, correct1: Tensor, correct2: Tensor,
                        resamples: int = 200) -> dict[str, float]:
    """ECE per turn, with a bootstrap standard error (fixed seed, so before/after are comparable)."""
    out = {}
    gen = torch.Generator().manual_seed(0)
    for turn, conf, correct in (("t1", conf1, correct1), ("t2", conf2, correct2)):
        n = conf.numel()
        boots = [expected_calibration_error(conf[idx], correct[idx])
                 for idx in (torch.randint(0, n, (n,), generator=gen) for _ in range(resamples))]
        out[f"ece_{turn}"] = expected_calibration_error(conf, correct)
        out[f"se_ece_{turn}"] = torch.tensor(boots).std().item()
    return out


class RunLogger:
    """TensorBoard scalars and sample episodes; only rank 0 writes."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.samples_path = run_dir / "samples.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def samples(self, step: int, episodes, rewards1: Tensor, rewards2: Tensor, limit: int) -> None:
        if not self.enabled or limit <= 0:
            return
        with self.samples_path.open("a") as f:
            for ep, r1, r2 in list(zip(episodes, rewards1.tolist(), rewards2.tolist()))[:limit]:
                f.write(json.dumps({
                    "step": step, "prompt": ep.problem.prompt, "answer": ep.problem.answer,
                    "turn1": ep.turn1.text, "turn2": ep.turn2.text, "reward_t1": r1, "reward_t2": r2,
                }) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
