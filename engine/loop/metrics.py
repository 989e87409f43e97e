"""Self-correction metrics (Acc@t1, Acc@t2, deltas with standard errors) and run logging."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor


def correction_metrics(correct: Sequence[Tensor]) -> dict[str, float]:
    """Accuracy at each of the K turns (one 0/1 tensor per turn) and how the corrections moved it.

    delta = Acc@tK - Acc@t1 = delta_i2c - delta_c2i, where delta_i2c is the fraction of problems wrong
    at turn 1 and right at turn K, and delta_c2i the reverse. With K > 2 the move between consecutive
    turns k-1 -> k is also given (delta_i2c_tk, delta_c2i_tk). se_* are standard errors."""
    c = [x.float() for x in correct]
    n = c[0].numel()
    out: dict[str, float] = {"n": n}
    for k, turn in enumerate(c, 1):
        acc = turn.mean().item()
        out[f"acc_t{k}"], out[f"se_acc_t{k}"] = acc, math.sqrt(acc * (1 - acc) / n)
    first, last = c[0], c[-1]
    diff = last - first
    out.update(delta=diff.mean().item(), se_delta=diff.std(unbiased=False).item() / math.sqrt(n))
    moves = [("", first, last)] + ([(f"_t{k + 1}", c[k - 1], c[k]) for k in range(1, len(c))] if len(c) > 2 else [])
    for suffix, before, after in moves:
        i2c, c2i = ((1 - before) * after).mean().item(), (before * (1 - after)).mean().item()
        out[f"delta_i2c{suffix}"], out[f"delta_c2i{suffix}"] = i2c, c2i
        out[f"se_delta_i2c{suffix}"], out[f"se_delta_c2i{suffix}"] = _binomial_se(i2c, n), _binomial_se(c2i, n)
    return out


def _binomial_se(rate: float, n: int) -> float:
    return math.sqrt(rate * (1 - rate) / max(n, 1))


class Laps:
    """Named wall-clock laps: `end(name)` records the seconds since the previous lap ended."""

    def __init__(self):
        self.last, self.seconds = time.perf_counter(), {}

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = now - self.last, now


def edit_distance_ratio(first: list[int], second: list[int]) -> float:
    """Levenshtein distance between two token sequences over the longer one's length: 0 when the
    second turn copies the first, 1 when nothing is kept."""
    if not first and not second:
        return 0.0
    return levenshtein(first, second) / max(len(first), len(second))


def levenshtein(first: Sequence[int], second: Sequence[int]) -> int:
    """Edit distance by Myers' bit-vector algorithm (Hyyrö's form for the global distance): one column of
    the DP table is two bit masks over `first` (+1 / -1 vertical steps), updated per token of `second` in a
    few integer operations, about 60x faster than the cell-by-cell table at 256 tokens."""
    if not first:
        return len(second)
    positions: dict[int, int] = {}  # token -> bit mask of where it occurs in `first`
    for i, token in enumerate(first):
        positions[token] = positions.get(token, 0) | (1 << i)
    full, top = (1 << len(first)) - 1, 1 << (len(first) - 1)
    plus, minus, distance = full, 0, len(first)  # column 0: D[i][0] = i, every vertical step +1
    for token in second:
        equal = positions.get(token, 0)
        vertical = equal | minus
        horizontal = (((equal & plus) + plus) ^ plus) | equal
        h_plus = minus | (~(horizontal | plus) & full)
        h_minus = plus & horizontal
        distance += 1 if h_plus & top else -1 if h_minus & top else 0  # the last row's horizontal step
        h_plus = ((h_plus << 1) | 1) & full  # row 0 rises by 1 per column: D[0][j] = j
        h_minus = (h_minus << 1) & full
        plus = h_minus | (~(vertical | h_plus) & full)
        minus = h_plus & vertical
    return distance


def turn_shape_metrics(lengths: Sequence[Tensor], edit_ratios: Sequence[Tensor]) -> dict[str, float]:
    """Mean response length (tokens) per turn and edit-distance ratio between consecutive turns (t1 -> t2 as
    edit_ratio, then edit_ratio_t3, ...), with standard errors. A ratio falling towards 0 over training is
    the collapse to "copy the first answer"."""
    named = [(f"len_t{k}", v) for k, v in enumerate(lengths, 1)]
    named += [("edit_ratio" if k == 2 else f"edit_ratio_t{k}", v) for k, v in enumerate(edit_ratios, 2)]
    out = {}
    for name, values in named:
        values = values.float()
        out[name] = values.mean().item()
        out[f"se_{name}"] = values.std(unbiased=False).item() / math.sqrt(max(values.numel(), 1))
    return out


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


def calibration_metrics(confidence: Sequence[Tensor], correct: Sequence[Tensor],
                        resamples: int = 200) -> dict[str, float]:
    """ECE per turn, with a bootstrap standard error (fixed seed, so before/after are comparable)."""
    out = {}
    gen = torch.Generator().manual_seed(0)
    for turn, conf, correct in ((f"t{k}", x, y) for k, (x, y) in enumerate(zip(confidence, correct), 1)):
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

    def rewind(self, step: int) -> None:
        """After a resume from `step` (or -1 for a fresh start in a used directory): drop what an
        interrupted run logged beyond it (TensorBoard events and sample lines), so the logs read as one
        uninterrupted run."""
        has_logs = self.samples_path.is_file() or any(Path(self.writer.log_dir).glob("events.*")) \
            if self.enabled else False
        if not has_logs:
            return
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.writer.log_dir
        self.writer.close()
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=step + 1)
        if self.samples_path.is_file():
            kept = [line for line in self.samples_path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.samples_path.write_text("".join(line + "\n" for line in kept))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()

    def samples(self, step: int, episodes, rewards: Sequence[Tensor], limit: int) -> None:
        """The first `limit` episodes of the step as JSON lines: prompt, gold answer, each turn and its reward."""
        if not self.enabled or limit <= 0:
            return
        with self.samples_path.open("a") as f:
            for row, ep in enumerate(episodes[:limit]):
                record = {"step": step, "prompt": ep.problem.prompt, "answer": ep.problem.answer}
                record.update({f"turn{k}": t.text for k, t in enumerate(ep.turns, 1)})
                record.update({f"reward_t{k}": r[row].item() for k, r in enumerate(rewards, 1)})
                f.write(json.dumps(record) + "\n")

    def episodes_text(self, step: int, episodes, rewards: Sequence[Tensor], limit: int) -> None:
        """A few episodes as a TensorBoard text summary (prompt, every turn's answer and reward)."""
        if self.writer is None or limit <= 0:
            return
        blocks = []
        for row, ep in enumerate(episodes[:limit]):
            turns = "  \n".join(f"**y{k}** (r{k} {r[row].item():.3f}) `{t.text}`"
                                for k, (t, r) in enumerate(zip(ep.turns, rewards), 1))
            blocks.append(f"**prompt** {ep.problem.prompt}  \n{turns}")
        self.writer.add_text("episodes", "\n\n---\n\n".join(blocks), step)
        self.writer.flush()

    def hparams(self, config: dict, final_metrics: dict[str, float]) -> None:
        """The run's config and final evaluation for TensorBoard's HParams dashboard, in the run's own
        event file so the runs of a sweep line up side by side."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparams/{k}": float(v) for k, v in final_metrics.items() if not k.startswith("se_")}
        experiment, start, end = hparams(hparam_values(config), metrics)
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def hparam_values(config: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """A nested config as flat `section.key` scalars (anything else as its string)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(hparam_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
