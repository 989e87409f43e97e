"""Trains the sequence-to-sequence reward model (arXiv 2409.00162): a causal LM that rewrites a response
into the preferred one, learnt by sequence MLE; reward.kind=seq2seq turns its edits into token rewards.

    python -m engine.train_rm [configs/X.yaml] key=value ...      (or: deepspeed engine/train_rm.py ...)

1. pairs: rm.pairs=builder samples them now with the base policy (vLLM, pairs.kind, ranked by rm.reward),
   or they are read from a JSONL file; whole prompts are held out (about rm.heldout_pairs pairs); all are
   saved to <rm.output_dir>/pairs.jsonl, which a resumed run reads instead of sampling again;
2. examples: each pair gives (x, rejected) -> chosen and (x, chosen) -> chosen in the shared rewrite format
   (rewards/rewrite_format.py); examples longer than the context are dropped and counted;
3. rm.epochs seeded passes of rm.batch_size examples per step: the token-mean NLL of the targets on the
   learner's DeepSpeed engine (model.path's weights, any ZeRO stage) through the fused log-prob head;
4. the held-out rewrite check before and after training (and every rm.eval_every steps), then the model
   folder <rm.output_dir>/model and summary.json, whose presence marks the run finished.
Checkpoints every rm.save_every steps and on SIGINT/SIGTERM; the same command resumes (train.resume=auto).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

if __package__ in (None, ""):  # `deepspeed engine/train_rm.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from engine.base.errors import UserError, run_cli
from engine.config.loading import load_config, main_args, save_config, with_values
from engine.loop.inputs import require_chat_template
from engine.loop.metrics import RunLogger
from engine.models.paths import check_model_source, load_tokenizer_and_config, prepare_model_everywhere
from engine.ops.logprobs import impl_for_this_machine
from engine.reward_model.builder import build_pairs, builder_prompts
from engine.reward_model.examples import RewriteExample, collate_examples, epoch_batches, rewrite_examples
from engine.reward_model.heldout import heldout_check
from engine.reward_model.pairs import RMPair, heldout_split, read_pairs, write_pairs
from engine.reward_model.update import rewrite_update
from engine.runtime.checkpoint import latest_checkpoint, load_checkpoint, run_identity, save_checkpoint, write_summary
from engine.runtime.console import to_console
from engine.runtime.distributed import barrier, init_distributed
from engine.runtime.placement import launch_rank_and_world
from engine.runtime.stop_signals import StopSignals
from engine.tasks.data import Problem, load_problems, require_answers
from engine.update.learner import Learner, zero3_settings
from rewards import REWARDS
from rewards.plugins import load_plugins
from rewards.registry import reward_needs
from rewards.rewrite_format import REWRITE_FILE, rewrite_context_ids, rewrite_target_ids
from rollout.service import share

STEP_SCALARS = ("loss", "lr", "grad_norm", "tokens")


@dataclass
class RMRun:
    cfg: DictConfig  # train.output_dir is rm.output_dir: engine/runtime/checkpoint.py keeps its files there
    rank: int
    world: int
    tokenizer: object
    model_config: object
    model_path: str
    learner: Learner
    logger: RunLogger
    max_len: int  # the longest example, in tokens: rollout.max_model_len or the model's positions

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.rm.output_dir)

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


@dataclass
class RMData:
    pairs_file: Path
    digest: str  # sha256 of pairs.jsonl: a checkpoint resumes only on the pairs it trained on
    pairs: list[RMPair]
    train: list[RewriteExample]
    heldout: list[RewriteExample]
    counts: dict  # "train"/"heldout" -> ExampleCounts as JSON


@dataclass
class Sources:
    """Where the pairs come from, checked before any set-up: exactly one of the three is set."""
    saved: list[RMPair] | None = None  # <rm.output_dir>/pairs.jsonl of an interrupted run (train.resume=auto)
    from_file: list[RMPair] | None = None  # rm.pairs=PATH
    problems: list[Problem] | None = None  # rm.pairs=builder: the training problems to sample prompts from


def saved_pairs_path(cfg: DictConfig) -> Path:
    return Path(cfg.rm.output_dir) / "pairs.jsonl"


def check_rm_inputs(cfg: DictConfig) -> Sources:
    """Every mistake a user can fix, before anything is set up or written."""
    _, world = launch_rank_and_world()
    if cfg.model.lora.r:
        raise UserError(f"model.lora.r={cfg.model.lora.r}: the reward-model trainer has no LoRA yet; it trains every "
                        f"weight. Hint: leave model.lora.r=0 for engine.train_rm.")
    if cfg.rm.batch_size % world:
        raise UserError(f"rm.batch_size={cfg.rm.batch_size} must be divisible by the number of ranks ({world}).")
    if cfg.train.resume == "never" and latest_checkpoint(cfg.rm.output_dir) is not None:
        raise UserError(f"rm.output_dir={cfg.rm.output_dir} holds checkpoints of an earlier run and train.resume=never "
                        f"would mix a new run into them. Hint: train.resume=auto continues it; or give another "
                        f"rm.output_dir.")
    resumed = latest_checkpoint(cfg.rm.output_dir) if cfg.train.resume == "auto" else None
    if resumed is not None:  # before any set-up: another model.path would fail inside DeepSpeed's load
        check_same_schedule(cfg, json.loads((resumed / "meta.json").read_text())["config"], resumed)
    check_model_source(cfg.model.path)  # a bad folder or file fails here, not after set-up
    impl_for_this_machine(cfg.learner.logprob_impl)
    if cfg.train.resume == "auto" and saved_pairs_path(cfg).is_file():
        return Sources(saved=read_pairs(saved_pairs_path(cfg)))
    if cfg.rm.pairs != "builder":
        return Sources(from_file=read_pairs(cfg.rm.pairs))
    if cfg.pairs.kind == "psrlm":
        raise UserError("rm.pairs=builder with pairs.kind=psrlm: PSRLM's pairs are next steps after a prefix, not "
                        "whole responses, so they cannot teach rewriting a response. Hint: pairs.kind=evolve or "
                        "rlsf (the seq2seq recipe uses evolve).")
    if cfg.rm.reward not in REWARDS or cfg.rm.reward == "seq2seq":  # seq2seq needs the model trained here
        known = sorted(set(REWARDS) - {"seq2seq"})
        raise UserError(f"rm.reward={cfg.rm.reward!r} cannot rank the builder's pairs; known: {known}.")
    if cfg.rm.reward == "mix" and "seq2seq" in cfg.reward.weights:
        raise UserError("rm.reward=mix with reward.weights.seq2seq: the seq2seq reward needs the model trained here. "
                        "Hint: drop seq2seq from reward.weights for this command.")
    if cfg.rm.prompts % world:
        raise UserError(f"rm.prompts={cfg.rm.prompts} must be divisible by the number of ranks ({world}).")
    problems = load_problems(cfg.data.train, cfg.data.prompt_key, cfg.data.answer_key, cfg.data.prompt_template)
    if reward_needs(cfg.rm.reward, cfg.reward).needs_gold:
        require_answers(problems, cfg.data.train, f"rm.reward={cfg.rm.reward}")
    return Sources(problems=problems)


def build_rm_run(cfg: DictConfig) -> RMRun:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.train.seed)
    model_path = prepare_model_everywhere(cfg.model, rank)
    tokenizer, model_config = load_tokenizer_and_config(model_path, cfg.model.trust_remote_code)
    require_chat_template(cfg.model.path, tokenizer)
    limits = [n for n in (cfg.rollout.max_model_len, getattr(model_config, "max_position_embeddings", None)) if n]
    if not limits:
        raise UserError(f"model.path={cfg.model.path}: its config gives no max_position_embeddings and "
                        f"rollout.max_model_len is unset, so the longest example is unknown. Hint: set "
                        f"rollout.max_model_len.")
    cfg = with_values(cfg, {"train.output_dir": cfg.rm.output_dir})
    if rank == 0:
        Path(cfg.rm.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.rm.output_dir) / "config.yaml")
    learner = Learner(model_path, zero_stage=cfg.deepspeed.zero_stage, lr=cfg.rm.lr, grad_clip=cfg.train.grad_clip,
                      episodes_per_rank=cfg.rm.batch_size // world, micro_batch_size=cfg.train.micro_batch_size,
                      dtype=cfg.model.dtype, logprob_impl=cfg.learner.logprob_impl,
                      trust_remote_code=cfg.model.trust_remote_code, with_reference=False,
                      zero3=zero3_settings(cfg.deepspeed), packing=cfg.learner.packing,
                      gradient_checkpointing=cfg.learner.gradient_checkpointing)
    return RMRun(cfg=cfg, rank=rank, world=world, tokenizer=tokenizer, model_config=model_config,
                 model_path=model_path, learner=learner, logger=RunLogger(Path(cfg.rm.output_dir), enabled=rank == 0),
                 max_len=min(limits))


def rm_data(run: RMRun, sources: Sources) -> RMData:
    """The run's pairs (saved before training), split and turned into examples."""
    cfg, path = run.cfg, saved_pairs_path(run.cfg)
    if sources.saved is not None:
        pairs = sources.saved
        run.log(f"[resume] training on the {len(pairs)} pairs saved in {path} (rm.pairs is not read again)")
    else:
        if sources.from_file is not None:
            pairs = sources.from_file
        else:
            cfg, prompts = builder_prompts(cfg, sources.problems, run.tokenizer, run.model_config, run.log)
            pairs = build_pairs(cfg, run.learner, run.tokenizer, run.model_path, prompts, run.rank, run.world,
                                run.log)
        if run.is_main:
            write_pairs(path, heldout_split(pairs, cfg.rm.heldout_pairs, cfg.train.seed))
        barrier()
        pairs = read_pairs(path)  # what a resumed run reads: trained on exactly as it will be again
    if any(p.split is None for p in pairs):  # a pairs.jsonl edited by hand
        pairs = heldout_split(pairs, cfg.rm.heldout_pairs, cfg.train.seed)

    def context(prompt: str, response: str) -> list[int]:
        return rewrite_context_ids(run.tokenizer, prompt, response, cfg.reward.rewrite_instruction)

    def target(response: str) -> list[int]:
        return rewrite_target_ids(run.tokenizer, response)

    train, train_counts = rewrite_examples([p for p in pairs if p.split == "train"], context, target, run.max_len)
    heldout, heldout_counts = rewrite_examples([p for p in pairs if p.split == "heldout"], context, target,
                                               run.max_len)
    counts = {"train": train_counts.to_json(), "heldout": heldout_counts.to_json()}
    run.log(f"[examples] {path}: train {counts['train']}, held out {counts['heldout']} (too_long: over "
            f"{run.max_len} tokens)")
    if not train:
        raise UserError(f"{path}: no training example is left ({counts['train']}). Hint: give more pairs, lower "
                        f"rm.heldout_pairs, or raise rollout.max_model_len if they are too long.")
    return RMData(path, hashlib.sha256(path.read_bytes()).hexdigest(), pairs, train, heldout, counts)


