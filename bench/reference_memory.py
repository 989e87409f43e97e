"""Per-rank memory of the learner with 2 ranks at ZeRO-3: the policy engine plus the frozen reference model.

    python -m bench.reference_memory [--repo PATH] [--json PATH]

Builds a random Qwen2 of 33.6M parameters (hidden 512, 8 layers, vocabulary 8k; the built-in tiny
model is too small for ZeRO-3 to shard), then launches `deepspeed --num_gpus 2` of this file's child mode:
each rank builds a `Learner` (ZeRO-3, float32) and takes one update on 8 episodes. Reported per rank: the
reference's and the policy's resident parameter bytes (a ZeRO-3 shard and any persistent small
parameters) and the process's peak RSS. `--repo` runs the child against another checkout's engine (e.g. a
worktree of an older commit, to compare with the full reference copy it kept on every rank).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def resident_bytes(module) -> int:
    """Bytes of parameter storage this rank holds: a ZeRO-3 parameter keeps its shard in `ds_tensor`
    and its full data only while gathered or when persistent."""
    total = 0
    for p in module.parameters():
        total += p.data.numel() * p.element_size()
        if hasattr(p, "ds_tensor"):
            total += p.ds_tensor.numel() * p.ds_tensor.element_size()
    return total


def build_model(folder: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.builtin.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    config = Qwen2Config(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def engine_module(name: str):
    """The engine module `name` (engine.runtime.distributed, ...) of the checkout whose `engine` was imported;
    one from before the engine's subpackages has it flat (engine.distributed). Decided by the folder, not by
    trying the import: an installed copy of the engine would answer for the new name."""
    import importlib

    import engine

    subpackage = Path(engine.__path__[0]) / name.split(".")[1]
    return importlib.import_module(name if subpackage.is_dir() else "engine." + name.rsplit(".", 1)[1])


def shut_down() -> None:
    """Leave the process group together: a rank that exits while the other is still in a collective (or
    with the group's threads alive) can die with "terminate called without an active exception"."""
    import torch.distributed as dist

    distributed = engine_module("engine.runtime.distributed")
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    if hasattr(distributed, "remove_shm_buffer"):  # os._exit skips the atexit hook that would
        distributed.remove_shm_buffer(distributed.shm_buffer_path())
    os._exit(0)  # about 1 exit in 20 still aborted in C++ teardown after the results (cause not found)


def child(model_dir: str) -> None:
    import torch
    from transformers import AutoTokenizer

    from tests.test_episodes import _episode

    gather_objects, init_distributed = (getattr(engine_module("engine.runtime.distributed"), name)
                                        for name in ("gather_objects", "init_distributed"))
    TurnWeights = engine_module("engine.update.algorithms").TurnWeights
    collate = engine_module("engine.update.batch").collate
    Learner = engine_module("engine.update.learner").Learner

    rank, world = init_distributed()
    tok = AutoTokenizer.from_pretrained(model_dir)
    episodes = [_episode(tok, f"{i}+{i}=?", f"Final Answer: {2 * i}", f"Final Answer: {2 * i + 1}") for i in range(4)]
    learner = Learner(model_dir, zero_stage=3, lr=1e-4, grad_clip=1.0, episodes_per_rank=4, micro_batch_size=2)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    learner.update(collate(episodes, tok.pad_token_id), [adv, -adv], TurnWeights(pg=(1.0, 1.0), kl=(0.1, 0.1)), "k2")
    row = {"rank": rank, "reference_mib": resident_bytes(learner.reference) / 2**20,
           "policy_mib": resident_bytes(learner.engine.module) / 2**20,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rows = gather_objects(row)
    if rank == 0:
        print("RESULT " + json.dumps(rows), flush=True)
    shut_down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(ROOT), help="checkout whose engine/ the ranks import")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # the deepspeed launcher adds --local_rank
    sys.path.insert(0, args.repo)
    if args.child:
        return child(args.child)
    from engine.runtime.distributed import free_port

    commit = subprocess.run(["git", "-C", args.repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp))
        params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(tmp).parameters())
        proc = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), __file__,
                               "--repo", args.repo, "--child", tmp], capture_output=True, text=True, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"the 2-rank launch failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = json.loads(lines[0][len("RESULT "):])
    print(f"engine from {args.repo} (commit {commit}); model {params / 1e6:.1f}M parameters, "
          f"float32 = {params * 4 / 2**20:.0f} MiB; 2 ranks, ZeRO-3")
    print(f"{'rank':>4} {'reference MiB':>14} {'policy MiB':>11} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['rank']:>4} {r['reference_mib']:>14.1f} {r['policy_mib']:>11.1f} {r['peak_rss_mib']:>13.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"commit": commit, "parameters": params, "ranks": rows}, indent=2))


if __name__ == "__main__":
    main()
