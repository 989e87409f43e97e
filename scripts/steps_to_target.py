"""Steps a method needs to reach a reference recipe's held-out Acc@t2 at a given step.

    python scripts/steps_to_target.py --reference RUN [RUN ...] --at 80 --runs RUN [RUN ...] [--json OUT]

The target is the reference runs' mean eval/acc_t2 at step --at (their TensorBoard logs; every run must have
evaluated at that step). For each run (reference ones included) it prints the first evaluated step whose
Acc@t2 reaches the target, or "not reached" within the run, and the mean over the seeds of each group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.plot_curves import read_scalars  # noqa: E402


def acc_t2_curve(run: Path) -> dict[int, float]:
    """step -> held-out Acc@t2 of every evaluation of the run (step 0: the base model)."""
    return dict(read_scalars(run).get("eval/acc_t2", []))


def first_step_reaching(curve: dict[int, float], target: float) -> int | None:
    return next((step for step in sorted(curve) if curve[step] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, nargs="+", required=True)
    parser.add_argument("--at", type=int, default=80)
    parser.add_argument("--runs", type=Path, nargs="+", required=True)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    curves = {run: acc_t2_curve(run) for run in [*args.reference, *args.runs]}
    empty = [str(run) for run, curve in curves.items() if not curve]
    if empty:
        sys.exit(f"no eval/acc_t2 in the TensorBoard logs of {', '.join(empty)}: is it a training run directory "
                 f"(with tb/), trained with eval.every > 0?")
    missing = [str(run) for run in args.reference if args.at not in curves[run]]
    if missing:
        sys.exit(f"no eval/acc_t2 at step {args.at} in {', '.join(missing)}: train them with eval.every dividing {args.at}")
    target = sum(curves[run][args.at] for run in args.reference) / len(args.reference)
    print(f"target: Acc@t2 {target:.3f} (mean of {len(args.reference)} reference runs at step {args.at})\n")
    print("| run | evaluated every | first step with Acc@t2 >= target | Acc@t2 there | final Acc@t2 |")
    print("|---|---|---|---|---|")
    rows = {}
    for run, curve in curves.items():
        step = first_step_reaching(curve, target)
        steps = sorted(curve)
        every = steps[1] - steps[0] if len(steps) > 1 else None
        rows[str(run)] = {"first_step": step, "curve": curve}
        reached = f"{step} | {curve[step]:.3f}" if step is not None else "not reached | –"
        print(f"| {run} | {every} | {reached} | {curve[steps[-1]]:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"target": target, "at": args.at, "runs": rows}, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