def heldout(run: RMRun, data: RMData, step: int) -> dict[str, float]:
    """The held-out rewrite check (engine/reward_model/heldout.py), logged under rm/heldout_*."""
    synced = run.world > 1 and run.cfg.deepspeed.zero_stage == 3  # ZeRO-3 generation gathers on every rank
    metrics = heldout_check(run.learner, data.heldout, run.tokenizer, run.rank, run.world, synced)
    if not metrics:
        run.log(f"[heldout] step {step}: no held-out examples (rm.heldout_pairs={run.cfg.rm.heldout_pairs})")
        return {}
    run.logger.scalars("rm", {f"heldout_{k}": v for k, v in metrics.items()}, step)
    run.log(f"[heldout] step {step}: fix {metrics['fix']:.3f} (answer {metrics['fix_answer']:.3f}, unchanged "
            f"{metrics['copy']:.3f}) on {int(metrics['fix_examples'])} rejected inputs, keep {metrics['keep']:.3f} on "
            f"{int(metrics['keep_examples'])} chosen inputs, nll {metrics['nll']:.4f}")
    return metrics


def resume_or_start(run: RMRun, data: RMData, steps: int) -> dict:
    """The loop state: step, history, the held-out checks before and during training."""
    path = latest_checkpoint(run.out_dir) if run.cfg.train.resume == "auto" else None
    if path is None:
        run.logger.rewind(-1)  # a fresh start: nothing an earlier, unfinished run logged here is kept
        return {"step": 0, "history": [], "before": heldout(run, data, 0), "during": []}
    if json.loads((path / "meta.json").read_text())["pairs_sha256"] != data.digest:  # checked before loading
        raise UserError(f"{data.pairs_file} is not the file the checkpoint {path} trained on (its sha256 differs). "
                        f"Hint: restore it, or start over in another rm.output_dir.")
    state = load_checkpoint(run, path)
    run.logger.rewind(state["step"])
    run.log(f"[resume] continuing from {path} (after {state['step']}/{steps} steps)")
    return state


