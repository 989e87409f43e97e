"""Compare finished runs' held-out results as one Markdown table, seeds grouped.

    python scripts/compare.py RUN_DIR [RUN_DIR ...] [--json PATH]

A run directory named NAME-sK is seed K of NAME. Each run's row shows the final evaluation with its
standard errors (binomial; paired for Δ; bootstrap for ECE); a NAME with several seeds gets a mean row,
± the standard error across seeds (std / sqrt(seeds)). The first row per seed is the base model (step 0).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

COLUMNS = [("Acc@t1", "acc_t1", "se_acc_t1"), ("Acc@t2", "acc_t2", "se_acc_t2"), ("Δ(t1,t2)", "delta", "se_delta"),
           ("Δ i→c", "delta_i2c", "se_delta_i2c"), ("Δ c→i", "delta_c2i", "se_delta_c2i"),
           ("ECE t1", "ece_t1", "se_ece_t1"), ("ECE t2", "ece_t2", "se_ece_t2")]


def name_and_seed(run: Path) -> tuple[str, str]:
    match = re.fullmatch(r"(.+)-s(\d+)", run.name)
    return (match.group(1), match.group(2)) if match else (run.name, "?")


def seed_order(seed: str) -> int:
    """Seeds sort as numbers ("10" after "2"); a run without one ("?") first."""
    return int(seed) if seed.isdigit() else -1


def across_seeds(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def cell(value: float, se: float | None) -> str:
    return f"{value:+.3f}" if se is None else f"{value:.3f} ± {se:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        sys.exit(f"not finished (no summary.json): {', '.join(missing)}")
    groups: dict[str, list[tuple[str, dict, dict]]] = {}
    for run in args.runs:
        summary = json.loads((run / "summary.json").read_text())
        name, seed = name_and_seed(run)
        groups.setdefault(name, []).append((seed, summary["eval"]["before"], summary["eval"]["after"]))
    header = "| run | seed | " + " | ".join(c[0] for c in COLUMNS) + " |"
    print(header + "\n|" + "---|" * (len(COLUMNS) + 2))
    bases = {}
    for runs in groups.values():
        for seed, before, _ in runs:
            bases.setdefault(seed, before)
    for seed, before in sorted(bases.items(), key=lambda kv: seed_order(kv[0])):
        print(f"| base model (step 0) | {seed} | " + " | ".join(cell(before[k], before.get(s)) for _, k, s in COLUMNS)
              + " |")
    out = {}
    for name, runs in groups.items():
        for seed, _, after in sorted(runs, key=lambda r: seed_order(r[0])):
            print(f"| {name} | {seed} | " + " | ".join(cell(after[k], after.get(s)) for _, k, s in COLUMNS) + " |")
        if len(runs) > 1:
            stats = {k: across_seeds([after[k] for _, _, after in runs]) for _, k, _ in COLUMNS}
            print(f"| **{name}, mean** | {len(runs)} seeds | "
                  + " | ".join(cell(*stats[k]) for _, k, _ in COLUMNS) + " |")
        out[name] = {seed: after for seed, _, after in runs}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"base": bases, "runs": out}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
