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
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # `deepspeed engine/train.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from engine.base.errors import run_cli
from engine.base.guard import CollapseGuard
from engine.config.loading import load_config, main_args, staleness
from engine.loop.evaluation import guard_accuracy, run_eval
from engine.loop.lifecycle import exit_after_signal, finish, resume_or_start, write_checkpoint
from engine.loop.metrics import Laps
from engine.loop.run import Run, build_run, check_resumable, run_worker, step_prompts
from engine.objectives import OBJECTIVES, register
from engine.objectives.dpo_rounds import train_rounds  # noqa: F401  (registers algo.kind=dpo)
from engine.runtime.console import to_console
from engine.runtime.distributed import init_distributed, reduce_max, reduce_mean
from engine.runtime.placement import Channels, launch_rank_and_world, plan_placement, split_default_group
from engine.runtime.stop_signals import StopSignals
from engine.update import algorithms as algo
from engine.update.batch import collate
from rewards import RewardInputs, turn_correctness, turn_has_answer
from rewards.checked import RewardError, checked_rewards
from rewards.plugins import load_plugins
from rewards.registry import reward_needs, unanswered_lowest
from rollout.service import WorkerLost


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
    objective = OBJECTIVES[cfg.algo.kind]
    run = build_run(cfg, placement, channels, rows_per_update=objective.rows_per_update(cfg))
    return objective.loop(run)  # pg: train() below


@register("pg", rows_per_update=lambda cfg: cfg.rollout.prompts_per_step * cfg.rollout.n)
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


def cli(argv: list[str] | None = None) -> None:
    """The command line: a user's mistake is one `error:` line and exit code 2, never a traceback."""
    run_cli(lambda: main(argv, console=True))


if __name__ == "__main__":  # vLLM may spawn helpers; the guard keeps them from re-running training
    from engine.train import cli as package_cli  # one copy of this module: the one objectives import

    package_cli()
