"""Per-rank memory of the learner's update under ZeRO-3: 1 rank against 2, the reference sharded or not.

    python -m bench.zero3_memory [--json PATH] [--live-parameters N] [--reduce-bucket N] [--micro-batch N] [--model M]

The model is bench/peers.py's (a random Qwen2 of 65M parameters, 32k vocabulary, float32), or --model's. The global batch
is the same in every configuration: 16 episodes of 64 prompt + 128 sampled tokens (one rank takes all 16, two
ranks 8 each), in micro-batches of at most --micro-batch episodes (default 64, the engine's
train.micro_batch_size: each rank then takes its share in one micro-batch; 8 compares equal micro-batches).
Each configuration is its own `deepspeed --num_gpus N` launch; each rank records its resident memory (RSS)
after imports, then polls it while it builds the Learner (ZeRO-3, policy engine + AdamW + the reference) and
takes two updates (the second is the steady state: AdamW's moments exist and ZeRO-3 has its parameter trace).
Reported per rank: the peak above that baseline (what the learner and its updates cost), the same after the
first update, the absolute peak, and the parameter bytes the rank holds for the policy and the reference (a
ZeRO-3 shard plus any persistent small parameters). --live-parameters and --reduce-bucket set the
deepspeed.max_live_parameters / max_reuse_distance / prefetch_bucket_size and reduce_bucket_size keys
(default: DeepSpeed's); a run with other values writes a "-tuned" JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EPISODES, PROMPT, RESPONSE = 16, 64, 128
CONFIGS = [(1, True), (2, True), (1, False), (2, False)]  # (ranks, reference sharded)


class PeakRSS:
    """This process's resident memory, polled every 20 ms on a thread until stopped."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def build_model(folder: Path) -> None:
    """bench/peers.py's shape with the engine's byte tokenizer (the update never decodes)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bench.peers import MODEL
    from engine.builtin.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    Qwen2ForCausalLM(Qwen2Config(**MODEL, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)) \
        .save_pretrained(folder)
    tok.save_pretrained(folder)


def child(model_dir: str, shard_reference: bool, micro_batch: int, live: int, bucket: int) -> None:
    import torch
    from transformers import AutoConfig

    from bench.profile_update import random_batch
    from bench.reference_memory import resident_bytes, shut_down
    from engine.runtime.distributed import gather_objects, init_distributed
    from engine.update.algorithms import TurnWeights
    from engine.update.learner import Learner, zero3_settings

    rank, world = init_distributed()
    per_rank = EPISODES // world
    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    batch = random_batch(vocab, episodes=EPISODES, prompt=PROMPT, response=RESPONSE)
    batch = batch.slice(rank * per_rank, (rank + 1) * per_rank)
    advantages = [torch.randn(EPISODES, generator=torch.Generator().manual_seed(1))[rank * per_rank:][:per_rank]]
    rss = PeakRSS()
    learner = Learner(model_dir, zero_stage=3, lr=1e-4, grad_clip=1.0, episodes_per_rank=per_rank,
                      micro_batch_size=micro_batch, shard_reference=shard_reference,
                      zero3=zero3_settings(SimpleNamespace(max_live_parameters=live, max_reuse_distance=live,
                                                           prefetch_bucket_size=min(live, 50_000_000),
                                                           reduce_bucket_size=bucket)))
    built = rss.peak
    weights = TurnWeights(pg=(1.0,), kl=(0.05,))
    learner.update(batch, advantages, weights, "k2")
    first = rss.peak
    # The second update is the steady state: ZeRO-3 records its parameter trace in the first and only then
    # prefetches and keeps gathered parameters (max_live_parameters, max_reuse_distance).
    learner.update(batch, advantages, weights, "k2")
    peak = rss.stop()
    row = {"rank": rank, "baseline_mib": rss.baseline / 2**20, "build_peak_mib": (built - rss.baseline) / 2**20,
           "first_update_peak_mib": (first - rss.baseline) / 2**20,
           "update_peak_mib": (peak - rss.baseline) / 2**20, "peak_rss_mib": peak / 2**20,
           "policy_params_mib": resident_bytes(learner.engine.module) / 2**20,
           "reference_params_mib": resident_bytes(learner.reference) / 2**20}
    rows = gather_objects(row)
    if rank == 0:
        print("RESULT " + json.dumps(rows), flush=True)
    shut_down()


def launch(model_dir: str, ranks: int, shard_reference: bool, micro_batch: int, live: int,
           bucket: int) -> list[dict]:
    from engine.runtime.distributed import free_port

    # Tensors of 1 MiB or more are mmapped and unmapped when freed (glibc's threshold otherwise rises with
    # the largest freed block, keeping freed memory resident): the RSS then follows live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    proc = subprocess.run(["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()), __file__,
                           "--child", model_dir, "--shard-reference", str(int(shard_reference)),
                           "--micro-batch", str(micro_batch), "--live-parameters", str(live),
                           "--reduce-bucket", str(bucket)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"the {ranks}-rank launch failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--micro-batch", type=int, default=64, help="train.micro_batch_size (episodes)")
    parser.add_argument("--live-parameters", type=int, default=1_000_000_000,
                        help="deepspeed.max_live_parameters and max_reuse_distance (prefetch: at most 5e7)")
    parser.add_argument("--reduce-bucket", type=int, default=500_000_000, help="deepspeed.reduce_bucket_size")
    parser.add_argument("--out", default="runs/bench-zero3")
    parser.add_argument("--model", default=None, help="a model.path (e.g. builtin:smollm2-135m-instruct) instead "
                                                       "of the random 65M Qwen2")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shard-reference", type=int, default=1, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # the deepspeed launcher adds --local_rank
    if args.child:
        return child(args.child, bool(args.shard_reference), args.micro_batch, args.live_parameters,
                     args.reduce_bucket)
    from bench.logprobs import machine_name
    from engine.models.paths import resolve_model_path

    folder = Path(resolve_model_path(args.model, is_builder=True)) if args.model else ROOT / args.out / "model"
    if not (folder / "config.json").is_file():
        build_model(folder)
    results = []
    for ranks, sharded in CONFIGS:
        rows = launch(str(folder), ranks, sharded, args.micro_batch, args.live_parameters,
                     args.reduce_bucket)
        worst = max(rows, key=lambda r: r["update_peak_mib"])
        results.append({"ranks": ranks, "reference_sharded": sharded, "per_rank": rows,
                        "update_peak_mib": worst["update_peak_mib"]})
        print(f"{ranks} rank(s), reference {'sharded' if sharded else 'full copy'}: per-rank peak above baseline "
              f"{worst['update_peak_mib']:.0f} MiB (policy params {worst['policy_params_mib']:.0f} MiB, "
              f"reference {worst['reference_params_mib']:.0f} MiB)", flush=True)
    single = {r["reference_sharded"]: r["update_peak_mib"] for r in results if r["ranks"] == 1}
    print("\n| ranks | reference | per-rank peak above baseline MiB | policy params MiB | reference params MiB "
          "| vs 1 rank (sharded) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        worst = max(r["per_rank"], key=lambda x: x["update_peak_mib"])
        print(f"| {r['ranks']} | {'sharded' if r['reference_sharded'] else 'full copy'} | {r['update_peak_mib']:.0f} | "
              f"{worst['policy_params_mib']:.0f} | {worst['reference_params_mib']:.0f} | "
              f"{r['update_peak_mib'] / single[True]:.2f}x |")
    defaults = args.live_parameters == 1_000_000_000 and args.reduce_bucket == 500_000_000
    suffix = ("" if args.micro_batch == 64 else f"-microbatch{args.micro_batch}") + ("" if defaults else "-tuned")
    path = Path(args.json or f"bench/results/zero3-memory-{machine_name('cpu')}{suffix}.json")
    path = path if path.is_absolute() else ROOT / path
    path.write_text(json.dumps({"machine": machine_name("cpu"), "model": args.model or "random 65M Qwen2",
                                "episodes": EPISODES, "micro_batch": args.micro_batch,
                                "max_live_parameters": args.live_parameters, "max_reuse_distance": args.live_parameters,
                                "prefetch_bucket_size": min(args.live_parameters, 50_000_000),
                                "reduce_bucket_size": args.reduce_bucket,
                                "prompt_tokens": PROMPT, "response_tokens": RESPONSE, "configs": results},
                               indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
