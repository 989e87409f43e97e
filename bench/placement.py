"""Benchmark of rollout placement: steps/s and episodes/s of the same training batch with the rollout
colocated, on a dedicated worker, and on a dedicated worker running one batch ahead (asynchronous).

    python -m bench.placement [--steps N] [--json PATH]

Each layout is a real launch (`deepspeed --num_gpus R engine/train.py ...`) of the default tiny model:
colocated = every rank with vLLM and a learner shard (1 or 2 ranks); dedicated = 1 learner + 1 vLLM worker.
The first step (engine warm-up) is left out of every mean. Per step: rollout = sampling the batch (rank 0's
share when colocated; the worker's time when dedicated), update = the learner's scoring + policy-gradient
step, sync = the weight push, idle = the learner waiting for the worker's episodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.logprobs import machine_name
from engine.runtime.distributed import free_port

# layout -> (ranks, overrides)
LAYOUTS = {
    "colocated, 1 rank": (1, []),
    "colocated": (2, []),
    "dedicated": (2, ["rollout.placement=dedicated", "rollout.workers=1"]),
    "dedicated+async": (2, ["rollout.placement=dedicated", "rollout.workers=1", "rollout.async=true",
                            "rollout.max_staleness=1"]),
}
BATCH = ["rollout.prompts_per_step=16", "rollout.n=4"]  # 64 episodes a step, as the default recipe


def run_layout(name: str, steps: int, workdir: Path) -> dict:
    ranks, overrides = LAYOUTS[name]
    run_dir = workdir / name.replace("+", "-").replace(", ", "-").replace(" ", "-")
    command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), "engine/train.py",
               "configs/default.yaml", f"train.steps={steps}", "train.save_every=0", "eval.every=0",
               "eval.problems=16", f"train.output_dir={run_dir}", *BATCH, *overrides]
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    history = json.loads((run_dir / "summary.json").read_text())["train"]["history"][1:]
    mean = {key: statistics.mean(s[key] for s in history)
            for key in ("step_seconds", "rollout_s", "score_s", "update_s", "sync_s", "idle_s")}
    episodes = 16 * 4
    return {"layout": name, "ranks": ranks, "steps_timed": len(history), "steps_per_s": 1 / mean["step_seconds"],
            "episodes_per_s": episodes / mean["step_seconds"], "step_s": mean["step_seconds"],
            "rollout_s": mean["rollout_s"], "update_s": mean["score_s"] + mean["update_s"],
            "sync_s": mean["sync_s"], "idle_s": mean["idle_s"], "launch_wall_s": time.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", default=f"bench/results/placement-{machine_name('cpu')}.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in LAYOUTS:
            rows.append(run_layout(name, args.steps, Path(tmp)))
            print(f"[bench] {name}: {rows[-1]['step_s']:.2f} s/step", flush=True)
    print("| layout | steps/s | episodes/s | step s | rollout s | update s | sync s | idle s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['steps_per_s']:.3f} | {r['episodes_per_s']:.1f} | {r['step_s']:.2f} | "
              f"{r['rollout_s']:.2f} | {r['update_s']:.2f} | {r['sync_s']:.3f} | {r['idle_s']:.2f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine_name("cpu"), "batch": BATCH, "rows": rows},
                                          indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
