"""Where the learner's update spends its time, on bench/peers.py's model and batch (torch profiler).

    python -m bench.profile_update [--steps N] [--top K] [--trace PATH] [--json PATH]

One process, a world of one at ZeRO-0 as in bench/peers.py's engine rows: 64 episodes of 45 prompt + 128
sampled tokens, random advantages, one Learner.update per step (the first is a warm-up). Prints the wall
time of each update, then the profiler's operators by self CPU time and the update's own phases
(reference forward, policy forward with the fused head's loss, backward, optimizer step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT, RESPONSE, EPISODES = 45, 128, 64


def random_batch(vocab: int, seed: int = 0, episodes: int = EPISODES, prompt: int = PROMPT,
                 response: int = RESPONSE):
    """A batch of sampled-looking single-turn episodes: every response exactly `response` tokens."""
    import torch

    from engine.update.batch import TrainBatch

    g = torch.Generator().manual_seed(seed)
    width = prompt + response
    turn = torch.zeros(episodes, 1, width)
    turn[:, 0, prompt:] = 1.0
    return TrainBatch(input_ids=torch.randint(0, vocab, (episodes, width), generator=g),
                      attention_mask=torch.ones(episodes, width, dtype=torch.long), turn_masks=turn,
                      rollout_logprobs=-10.4 * turn[:, 0])


def update_flops(shape: dict) -> float:
    """Arithmetic of one update, counted: the policy's forward (its linear layers and attention over every
    token, the LM head over the sampled ones), its backward (twice the forward) and the reference's forward."""
    h, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * shape["intermediate_size"])  # q, o, k, v, MLP
    tokens, sampled, width = EPISODES * (PROMPT + RESPONSE), EPISODES * RESPONSE, PROMPT + RESPONSE
    attention = layers * 2 * 2 * h * (width + 1) / 2  # QK^T and AV per token, causal: half the width
    forward = tokens * (2 * linear + attention) + sampled * 2 * h * vocab
    return 3 * forward + forward


def matmul_rate(shape: dict, repeats: int = 5) -> float:
    """The machine's float32 matmul rate (FLOP/s) at the update's largest shapes: the MLP's and the head's."""
    import torch

    h, tokens = shape["hidden_size"], EPISODES * (PROMPT + RESPONSE)
    pairs = [(torch.randn(tokens, h), torch.randn(h, shape["intermediate_size"])),
             (torch.randn(EPISODES * RESPONSE, h), torch.randn(h, 4096))]
    best = []
    for a, b in pairs:
        torch.mm(a, b)
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        best.append(2 * a.shape[0] * a.shape[1] * b.shape[1] * repeats / (time.perf_counter() - started))
    return max(best)


def phase_table(profile) -> dict[str, float]:
    """Seconds per update in the record_function ranges the learner's code runs under."""
    seconds: dict[str, float] = {}
    for event in profile.key_averages():
        if event.key.startswith("update/"):
            seconds[event.key] = event.cpu_time_total / 1e6
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="profiled updates after one warm-up")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--trace", default=None, help="also write a Chrome trace here")
    parser.add_argument("--json", default=None)
    parser.add_argument("--out", default="runs/bench-peers")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.peers import MODEL, build_model
    from engine.runtime.distributed import init_distributed
    from engine.update.algorithms import TurnWeights
    from engine.update.learner import Learner

    folder = build_model(ROOT / args.out / "model", MODEL)
    init_distributed()
    learner = Learner(str(folder), zero_stage=0, lr=1e-4, grad_clip=1.0, episodes_per_rank=EPISODES,
                      micro_batch_size=EPISODES)
    batch = random_batch(MODEL["vocab_size"])
    advantages = [torch.randn(EPISODES, generator=torch.Generator().manual_seed(1))]
    weights = TurnWeights(pg=(1.0,), kl=(0.05,))

    def update():
        started = time.perf_counter()
        learner.update(batch, advantages, weights, "k2")
        return time.perf_counter() - started

    flops, rate = update_flops(MODEL), matmul_rate(MODEL)
    print(f"one update: {flops / 1e12:.2f} TFLOP; float32 matmul here: {rate / 1e9:.0f} GFLOP/s; "
          f"the arithmetic alone: {flops / rate:.1f} s", flush=True)
    print(f"warm-up update: {update():.1f} s", flush=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        walls = [update() for _ in range(args.steps)]
    print("profiled updates: " + ", ".join(f"{w:.1f} s" for w in walls))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    phases = {k: v / args.steps for k, v in phase_table(prof).items()}
    for key, value in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"{key:<32} {value:6.2f} s per update")
    if args.trace:
        prof.export_chrome_trace(args.trace)
    if args.json:
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.top]
        Path(args.json).write_text(json.dumps({
            "update_s": walls, "phases_s": phases, "update_tflop": flops / 1e12, "matmul_gflops": rate / 1e9,
            "arithmetic_floor_s": flops / rate,
            "top_ops_self_s": {e.key: e.self_cpu_time_total / 1e6 / args.steps for e in ops}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