# What fixes the step schedule and the examples: a resumed run must agree with its checkpoint on each.
# (rm.heldout_pairs is not one: the saved pairs.jsonl keeps each pair's split.)
RESUME_KEYS = ("model.path", "train.seed", "rm.epochs", "rm.batch_size", "rm.lr", "reward.rewrite_instruction",
               "rollout.max_model_len")


def check_same_schedule(cfg: DictConfig, saved: dict, path: Path) -> None:
    before = OmegaConf.create(saved)
    for key in RESUME_KEYS:
        now, then = OmegaConf.select(cfg, key), OmegaConf.select(before, key)
        if now != then:
            raise UserError(f"{key}={now!r}, but the checkpoint {path} was trained with {key}={then!r}: resuming "
                            f"would not continue the same run. Hint: pass {key}={then!r}, or start over in another "
                            f"rm.output_dir (or train.resume=never there after removing it).")


def write_checkpoint(run: RMRun, data: RMData, state: dict) -> None:
    meta = {**state, "pairs_sha256": data.digest, "run": run_identity(run.out_dir),
            "config": OmegaConf.to_container(run.cfg, resolve=True)}
    path = save_checkpoint(run, state["step"], meta, run.cfg.train.keep_checkpoints)
    run.log(f"[checkpoint] step {state['step']} saved to {path}")


