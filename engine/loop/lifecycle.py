"""A run's life around its objective's loop: start or resume, checkpoint, stop on a signal, finish with the
last evaluation and summary.json. Every objective (engine/objectives/) uses these."""

from __future__ import annotations

import signal
import sys
import time
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from engine.base.guard import CollapseGuard
from engine.loop.evaluation import run_eval
from engine.loop.run import Run
from engine.runtime.checkpoint import latest_checkpoint, load_checkpoint, run_identity, save_checkpoint, write_summary
from engine.runtime.distributed import barrier
from engine.update import algorithms as algo
from rewards.registry import reward_needs, unread_settings


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


def exit_after_signal(run: Run, sig: int, where: str) -> NoReturn:
    """The checkpoint is written: stop the rollout engines, close the logs, exit 128 + signal."""
    run.log(f"[signal] {signal.Signals(sig).name}: stopped {where}; the same command resumes")
    run.rollouts.stop()
    run.logger.close()
    sys.exit(128 + sig)


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


def hparams_config(cfg: DictConfig) -> dict:
    """The resolved config for TensorBoard's HParams, without the reward.* keys the reward does not read."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in unread_settings(reward_needs(cfg.reward.kind, cfg.reward), cfg.reward):
        del config["reward"][key]
    return config
