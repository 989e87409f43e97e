"""The padding-free learner on real rollouts: padded against packed updates, same seed, same recipe.

    python -m bench.packing [--recipes default smollm2 gsm8k gsm8k-budget] [--steps N] [--json PATH]

The recipes run replace their rows in the JSON file; the others' rows stay.

For each recipe, `engine/train.py` runs its steps (RECIPES; --steps N for all) twice from the same seed, with
`learner.packing=false` (every micro-batch padded to the batch's longest episode, the learner before packing)
and `learner.packing=true`. The episodes are the recipe's own (vLLM samples them at the recipe's lengths:
nothing is forced). From each run's summary.json: the mean update time (`update_s`: reference forward, policy forward and backward, optimizer
step) over the steps after the first, the padding share of the learner's forwards (`perf/pad_frac`), and the
largest difference between the two runs' per-step rewards and accuracies and their evaluations (equal within
float32 reordering when packing changes nothing else). Evaluations are kept small (eval.problems) since they
are not what is timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RECIPES = {  # the recipe, its steps and overrides for a short run; the real model keeps its warm-up (cached) and LoRA
    "default": (20, ["configs/default.yaml", "eval.problems=64"]),
    "smollm2": (4, ["configs/smollm2.yaml", "eval.problems=16"]),
    # natural lengths: SmolLM2 on GSM8K, turns from a few tokens to the cap, turn 2 carrying turn 1 (configs/gsm8k.yaml,
    # cut to 8 episodes of up to 2 x 256 sampled tokens a step and micro-batches of 4 so that a step fits on 2 cores)
    "gsm8k": (3, ["configs/gsm8k.yaml", "eval.problems=4", "rollout.prompts_per_step=2", "rollout.max_tokens=256",
                  "rollout.max_model_len=1024", "train.micro_batch_size=4"]),
}
# the same runs, packed with a token budget instead of 4 rows a micro-batch; the padded run is gsm8k's
RECIPES["gsm8k-budget"] = (3, RECIPES["gsm8k"][1])
PACKED_EXTRA = {"gsm8k-budget": ["learner.max_tokens_per_micro_batch=2048"]}
PADDED_AS = {"gsm8k-budget": "gsm8k"}
COMPARED = ("reward_t1", "reward_t2", "acc_t1", "acc_t2")


def run(recipe: str, packing: bool, steps: int, out: Path) -> dict:
    run_dir = out / f"{recipe}-{'packed' if packing else 'padded'}"
    config, *overrides = RECIPES[recipe][1]
    overrides += PACKED_EXTRA.get(recipe, []) if packing else []
    cmd = [sys.executable, "engine/train.py", config, *overrides, f"train.steps={steps}", "train.save_every=0",
           "eval.every=0", f"learner.packing={str(packing).lower()}", f"train.output_dir={run_dir}",
           "train.resume=never"]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    history = summary["train"]["history"]
    timed = history[1:] or history  # the first update also warms up allocators and threads
    return {"recipe": recipe, "packing": packing, "steps": steps, "wall_s": time.perf_counter() - start,
            "update_s": statistics.mean(h["update_s"] for h in timed),
            "update_s_each": [h["update_s"] for h in history],
            "pad_frac": statistics.mean(h["pad_frac"] for h in history),
            "tokens": statistics.mean(h["tokens"] for h in history),
            "history": [{k: h[k] for k in COMPARED if k in h} for h in history],
            "eval_after": summary["eval"]["after"]}


def largest_gap(a: dict, b: dict) -> float:
    """The largest |difference| between two runs' per-step rewards and accuracies and their final evaluations."""
    gaps = [abs(x[k] - y[k]) for x, y in zip(a["history"], b["history"]) for k in x if k in y]
    gaps += [abs(a["eval_after"][k] - b["eval_after"][k]) for k in a["eval_after"]
             if isinstance(a["eval_after"][k], float) and k in b["eval_after"]]
    return max(gaps, default=0.0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the recipe's, RECIPES)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-packing")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "packing.json")
    args = parser.parse_args(argv)
    previous = json.loads(args.json.read_text())["rows"] if args.json.is_file() else []
    rows = [r for r in previous if r["recipe"] not in args.recipes]
    for recipe in args.recipes:
        steps = args.steps or RECIPES[recipe][0]
        same = [r["padded"] for r in rows if r["recipe"] == PADDED_AS.get(recipe) and r["padded"]["steps"] == steps]
        padded = same[0] if same else run(recipe, False, steps, args.out)
        packed = run(recipe, True, steps, args.out)
        rows.append({"recipe": recipe, "padded": padded, "packed": packed,
                     "update_ratio": packed["update_s"] / padded["update_s"], "largest_gap": largest_gap(padded, packed)})
    rows.sort(key=lambda r: list(RECIPES).index(r["recipe"]))
    print(f"\n{'recipe':<14}{'pad_frac padded':>17}{'pad_frac packed':>17}{'update_s padded':>17}"
          f"{'update_s packed':>17}{'packed/padded':>15}{'largest gap':>13}")
    for r in rows:
        print(f"{r['recipe']:<14}{r['padded']['pad_frac']:>17.3f}{r['packed']['pad_frac']:>17.3f}"
              f"{r['padded']['update_s']:>17.3f}{r['packed']['update_s']:>17.3f}{r['update_ratio']:>15.2f}"
              f"{r['largest_gap']:>13.2g}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": f"{platform.machine()} {platform.processor()}".strip(),
                                     "cpus": __import__("os").cpu_count(), "rows": rows},
                                    indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