def train_loop(run: RMRun, data: RMData, schedule: list[list[int]], state: dict, signals: StopSignals) -> int:
    """Steps from state["step"] on. Returns the signal that stopped it early (0: none)."""
    cfg, first, started = run.cfg, state["step"], time.time()
    per_epoch = math.ceil(len(data.train) / cfg.rm.batch_size)
    for step in range(first, len(schedule)):
        step_started = time.time()
        rows = [data.train[i] for i in share(schedule[step], run.rank, run.world)]
        stats = rewrite_update(run.learner, collate_examples(rows, run.tokenizer.pad_token_id))
        stats["step_seconds"] = time.time() - step_started
        state["history"].append(stats)
        state["step"] = step + 1
        run.logger.scalars("rm", {k: stats[k] for k in STEP_SCALARS}, step + 1)
        run.logger.scalars("perf", {"step_seconds": stats["step_seconds"]}, step + 1)
        eta = (time.time() - started) / (step + 1 - first) * (len(schedule) - step - 1)
        run.log(f"[rm step {step + 1}/{len(schedule)}] epoch {step // per_epoch + 1}/{cfg.rm.epochs} | loss "
                f"{stats['loss']:.4f} | grad_norm {stats['grad_norm']:.3f} | {int(stats['tokens'])} tokens | "
                f"{stats['step_seconds']:.2f}s | eta {int(eta // 60)}m{int(eta % 60):02d}s")
        if cfg.rm.eval_every and (step + 1) % cfg.rm.eval_every == 0 and step + 1 < len(schedule):
            state["during"].append({"step": step + 1, **heldout(run, data, step + 1)})
        stop = signals.requested()
        if stop or (cfg.rm.save_every and (step + 1) % cfg.rm.save_every == 0):
            write_checkpoint(run, data, state)
        if stop:
            return stop
    return 0


