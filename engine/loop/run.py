"""A training run's set-up: the `Run` every objective trains (data, model, rollout engines, learner, logger),
a dedicated rollout worker's life, the prompts of a step, and the start-up checks of a resumed run."""

from __future__ import annotations

import json
import random
import signal
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from engine.base.errors import UserError
from engine.config.loading import base_config, save_config, with_values
from engine.loop.inputs import check_inputs, fit_to_model, guard_data, guard_reads_labels
from engine.loop.metrics import RunLogger
from engine.models.paths import load_tokenizer_and_config, prepare_model_everywhere
from engine.runtime.checkpoint import check_resume_config, latest_checkpoint
from engine.runtime.distributed import init_distributed
from engine.runtime.placement import Channels, Placement, launch_rank_and_world
from engine.tasks.data import Problem
from engine.update.learner import Learner, zero3_settings
from rewards.registry import RewardSpec, lowest_reward, reward_needs, unread_settings
from rollout.service import LocalRollouts, RemoteRollouts
from rollout.vllm_engine import RolloutEngine
from rollout.worker import serve


@dataclass
class Run:
    """Everything a step needs, built once."""

    cfg: DictConfig
    rank: int
    world: int
    tokenizer: object
    train_problems: list[Problem]
    eval_problems: list[Problem]
    skipped_problems: dict[str, int]  # "train"/"eval"/"guard" -> problems dropped by data.overlong=skip
    reward: RewardSpec
    rollouts: LocalRollouts | RemoteRollouts  # where episodes come from (rollout.placement)
    learner: Learner
    logger: RunLogger
    guard_problems: list[Problem] = field(default_factory=list)  # guard.data's, with guard.patience > 0

    @cached_property
    def train_has_answers(self) -> bool:
        return all(p.answer is not None for p in self.train_problems)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


