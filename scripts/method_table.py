"""Train and compare the self-improvement methods on the built-in task, scored with 3-turn chains.

    python scripts/method_table.py [--out runs/methods] [--seeds 0 1] [--json bench/results/methods.json]

For each method and seed it trains the recipe (skipped when the run directory already has summary.json),
timing the whole command, then evaluates the final policy on the held-out problems with
`python -m engine.evaluate RECIPE model.path=<final checkpoint>/model rollout.turns=3` (Acc@t1..t3: a
model trained with 2 turns refines twice at inference). The base model is evaluated the same way. Prints
one Markdown table (per seed ± one standard error; a mean row ± the standard error across seeds) and
writes the numbers as JSON. Δ(t1,t2) = Acc@t2 − Acc@t1 is the two-turn gain every method trained for.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.runtime.checkpoint import latest_checkpoint  # noqa: E402
from scripts.compare import across_seeds  # noqa: E402  (mean, SE across seeds)

METHODS = [  # (name, recipe): the SCoRe pair, the preference route, then token-level and step-level rewards
    ("SCoRe, gold reward", "configs/gold.yaml"),
    ("SCoRe, label-free (default)", "configs/default.yaml"),
    ("RLSF-DPO", "configs/rlsf_dpo.yaml"),
    ("EVOLVE", "configs/evolve.yaml"),
    ("SCoRe, seq2seq RM token rewards", "configs/seq2seq_rm.yaml"),
    ("PSRLM (step DPO, self-judged)", "configs/psrlm.yaml"),
]
# Recipes whose reward model is trained first, into <run dir>/rm (its time counts in the method's wall time)
NEEDS_REWARD_MODEL = ("configs/seq2seq_rm.yaml",)
COLUMNS = [("Acc@t1", "acc_t1"), ("Acc@t2", "acc_t2"), ("Acc@t3", "acc_t3"), ("Δ(t1,t2)", "delta_t2"),
           ("Δ(t1,t3)", "delta"), ("ECE t1", "ece_t1"), ("ECE t2", "ece_t2"), ("ECE t3", "ece_t3")]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def run(command: list[str], log: Path) -> float:
    """Runs a command from the repository root, its output to `log`; returns its wall seconds."""
    print("$ " + " ".join(command), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("w") as out:
        code = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"exit {code}: {' '.join(command)} (see {log})")
    return time.time() - started


def evaluate(recipe: str, model: str, seed: int, json_path: Path) -> dict:
    if not json_path.is_file():
        run([sys.executable, "-m", "engine.evaluate", recipe, f"model.path={model}", "rollout.turns=3",
             f"train.seed={seed}", "--json", str(json_path)], json_path.with_suffix(".log"))
    metrics = json.loads(json_path.read_text())
    return {**metrics, **two_turn_delta(metrics)}


def two_turn_delta(m: dict) -> dict:
    """Acc@t2 - Acc@t1 of a 3-turn chain, from its turn-1 -> turn-2 flips, with the paired standard error
    (per problem the change is +1 with probability i2c, -1 with c2i, else 0)."""
    i2c, c2i = m["delta_i2c_t2"], m["delta_c2i_t2"]
    delta = i2c - c2i
    return {"delta_t2": delta, "se_delta_t2": math.sqrt(max(i2c + c2i - delta ** 2, 0.0) / m["n"])}


def train(recipe: str, run_dir: Path, seed: int) -> float:
    wall = run_dir / "wall.json"
    if not (run_dir / "summary.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        extra, seconds = [], 0.0
        if recipe in NEEDS_REWARD_MODEL:
            seconds += run([sys.executable, "-m", "engine.train_rm", recipe, f"train.seed={seed}",
                            f"rm.output_dir={run_dir / 'rm'}"], run_dir.parent / f"{run_dir.name}.rm.log")
            extra = [f"reward.model={run_dir / 'rm' / 'model'}"]
        seconds += run(["deepspeed", "engine/train.py", recipe, f"train.seed={seed}", f"train.output_dir={run_dir}",
                        *extra], run_dir.parent / f"{run_dir.name}.log")
        wall.write_text(json.dumps({"seconds": seconds}))
    return json.loads(wall.read_text())["seconds"] if wall.is_file() else float("nan")


def cell(value: float, se: float) -> str:
    return f"{value:.3f} ± {se:.3f}" if math.isfinite(se) else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/methods"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", nargs="+", default=None, help="train only the methods whose recipe is listed "
                        "(the table still shows every method already trained)")
    args = parser.parse_args()
    out = ROOT / args.out if not args.out.is_absolute() else args.out
    results: dict[str, dict[int, dict]] = {"base model": {}}
    for seed in args.seeds:
        results["base model"][seed] = {**evaluate("configs/default.yaml", "builtin:tiny-arith", seed,
                                                  out / f"base-s{seed}.eval3.json"), "wall_seconds": None}
    if not args.only or "configs/psrlm.yaml" in args.only:  # PSRLM starts from its own base model, M0
        results["PSRLM's M0 (base + judge data)"] = {
            seed: {**evaluate("configs/psrlm.yaml", "builtin:tiny-arith-judge", seed, out / f"m0-s{seed}.eval3.json"),
                   "wall_seconds": None} for seed in args.seeds}
    for name, recipe in METHODS:
        results[name] = {}
        for seed in args.seeds:
            run_dir = out / f"{slug(name)}-s{seed}"
            if args.only and recipe not in args.only and not (run_dir / "summary.json").is_file():
                continue
            seconds = train(recipe, run_dir, seed)
            model = latest_checkpoint(run_dir) / "model"
            results[name][seed] = {**evaluate(recipe, str(model), seed, run_dir / "eval3.json"),
                                   "wall_seconds": seconds}
    print("\n| method | seed | " + " | ".join(c for c, _ in COLUMNS) + " | wall time |")
    print("|" + "---|" * (len(COLUMNS) + 3))
    for name, seeds in results.items():
        for seed, m in seeds.items():
            wall = "–" if m["wall_seconds"] is None else f"{m['wall_seconds'] / 60:.1f} min"
            print(f"| {name} | {seed} | " + " | ".join(cell(m[k], m.get("se_" + k, float("nan"))) for _, k in COLUMNS)
                  + f" | {wall} |")
        if len(seeds) > 1:
            stats = [across_seeds([m[k] for m in seeds.values()]) for _, k in COLUMNS]
            print(f"| **{name}, mean** | {len(seeds)} seeds | " + " | ".join(cell(*s) for s in stats) + " | |")
    if args.json:
        path = ROOT / args.json if not args.json.is_absolute() else args.json
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
