"""Print a run's before/after evaluation as a Markdown table: python scripts/report.py RUN_DIR"""

import json
import sys
from pathlib import Path

ROWS = [("Acc@t1", "acc_t1", "se_acc_t1"), ("Acc@t2", "acc_t2", "se_acc_t2"), ("Δ(t1,t2)", "delta", "se_delta"),
        ("Δ i→c", "delta_i2c", None), ("Δ c→i", "delta_c2i", None), ("ECE t1", "ece_t1", "se_ece_t1"),
        ("ECE t2", "ece_t2", "se_ece_t2")]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/report.py RUN_DIR")
    path = Path(sys.argv[1]) / "summary.json"
    if not path.is_file():
        sys.exit(f"{path} not found: has the run finished?")
    summary = json.loads(path.read_text())
    before, after = summary["eval"]["before"], summary["eval"]["after"]
    print(f"| metric (n={before['n']} held-out problems) | before | after |")
    print("|---|---|---|")
    for label, key, se in ROWS:
        if key not in before:  # runs from before calibration was measured
            continue
        cell = (lambda m: f"{m[key]:.3f} ± {m[se]:.3f}" if se else f"{m[key]:.3f}")
        print(f"| {label} | {cell(before)} | {cell(after)} |")
    train = summary["train"]
    print(f"\n{train['steps']} steps, {train['mean_step_seconds']:.2f} s/step, run {train['wall_seconds'] / 60:.1f} min, "
          f"max logprob mismatch {max(train['logprob_mismatch_per_step'] or [0]):.1e}")


if __name__ == "__main__":
    main()