def exit_after_signal(run: RMRun, sig: int, state: dict, steps: int) -> NoReturn:
    run.log(f"[signal] {signal.Signals(sig).name}: stopped after step {state['step']}/{steps}; the same command "
            f"resumes")
    run.logger.close()
    sys.exit(128 + sig)


def save_model(run: RMRun) -> Path:
    """<rm.output_dir>/model, written whole or not at all (a temporary folder, then a rename)."""
    final, tmp = run.out_dir / "model", run.out_dir / ".tmp-model"
    if run.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    run.learner.save_weights(tmp, run.tokenizer, run.is_main)  # every rank: ZeRO-3 gathers
    if run.is_main:  # the question it was trained to answer: reward.kind=seq2seq must ask the same one
        (tmp / REWRITE_FILE).write_text(json.dumps({"rewrite_instruction": run.cfg.reward.rewrite_instruction}))
        shutil.rmtree(final, ignore_errors=True)  # left by a run that died before its summary
        os.replace(tmp, final)
    barrier()
    return final


def finish(run: RMRun, data: RMData, state: dict, started: float) -> dict:
    """The final held-out check, the model folder and summary.json (whose presence marks the run finished)."""
    history = state["history"]
    after = heldout(run, data, state["step"])
    model = save_model(run)
    summary = {
        "pairs": {"file": str(data.pairs_file), "source": run.cfg.rm.pairs, "total": len(data.pairs),
                  "train": sum(p.split == "train" for p in data.pairs),
                  "heldout": sum(p.split == "heldout" for p in data.pairs)},
        "examples": data.counts,
        "train": {"steps": len(history), "epochs": run.cfg.rm.epochs, "history": history,
                  "first_loss": history[0]["loss"], "last_loss": history[-1]["loss"],
                  "mean_step_seconds": sum(s["step_seconds"] for s in history) / len(history),
                  "wall_seconds": time.time() - started},
        "heldout": {"before": state["before"], "during": state["during"], "after": after},
        "model": str(model),
    }
    if run.is_main:
        write_summary(run.out_dir, summary)
        run.log(f"[done] reward model: {model}")
    run.logger.close()
    barrier()
    return summary


def main(argv: list[str] | None = None, console: bool = False) -> dict:
    """console: the command line's run (cli): the terminal shows progress and problems, train.log all."""
    cfg = load_config(main_args(argv))
    load_plugins(cfg.reward.plugins)  # rm.reward may be a plugin's
    done = Path(cfg.rm.output_dir) / "summary.json"
    if cfg.train.resume == "auto" and done.is_file():
        print(f"[resume] {cfg.rm.output_dir} already finished ({done} exists): nothing to do", flush=True)
        return json.loads(done.read_text())
    sources = check_rm_inputs(cfg)
    if console:  # after the input checks: a bad input is one error line, and nothing is written
        to_console(Path(cfg.rm.output_dir), launch_rank_and_world()[0], cfg.log.level)
    started = time.time()
    init_distributed()
    run = build_rm_run(cfg)
    data = rm_data(run, sources)
    schedule = epoch_batches(len(data.train), cfg.rm.batch_size, cfg.rm.epochs, cfg.train.seed)
    state = resume_or_start(run, data, len(schedule))
    stopped = train_loop(run, data, schedule, state, StopSignals())
    if stopped:
        exit_after_signal(run, stopped, state, len(schedule))
    return finish(run, data, state, started)


def cli(argv: list[str] | None = None) -> None:
    """The command line: a user's mistake is one `error:` line and exit code 2, never a traceback."""
    run_cli(lambda: main(argv, console=True))


if __name__ == "__main__":  # vLLM may spawn helpers; the guard keeps them from re-running training
    from engine.train_rm import cli as package_cli  # one copy of this module

    package_cli()
