"""Learner memory of LoRA against full fine-tuning: what the adapters save (no reference copy, no optimizer
state or gradients for the base weights).

    python -m bench.lora_memory [--json PATH] [--rank R] [--zero-stage S] [--model MODEL_PATH]

The model and batch are bench/zero3_memory.py's (a random Qwen2 of 65M parameters, 32k vocabulary, float32;
16 episodes of 64 prompt + 128 sampled tokens, one micro-batch), on one rank; --model takes any model.path
(builtin:smollm2-135m-instruct: the real 135M Llama) with the same batch shape over its vocabulary. Each configuration runs in its
own process: it records its resident memory (RSS) after imports, then polls it while it builds the Learner
and takes two updates (the second is the steady state: AdamW's moments exist). Reported: the peak above that
baseline, and the bytes held between updates in parameters (policy + reference) and optimizer state (the
gradients, one per trainable parameter, live only inside the update: they are part of the peak).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def child(model_dir: str, rank: int, zero_stage: int) -> None:
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig

    from bench.profile_update import random_batch
    from bench.zero3_memory import EPISODES, PROMPT, RESPONSE, PeakRSS
    from engine.runtime.distributed import init_distributed
    from engine.update.algorithms import TurnWeights
    from engine.update.learner import Learner

    init_distributed()
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    batch = random_batch(vocab, episodes=EPISODES, prompt=PROMPT, response=RESPONSE)
    advantages = [torch.randn(EPISODES, generator=torch.Generator().manual_seed(1))]
    lora = OmegaConf.create({"r": rank, "alpha": 2.0 * max(rank, 1), "dropout": 0.0, "target_modules": ["all-linear"]})
    rss = PeakRSS()
    learner = Learner(model_dir, zero_stage=zero_stage, lr=1e-4, grad_clip=1.0, episodes_per_rank=EPISODES,
                      micro_batch_size=EPISODES, lora=lora)
    weights = TurnWeights(pg=(1.0,), kl=(0.05,))
    for _ in range(2):
        learner.update(batch, advantages, weights, "k2")
    peak = rss.stop()
    module = learner.engine.module
    reference = [] if rank else list(learner.reference.parameters())
    state = [v for s in learner.engine.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    row = {"lora_rank": rank, "update_peak_mib": (peak - rss.baseline) / 2**20,
           "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
           "params_mib": tensor_bytes([*module.parameters(), *reference]) / 2**20,
           "optimizer_state_mib": tensor_bytes(state) / 2**20}
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--rank", type=int, default=16, help="model.lora.r of the LoRA row (target: all-linear)")
    parser.add_argument("--zero-stage", type=int, default=0, help="deepspeed.zero_stage (the engine's default: 0)")
    parser.add_argument("--out", default="runs/bench-zero3")
    parser.add_argument("--model", default=None, help="a model.path (e.g. builtin:smollm2-135m-instruct) instead "
                                                       "of the random 65M Qwen2")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.child_rank, args.zero_stage)
    from bench.logprobs import machine_name
    from bench.zero3_memory import build_model
    from engine.models.paths import resolve_model_path

    folder = Path(resolve_model_path(args.model, is_builder=True)) if args.model else ROOT / args.out / "model"
    if not (folder / "config.json").is_file():
        build_model(folder)
    # As in bench/zero3_memory.py: tensors of 1 MiB or more are unmapped when freed, so RSS follows live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    rows = []
    for rank in (0, args.rank):
        proc = subprocess.run([sys.executable, "-m", "bench.lora_memory", "--child", str(folder), "--child-rank",
                               str(rank), "--zero-stage", str(args.zero_stage)],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"the r={rank} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append(json.loads(lines[0][len("RESULT "):]))
        print(f"r={rank}: peak above baseline {rows[-1]['update_peak_mib']:.0f} MiB", flush=True)
    full = rows[0]["update_peak_mib"]
    print("\n| training | trainable parameters | params MiB (policy + reference) | optimizer state MiB "
          "| update peak above baseline MiB | vs full |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "full fine-tuning" if r["lora_rank"] == 0 else f"LoRA r={r['lora_rank']}, all-linear"
        print(f"| {name} | {r['trainable_params']:,} | {r['params_mib']:.0f} | "
              f"{r['optimizer_state_mib']:.0f} | {r['update_peak_mib']:.0f} | {r['update_peak_mib'] / full:.2f}x |")
    path = Path(args.json or f"bench/results/lora-memory-{machine_name('cpu')}.json")
    path = path if path.is_absolute() else ROOT / path
    path.write_text(json.dumps({"machine": machine_name("cpu"), "model": args.model or "random 65M Qwen2",
                                "zero_stage": args.zero_stage, "rows": rows},
                               indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
