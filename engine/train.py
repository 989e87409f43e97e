"""SCoRe self-correction training, top to bottom.

    deepspeed engine/train.py [configs/X.yaml] key=value ...

Each step: vLLM samples turn-1 answers and rollout.turns - 1 corrections; rewards score every turn;
the learner takes one policy-gradient step (Stage I: the last turn's reward, earlier turns held near
the base by a strong KL; Stage II: every turn, a correction bonus on each turn after the first); the
new weights go back into vLLM. algo.kind=dpo trains on preference pairs instead (engine/objectives/).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import NoReturn
from pathlib import Path

if __package__ in (None, ""):  # `deepspeed engine/train.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from engine import algorithms as algo
from engine.batch import collate
from engine.checkpoint import (check_resume_config, latest_checkpoint, load_checkpoint, run_identity, save_checkpoint,
                               write_summary)
from engine.config import base_config, load_config, main_args, save_config, staleness, with_values
from engine.console import to_console
from engine.distributed import barrier, init_distributed, reduce_max, reduce_mean
from engine.errors import run_cli
from engine.evaluate import eval_metrics
from engine.guard import CollapseGuard
from engine.learner import Learner, zero3_settings
from engine.inputs import check_inputs, fit_to_model, guard_data, guard_reads_labels
from engine.placement import Channels, Placement, launch_rank_and_world, plan_placement, split_default_group
from engine.metrics import Laps, RunLogger
from engine.models import load_tokenizer_and_config, prepare_model_everywhere
from engine.objectives import ROWS_PER_UPDATE, training_loop
from engine.stop_signals import StopSignals
from rewards import RewardInputs, turn_correctness, turn_has_answer
from rewards.checked import RewardError, checked_rewards
from rewards.plugins import load_plugins
from rewards.registry import RewardSpec, lowest_reward, reward_needs, unanswered_lowest, unread_settings
from rollout.data import Problem
from rollout.service import LocalRollouts, RemoteRollouts, WorkerLost
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


def build_run(cfg: DictConfig, placement: Placement, channels: Channels | None) -> Run:
    """The learner's side: data, model, rollout engine(s), DeepSpeed learner, logger."""
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
                      episodes_per_rank=ROWS_PER_UPDATE[cfg.algo.kind](cfg) // world,
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


def train_step(run: Run, step: int) -> dict[str, float]:
    cfg = run.cfg
    stage = algo.stage_at(step, cfg.algo.stage1_steps)
    laps = Laps()

    # 1. Rollout: the current weights out (version = updates so far), the prompts of the step `staleness`
    #    ahead in (0: this step's), then this step's turn-1 answers (rollout.n per prompt) and corrections.
    run.rollouts.push_weights(step)
    laps.end("sync_s")
    ahead = step + staleness(cfg)
    if ahead < cfg.train.steps:
        run.rollouts.request(ahead, step_prompts(run, ahead))
    idle_before = run.rollouts.idle_s
    episodes = run.rollouts.collect(step)
    laps.end("collect_s")  # logged as rollout_s (sampling) and idle_s (waiting for workers)

    # 2. Rewards (self-rewards read the policy's token statistics, scored once per step) -> per-turn
    #    returns -> advantages against each prompt's group.
    batch = collate(episodes, run.tokenizer.pad_token_id)
    # The policy's statistics cost a forward pass: only when the reward reads them.
    token_stats = run.learner.score(batch) if run.reward.needs_token_stats else None
    scored = score_episodes(run, step, stage, episodes, batch, token_stats)
    laps.end("score_s")

    # 3. One learner update (its weights go out at the start of the next step, or before an evaluation).
    weights = algo.turn_weights(stage, cfg.algo.beta1, cfg.algo.beta2, cfg.rollout.turns, cfg.algo.turn1_credit)
    update = run.learner.update(batch, scored.advantages, weights, cfg.algo.kl_estimator,
                                is_cap=cfg.rollout.is_cap if staleness(cfg) else None,
                                temperature=cfg.rollout.temperature)
    laps.end("update_s")

    run.logger.samples(step + 1, episodes, scored.rewards, cfg.eval.samples_logged)
    if cfg.log.text_every and (step + 1) % cfg.log.text_every == 0:
        run.logger.episodes_text(step + 1, episodes, scored.rewards, cfg.log.text_episodes)
    stats = {
        **{f"reward_t{k}": r.mean().item() for k, r in enumerate(scored.rewards, 1)},
        **{f"kl_t{k}": kl for k, kl in enumerate(update.kl_turns, 1)},
        "loss": update.loss, "stage": float(stage),
        "no_answer_frac": 1 - sum(has.mean().item() for has in scored.has_answer) / len(scored.has_answer),
        "entropy": update.entropy,  # of the distribution sampled from (at rollout.temperature), whatever the reward
        "grad_norm": update.grad_norm, "lr": update.lr, "pad_frac": update.pad_frac,
        "sync_s": laps.seconds["sync_s"], "rollout_s": run.rollouts.last_rollout_s, "score_s": laps.seconds["score_s"],
        "update_s": laps.seconds["update_s"], "idle_s": run.rollouts.idle_s - idle_before,
        "tokens": batch.response_mask.sum().item(),
        # Updates between the policy that sampled the batch and the one trained on it (<= rollout.max_staleness).
        "policy_lag": float(step - run.rollouts.sampled_version),
        "skipped_episodes": float(scored.skipped.sum()) * run.world,  # the mean over ranks is then the total
    }
    if scored.token_level:  # summed over ranks (mean x world), for the share of all ranks' tokens below
        stats.update(negative_tokens=scored.negative_tokens * run.world, dense_tokens=scored.dense_tokens * run.world)
    if run.train_has_answers:  # gold accuracy of the training samples, whatever the reward
        stats.update({f"acc_t{k}": acc.mean().item() for k, acc in enumerate(turn_correctness(episodes), 1)})
    if cfg.train.grad_clip > 0:
        stats["grad_clipped"] = float(update.grad_norm > cfg.train.grad_clip)
    stats = reduce_mean(stats)
    if "dense_tokens" in stats:  # token-level rewards: the share of sampled tokens marked wrong (below 0)
        stats["negative_token_frac"] = stats.pop("negative_tokens") / max(stats.pop("dense_tokens"), 1.0)
    return {**stats, "logprob_mismatch": reduce_max(update.logprob_mismatch),
            "reference_drift": reduce_max(update.reference_drift)}


