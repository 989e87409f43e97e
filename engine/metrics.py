"""Self-correction metrics (Acc@t1, Acc@t2, deltas with standard errors) and run logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