def build_run(cfg: DictConfig, placement: Placement, channels: Channels | None, rows_per_update: int) -> Run:
    """The learner's side: data, model, rollout engine(s), DeepSpeed learner, logger. rows_per_update: the
    sequences one update trains on, all ranks (the objective's, engine.objectives)."""
    rank, world = dist.get_rank(), dist.get_world_size()  # the learner group
    inputs = check_inputs(cfg, rank, world, workers=placement.workers)
    torch.manual_seed(cfg.train.seed)
    model_path = prepare_model_everywhere(cfg.model, rank)
    tokenizer, model_config = load_tokenizer_and_config(model_path, cfg.model.trust_remote_code)
    cfg, inputs = fit_to_model(cfg, inputs, tokenizer, model_config, log=print if rank == 0 else lambda _: None)
    reward = reward_needs(cfg.reward.kind, cfg.reward)
    if reward.check is not None:  # e.g. seq2seq: reward.model must be a causal LM sharing the policy's tokenizer
        reward.check(cfg.reward, tokenizer)
    lowest_reward(reward, cfg.reward.kind, cfg.reward, tokenizer)  # what an unanswered turn earns: finite
    if rank == 0:
        say_settings_without_effect(cfg)
    if cfg.rollout.min_tokens and rank == 0:
        print(f"[warn] rollout.min_tokens={cfg.rollout.min_tokens}: vLLM masks the end of turn until then, so the "
              f"samples are not from the policy the learner scores (their processed log-probs are renormalised "
              f"without it: rollout/logprob_mismatch includes -log(1 - p(end))). Meant for benchmarks at equal length.")
    run_dir = Path(cfg.train.output_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if channels is not None:  # the workers wait for this before starting vLLM
            channels.store.set("max_model_len", str(cfg.rollout.max_model_len))  # fit_to_model may have sized it
            channels.store.set("model_path", model_path)
    learner = Learner(model_path, zero_stage=cfg.deepspeed.zero_stage, lr=cfg.train.lr, grad_clip=cfg.train.grad_clip,
                      episodes_per_rank=rows_per_update // world,
                      micro_batch_size=cfg.train.micro_batch_size, dtype=cfg.model.dtype,
                      logprob_impl=cfg.learner.logprob_impl, trust_remote_code=cfg.model.trust_remote_code,
                      shard_reference=cfg.deepspeed.shard_reference, zero3=zero3_settings(cfg.deepspeed),
                      lora=cfg.model.lora, packing=cfg.learner.packing,
                      max_tokens_per_micro_batch=cfg.learner.max_tokens_per_micro_batch,
                      gradient_checkpointing=cfg.learner.gradient_checkpointing)
    if channels is None:
        rollouts = LocalRollouts(start_vllm(cfg, model_path, seed=cfg.train.seed + rank), tokenizer, cfg, learner,
                                 rank, world)
    else:
        rollouts = RemoteRollouts(channels, placement, cfg, learner)
    return Run(cfg=cfg, rank=rank, world=world, tokenizer=tokenizer, train_problems=inputs.train,
               eval_problems=inputs.eval, skipped_problems=inputs.skipped,
               reward=reward, rollouts=rollouts, learner=learner,
               logger=RunLogger(run_dir, enabled=rank == 0), guard_problems=inputs.guard)


def start_vllm(cfg: DictConfig, model_path: str, seed: int) -> RolloutEngine:
    return RolloutEngine(model_path, max_model_len=cfg.rollout.max_model_len, seed=seed, dtype=cfg.model.dtype,
                         kv_cache_gib=cfg.rollout.kv_cache_gib, trust_remote_code=cfg.model.trust_remote_code)


def run_worker(cfg: DictConfig, placement: Placement, channels: Channels) -> None:
    """A dedicated rollout worker: vLLM only, serving learner 0's commands until told to stop. It ignores
    SIGINT/SIGTERM: the learners finish their step, checkpoint and then tell it to stop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    init_distributed()  # a world of its own, which vLLM joins
    torch.manual_seed(cfg.train.seed + placement.rank)
    model_path = channels.store.get("model_path").decode()  # learner 0 has checked and built it
    cfg = with_values(cfg, {"rollout.max_model_len": int(channels.store.get("max_model_len"))})
    tokenizer, _ = load_tokenizer_and_config(model_path, cfg.model.trust_remote_code)
    engine = start_vllm(cfg, model_path, seed=cfg.train.seed + placement.rank)
    try:
        serve(cfg, channels, placement, engine, tokenizer)
    except dist.DistError as err:  # learner 0 went away (its own error line says why)
        print(f"[worker {placement.rank}] learner 0 is gone ({str(err).splitlines()[0][:200]}); stopping",
              file=sys.stderr, flush=True)
        sys.exit(1)


def step_prompts(run: Run, step: int) -> list[Problem]:
    """The step's prompts (all ranks'); the same on every run with the same seed."""
    return random.Random(run.cfg.train.seed * 1_000_003 + step).sample(run.train_problems,
                                                                       run.cfg.rollout.prompts_per_step)


def say_settings_without_effect(cfg: DictConfig) -> None:
    """Settings that would silently do nothing are named at start-up: reward.* keys set (away from their
    defaults) that the chosen reward does not read, and a guard that reads evaluations there will not be."""
    defaults = base_config().reward
    unread = [key for key in unread_settings(reward_needs(cfg.reward.kind, cfg.reward), cfg.reward)
              if cfg.reward[key] != defaults[key]]
    if unread:
        print(f"[reward] reward.kind={cfg.reward.kind} does not read "
              f"{', '.join(f'reward.{k}={cfg.reward[k]}' for k in unread)}: no effect (left out of the HParams)",
              flush=True)
    if cfg.learner.max_tokens_per_micro_batch and cfg.algo.kind != "pg":
        print(f"[warn] learner.max_tokens_per_micro_batch={cfg.learner.max_tokens_per_micro_batch} shapes the policy "
              f"gradient's updates only: algo.kind={cfg.algo.kind} keeps train.micro_batch_size rows", flush=True)
    if cfg.guard.patience > 0 and cfg.eval.every == 0 and cfg.algo.kind == "pg":  # the preference loop has none
        print(f"[warn] guard.patience={cfg.guard.patience} compares held-out evaluations during training, and "
              f"eval.every=0 runs none: the guard's reward/accuracy check never runs. Hint: eval.every=N, or "
              f"guard.patience=0 to say so.", flush=True)
    elif guard_reads_labels(cfg):
        print(f"[guard] guard.patience={cfg.guard.patience} reads gold labels: every eval.every={cfg.eval.every} "
              f"steps it evaluates {cfg.eval.problems} problems of guard.data={guard_data(cfg)}"
              + (" (the reported split: data.eval; set guard.data to a validation split)"
                 if guard_data(cfg) == cfg.data.eval else "")
              + (", and guard.action=stop lets their accuracy end training" if cfg.guard.action == "stop" else ""),
              flush=True)


def check_resumable(cfg: DictConfig) -> DictConfig:
    """Before any set-up (another model.path or model.lora.r would fail deep inside DeepSpeed's load, another
    seed or reward would silently continue a different run): the checkpoint resume=auto will continue was
    trained with this command's settings, up to RESUME_MAY_CHANGE. An unset rollout.max_model_len takes the
    checkpoint's value (the one its run sized or was given)."""
    path = latest_checkpoint(cfg.train.output_dir) if cfg.train.resume == "auto" else None
    if path is None:
        return cfg
    saved = json.loads((path / "meta.json").read_text())["config"]
    context = saved.get("rollout", {}).get("max_model_len")
    if cfg.rollout.max_model_len is None and context is not None:
        cfg = with_values(cfg, {"rollout.max_model_len": context})
    predates = check_resume_config(cfg, saved, path)
    if "dpo.reference" in predates and cfg.algo.kind == "dpo" and cfg.dpo.reference == "previous":
        raise UserError(f"the checkpoint {path} was trained before dpo.reference existed, when every round trained "
                        f"against the base model; resuming with dpo.reference=previous would switch references "
                        f"mid-run. Hint: pass dpo.reference=base to finish it as it began.")
    if predates and launch_rank_and_world()[0] == 0:
        print(f"[resume] {path} predates {len(predates)} setting(s), not checked: {', '.join(predates)}",
              flush=True)
    return cfg