@dataclass
class Scored:
    rewards: list[torch.Tensor]  # per turn [B]: the turn's reward (a token-level reward's mean over the turn)
    advantages: list[torch.Tensor]  # per turn [B], or [B, T] for a turn with token-level rewards
    skipped: torch.Tensor  # [B] bool: episodes with a non-finite reward (reward.nonfinite=skip)
    has_answer: list[torch.Tensor]  # per turn [B]: a locatable final answer
    token_level: bool = False  # some turn has token-level rewards (the same on every rank: one reward.kind)
    negative_tokens: int = 0  # then this rank's sampled tokens rewarded below 0
    dense_tokens: int = 0  # ... out of this many


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


def hparams_config(cfg: DictConfig) -> dict:
    """The resolved config for TensorBoard's HParams, without the reward.* keys the reward does not read."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in unread_settings(reward_needs(cfg.reward.kind, cfg.reward), cfg.reward):
        del config["reward"][key]
    return config


def score_episodes(run: Run, step: int, stage: int, episodes, batch, token_stats) -> Scored:
    """Rewards -> SCoRe returns -> advantages (per token for turns with token-level rewards)."""
    cfg = run.cfg
    rewards, skipped = rewards_on_every_rank(run, step, RewardInputs(episodes, run.tokenizer, cfg.reward, token_stats))
    has_answer = turn_has_answer(episodes, run.tokenizer)
    # A token-level reward (reward.kind=seq2seq) enters the returns as its turn's mean over the turn's tokens.
    token_rewards = [r if r.dim() == 2 else None for r in rewards]
    lengths = [batch.turn_mask(k).sum(-1) for k in range(batch.turns)]
    rewards = [algo.turn_means(r, n) if r.dim() == 2 else r for r, n in zip(rewards, lengths)]
    # A skipped (NaN/inf) episode takes its group's mean reward, then no policy gradient; a turn without a
    # locatable answer earns the reward's lowest value (unless the reward reads no answer).
    unanswered = partial(unanswered_lowest, run.reward, cfg.reward.kind, cfg.reward, run.tokenizer)
    rewards = [algo.fill_skipped(r, skipped, cfg.rollout.n) for r in unanswered(rewards, has_answer)]
    token_rewards = unanswered([None if t is None else t.masked_fill(skipped.unsqueeze(-1), 0.0)
                                for t in token_rewards], has_answer)
    returns = algo.turn_returns(rewards, stage, cfg.algo.alpha, cfg.algo.turn1_credit)
    estimator = algo.ADVANTAGE_ESTIMATORS[cfg.algo.advantage]
    advantages = [estimator(ret.view(-1, cfg.rollout.n)).flatten().masked_fill(skipped, 0.0) for ret in returns]
    dense = [(t, n) for t, n in zip(token_rewards, lengths) if t is not None]
    if not dense:
        return Scored(rewards, advantages, skipped, has_answer)
    advantages = per_token_advantages(cfg, stage, batch, advantages, returns, token_rewards, lengths, skipped)
    # What the update trains with, sampled tokens only: an unanswered turn's tokens at the lowest reward count
    trained = ~skipped.unsqueeze(-1)  # a skipped episode gets no policy gradient
    negative = sum(int(((t < 0) & algo.positions_within(n, t.shape[1]).bool() & trained).sum()) for t, n in dense)
    return Scored(rewards, advantages, skipped, has_answer, token_level=True, negative_tokens=negative,
                  dense_tokens=sum(int(n.sum()) for _, n in dense))


def per_token_advantages(cfg, stage: int, batch, advantages, returns, token_rewards, lengths, skipped):
    """Turns with token-level rewards get per-token advantages [B, T] (algo.token_advantages, baseline
    algo.token_baseline); the others keep their per-episode advantages [B]."""
    coefficients = algo.own_reward_coefficients(stage, cfg.algo.alpha, batch.turns, cfg.algo.turn1_credit)
    out = []
    for k, (advantage, ret, tokens) in enumerate(zip(advantages, returns, token_rewards)):
        if tokens is None:
            out.append(advantage)
            continue
        per_token = algo.token_advantages(advantage, ret, tokens, lengths[k], coefficients[k], cfg.rollout.n,
                                          cfg.algo.token_baseline).masked_fill(skipped.unsqueeze(-1), 0.0)
        out.append(algo.place_turn_tokens(per_token, batch.turn_mask(k)))
    return out


def rewards_on_every_rank(run: Run, step: int, inputs: RewardInputs):
    """checked_rewards, with the ranks agreeing on a failure so that all of them stop with an error line
    (rather than the others dying in the update's collectives)."""
    try:
        result, failure = checked_rewards(run.cfg.reward.kind, run.reward.fn, inputs, step + 1,
                                          run.cfg.reward.nonfinite), None
    except RewardError as err:
        result, failure = None, err
    if reduce_max(float(failure is not None)):
        raise failure or RewardError(f"reward '{run.cfg.reward.kind}' failed on another rank at step {step + 1}; "
                                     f"that rank's error line names the episode.")
    return result


def run_eval(run: Run, step: int) -> dict[str, float]:
    cfg = run.cfg
    run.rollouts.push_weights(step)  # the policy after `step` updates
    metrics = eval_metrics(run.rollouts.eval_episodes(run.eval_problems), run.tokenizer)
    run.logger.scalars("eval", {k: v for k, v in metrics.items() if k != "n"}, step)
    turns = range(1, cfg.rollout.turns + 1)
    run.log(f"[eval] step {step}: " + " ".join(f"acc_t{k} {metrics[f'acc_t{k}']:.3f}" for k in turns) +
            f" delta {metrics['delta']:+.3f} (i2c {metrics['delta_i2c']:.3f}, c2i {metrics['delta_c2i']:.3f}) " +
            " ".join(f"ece_t{k} {metrics[f'ece_t{k}']:.3f}" for k in turns) + f" on {metrics['n']} problems")
    return metrics


def guard_accuracy(run: Run, step: int) -> float:
    """The last turn's accuracy on guard.data (not data.eval: the reported set must not decide when training
    stops)."""
    metrics = eval_metrics(run.rollouts.eval_episodes(run.guard_problems), run.tokenizer)
    accuracy = metrics[f"acc_t{run.cfg.rollout.turns}"]
    run.logger.scalars("guard", {"accuracy": accuracy}, step)
    return accuracy


PERF_KEYS = ("rollout_s", "score_s", "update_s", "sync_s", "idle_s", "step_seconds", "pad_frac")


def log_step(run: Run, step: int, stats: dict[str, float], seconds_per_step: float) -> None:
    """TensorBoard scalars (rank 0) and one compact progress line."""
    rollout_keys = ("logprob_mismatch", "reference_drift", "policy_lag")
    run.logger.scalars("train", {k: v for k, v in stats.items()
                                 if k not in PERF_KEYS + rollout_keys and k != "tokens"}, step + 1)
    run.logger.scalars("rollout", {k: stats[k] for k in rollout_keys}, step + 1)
    tokens_per_s = stats["tokens"] * run.world / max(stats["step_seconds"], 1e-9)
    run.logger.scalars("perf", {**{k: stats[k] for k in PERF_KEYS}, "tokens_per_s": tokens_per_s}, step + 1)
    if stats["skipped_episodes"]:
        run.log(f"[reward] step {step + 1}: {int(stats['skipped_episodes'])} episodes with a NaN/inf reward skipped "
                f"(reward.nonfinite=skip)")
    eta = seconds_per_step * (run.cfg.train.steps - step - 1)
    turns = range(1, run.cfg.rollout.turns + 1)

    def per_turn(name: str, digits: int) -> str:
        return "/".join(f"{stats[f'{name}_t{k}']:.{digits}f}" for k in turns)

    acc = f"acc {per_turn('acc', 2)} | " if "acc_t1" in stats else ""
    run.log(f"[step {step + 1}/{run.cfg.train.steps}] stage {int(stats['stage'])} | reward {per_turn('reward', 3)} | "
            f"{acc}kl {per_turn('kl', 4)} | {stats['step_seconds']:.1f}s | eta {int(eta // 60)}m{int(eta % 60):02d}s")


def resume_or_start(run: Run, guard: CollapseGuard) -> dict:
    """With train.resume=auto, continue from the latest complete checkpoint; else evaluate the base model
    and start at step 0. Returns the loop state: step, before, history, alarms."""
    path = latest_checkpoint(run.cfg.train.output_dir) if run.cfg.train.resume == "auto" else None
    if path is None:
        run.logger.rewind(-1)  # a fresh start: nothing an earlier, unfinished run logged here is kept
        return {"step": 0, "before": run_eval(run, 0), "history": [], "alarms": []}
    state = load_checkpoint(run, path)
    guard.history = [tuple(h) for h in state.pop("guard_history")]
    run.logger.rewind(state["step"])
    run.log(f"[resume] continuing from {path} (after {state['step']} updates)")
    return state


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


def main(argv: list[str] | None = None, console: bool = False) -> dict | None:
    """console: the command line's run (cli): the terminal shows progress and problems, train.log all."""
    cfg = load_config(main_args(argv))
    if console:
        to_console(Path(cfg.train.output_dir), launch_rank_and_world()[0], cfg.log.level)
    load_plugins(cfg.reward.plugins)  # every rank and worker: their rewards join the registry
    reward_needs(cfg.reward.kind, cfg.reward)  # an unknown reward.kind stops here, before any model is built
    done = Path(cfg.train.output_dir) / "summary.json"
    if cfg.train.resume == "auto" and done.is_file():
        print(f"[resume] {cfg.train.output_dir} already finished ({done} exists): nothing to do", flush=True)
        return json.loads(done.read_text())
    cfg = check_resumable(cfg)
    placement = plan_placement(cfg.rollout.placement, cfg.rollout.workers, *launch_rank_and_world())
    channels = None
    if placement.kind == "dedicated":  # before the default group is split: the launch's own rendezvous
        channels = Channels(placement, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                            cfg.rollout.worker_timeout_s)
    split_default_group(placement)
    if placement.is_worker:
        return run_worker(cfg, placement, channels)
    init_distributed()
    return training_loop(cfg.algo.kind)(build_run(cfg, placement, channels))  # pg: train() below


def train(run: Run) -> dict:
    cfg = run.cfg
    guard = CollapseGuard(cfg.guard.min_entropy, cfg.guard.patience)
    started = time.time()
    signals = StopSignals()
    state = resume_or_start(run, guard)
    before, history, alarms = state["before"], state["history"], state["alarms"]
    # The rollout engines take the policy of the first step (the restored one after a resume) before any
    # batch is requested: the batches requested ahead below are then at most max_staleness updates old.
    run.rollouts.push_weights(state["step"])
    for ahead in range(state["step"], min(state["step"] + staleness(cfg), cfg.train.steps)):
        run.rollouts.request(ahead, step_prompts(run, ahead))  # asynchronous: the first batches, ahead
    try:
        stopped = train_loop(run, guard, signals, state)
    except WorkerLost:  # a step is applied whole or not at all: save the state after len(history) steps
        write_checkpoint(run, len(history), before, history, alarms, guard)
        raise
    if stopped:
        exit_after_signal(run, stopped, f"after step {len(history)}")
    return finish(run, before, history, alarms, started)


def exit_after_signal(run: Run, sig: int, where: str) -> NoReturn:
    """The checkpoint is written: stop the rollout engines, close the logs, exit 128 + signal."""
    run.log(f"[signal] {signal.Signals(sig).name}: stopped {where}; the same command resumes")
    run.rollouts.stop()
    run.logger.close()
    sys.exit(128 + sig)


def train_loop(run: Run, guard: CollapseGuard, signals: StopSignals, state: dict) -> int:
    """Steps from state["step"] on, with periodic evaluations, the guard and checkpoints. Returns the
    signal that stopped it early (0: none)."""
    cfg = run.cfg
    before, history, alarms = state["before"], state["history"], state["alarms"]
    loop_started = time.time()
    for step in range(state["step"], cfg.train.steps):
        step_started = time.time()
        stats = train_step(run, step)
        stats["step_seconds"] = time.time() - step_started
        history.append(stats)
        # Wall time per step of this process, evaluations and checkpoints included, for the ETA.
        log_step(run, step, stats, (time.time() - loop_started) / (step + 1 - state["step"]))
        alarm = guard.check_entropy(stats["entropy"])
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.train.steps:
            run_eval(run, step + 1)
            if run.guard_problems:  # every evaluation, even after an entropy alarm: it compares consecutive ones
                since, turns = history[-cfg.eval.every:], cfg.rollout.turns
                reward = sum(sum(s[f"reward_t{k}"] for k in range(1, turns + 1)) for s in since) / (turns * len(since))
                eval_alarm = guard.check_eval(reward, guard_accuracy(run, step + 1))
                alarm = alarm or eval_alarm
        if alarm:
            alarms.append(f"step {step + 1}: {alarm}")
            run.log(f"[guard] step {step + 1}: {alarm}" + (" - stopping" if cfg.guard.action == "stop" else ""))
            if cfg.guard.action == "stop":
                folder = Path(cfg.train.output_dir) / "checkpoints" / f"guard-stop-step{step + 1}"
                run.learner.save_weights(folder, run.tokenizer, run.is_main)
                run.log(f"[guard] policy weights saved to {folder}")
                break
        stop = signals.requested()
        if stop or (cfg.train.save_every and ((step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps)):
            write_checkpoint(run, step + 1, before, history, alarms, guard)
        if stop:
            return stop
    return 0


def write_checkpoint(run: Run, steps_done: int, before: dict, history: list, alarms: list,
                     guard: CollapseGuard, extra: dict | None = None) -> None:
    """`extra`: the objective's own loop state (dpo: round, step within the round), restored into the state."""
    cfg = run.cfg
    meta = {"step": steps_done,
            "stage": algo.stage_at(steps_done, cfg.algo.stage1_steps),  # the stage of the next step
            # The data position: step k's prompts are drawn with (train.seed, k), see step_prompts.
            "data_position": {"next_step": steps_done, "seed": cfg.train.seed},
            "run": run_identity(cfg.train.output_dir),
            "before": before, "history": history, "alarms": alarms, "guard_history": guard.history,
            "config": OmegaConf.to_container(cfg, resolve=True), **(extra or {})}
    path = save_checkpoint(run, steps_done, meta, cfg.train.keep_checkpoints)
    run.log(f"[checkpoint] step {steps_done} saved to {path}")


def finish(run: Run, before: dict, history: list, alarms: list, started: float, extra: dict | None = None) -> dict:
    """The final evaluation, the HParams summary and summary.json (whose presence marks the run done).
    `extra`: the objective's own sections of the summary."""
    cfg = run.cfg
    after = run_eval(run, len(history))
    summary = {
        "train": {
            "steps": len(history),
            "last_step": history[-1] if history else {},
            "history": history,
            "logprob_mismatch_per_step": [s["logprob_mismatch"] for s in history if "logprob_mismatch" in s],
            "mean_step_seconds": sum(s["step_seconds"] for s in history) / max(len(history), 1),
            "wall_seconds": time.time() - started,
            "guard_alarms": alarms,
            "skipped_episodes": sum(s.get("skipped_episodes", 0.0) for s in history),
        },
        "data": {"skipped_problems": run.skipped_problems},
        "eval": {"before": before, "after": after},
        **(extra or {}),
    }
    run.rollouts.stop()
    run.logger.hparams(hparams_config(cfg), after)
    if run.is_main:
        write_summary(cfg.train.output_dir, summary)
        run.log(f"[done] run directory: {cfg.train.output_dir}")
    run.logger.close()
    barrier()
    return summary


def cli(argv: list[str] | None = None) -> None:
    """The command line: a user's mistake is one `error:` line and exit code 2, never a traceback."""
    run_cli(lambda: main(argv, console=True))


if __name__ == "__main__":  # vLLM may spawn helpers; the guard keeps them from re-running training
    from engine.train import cli as package_cli  # one copy of this module: the one objectives import

    package_cli()
