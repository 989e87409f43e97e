"""Held-out accuracy and policy entropy along a run, from its TensorBoard events, as one PNG.

    python scripts/plot_curves.py RUN_DIR [RUN_DIR ...] --out curves.png [--labels a,b]

Top: eval/acc_t1 and eval/acc_t2 (± one standard error) at each evaluation; bottom: train/entropy (nats
per sampled token) per step. Guard alarms recorded in a run's summary.json are marked: the first by a vertical line, each by a tick.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def alarm_steps(run_dir: Path) -> list[int]:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return []
    alarms = json.loads(summary.read_text())["train"]["guard_alarms"]
    return [int(a.split(":")[0].split()[1]) for a in alarms]


def plot(runs: list[Path], labels: list[str], out: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for run, label in zip(runs, labels):
        s = read_scalars(run)
        for tag, style in (("eval/acc_t2", "-o"), ("eval/acc_t1", "--s")):
            steps, values = zip(*s[tag])
            se = [v for _, v in s.get("eval/se_" + tag.split("/")[1], [])] or [0.0] * len(values)
            top.errorbar(steps, values, yerr=se, fmt=style, markersize=3, capsize=2,
                         label=f"{label} {tag.split('/')[1]}")
        steps, values = zip(*s["train/entropy"])
        bottom.plot(steps, values, label=label, linewidth=1)
        alarms = alarm_steps(run)
        if alarms:  # the first alarm as a line, every alarm as a tick under the entropy curve
            for ax in (top, bottom):
                ax.axvline(alarms[0], color="red", linestyle=":", linewidth=1)
            floor = min(values)
            bottom.plot(alarms, [floor * 0.9] * len(alarms), "|", color="red", markersize=6,
                        label=f"{label}: guard alarms ({len(alarms)}, first at step {alarms[0]})")
    top.set_ylabel("held-out accuracy")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_ylabel("entropy (nats / token)")
    bottom.set_xlabel("RL step")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", default=None, help="comma-separated, one per run (default: folder names)")
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels has {len(labels)} names for {len(args.runs)} runs")
    missing = [str(r) for r in args.runs if not (r / "tb").is_dir()]
    if missing:
        parser.error(f"no TensorBoard folder (RUN_DIR/tb) in: {', '.join(missing)}")
    plot(args.runs, labels, args.out)


if __name__ == "__main__":
    main()
