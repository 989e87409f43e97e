"""SCoRe self-correction training, top to bottom.

    deepspeed engine/train.py [configs/X.yaml] key=value ...

Each step: vLLM samples turn-1 answers and turn-2 corrections; rewards score both turns; the
learner takes one policy-gradient step (Stage I: turn-2 reward, turn 1 held near the base by a
strong KL; Stage II: both turns, correction bonus on turn 2); the new weights go back into vLLM.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `deepspeed engine/train.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoTokenizer

    from engine import algorithms as algo
    from engine.batch import collate
    from engine.config import load_config, main_args, save_config
    from engine.distributed import barrier, init_distributed, reduce_max, reduce_mean
    from engine.evaluate import evaluate
    from engine.learner import Learner
    from engine.metrics import RunLogger
    from engine.models import resolve_model_path
    from rewards import get_reward, turn_correctness
    from rollout.data import load_problems
    from rollout.episodes import sample_episodes
    from rollout.vllm_engine import RolloutEngine

    # --- config and process group ---------------------------------------------------------------
    cfg = load_config(main_args(argv))
    rank, world = init_distributed()
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    if cfg.rollout.prompts_per_step % world:
        raise ValueError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be divisible by the "
                         f"number of ranks ({world}).")
    run_dir = Path(cfg.train.output_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    random.seed(cfg.train.seed + rank)
    torch.manual_seed(cfg.train.seed)

    # --- model, data, reward ----------------------------------------------------------------------
    model_path = resolve_model_path(cfg.model.path, is_builder=is_main, log=log) if is_main else None
    barrier()
    model_path = model_path or resolve_model_path(cfg.model.path, is_builder=False)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_problems = load_problems(cfg.data.train)
    eval_problems = load_problems(cfg.data.eval)[: cfg.eval.problems]
    reward_fn = get_reward(cfg.reward.kind)
    prompts_per_rank = cfg.rollout.prompts_per_step // world

    # --- rollout engine and learner ---------------------------------------------------------------
    rollout = RolloutEngine(model_path, max_model_len=cfg.rollout.max_model_len, seed=cfg.train.seed + rank,
                            dtype=cfg.model.dtype, kv_cache_gib=cfg.rollout.kv_cache_gib)
    learner = Learner(model_path, zero_stage=cfg.deepspeed.zero_stage, lr=cfg.train.lr,
                      grad_clip=cfg.train.grad_clip, episodes_per_rank=prompts_per_rank * cfg.rollout.n,
                      micro_batch_size=cfg.train.micro_batch_size, dtype=cfg.model.dtype)
    logger = RunLogger(run_dir, enabled=is_main)

    def run_eval(step: int) -> dict:
        metrics = evaluate(rollout, tokenizer, eval_problems, rank, world, cfg.rollout.max_tokens,
                           cfg.eval.temperature, cfg.rollout.correction_instruction)
        logger.scalars("eval", {k: v for k, v in metrics.items() if k != "n"}, step)
        log(f"[eval] step {step}: acc_t1 {metrics['acc_t1']:.3f} acc_t2 {metrics['acc_t2']:.3f} "
            f"delta {metrics['delta']:+.3f} (i2c {metrics['delta_i2c']:.3f}, c2i {metrics['delta_c2i']:.3f}) "
            f"on {metrics['n']} problems")
        return metrics

    before = run_eval(0)
    train_stats: dict[str, float] = {}
    for step in range(cfg.train.steps):
        started = time.time()
        stage = algo.scores_stage(step, cfg.algo.stage1_steps)

        # 1. Rollout: this rank's share of the step's prompts, two turns each.
        step_rng = random.Random(cfg.train.seed * 1_000_003 + step)
        prompts = step_rng.sample(train_problems, cfg.rollout.prompts_per_step)
        prompts = prompts[rank * prompts_per_rank:(rank + 1) * prompts_per_rank]
        episodes = sample_episodes(rollout, tokenizer, prompts, n=cfg.rollout.n, max_tokens=cfg.rollout.max_tokens,
                                   temperature=cfg.rollout.temperature, instruction=cfg.rollout.correction_instruction)

        # 2. Rewards and per-turn advantages against a baseline across each prompt's samples.
        r1, r2 = reward_fn(episodes)
        ret1, ret2 = algo.turn_returns(r1, r2, stage, cfg.algo.alpha)
        estimator = algo.ADVANTAGE_ESTIMATORS[cfg.algo.advantage]
        adv1 = estimator(ret1.view(-1, cfg.rollout.n)).flatten()
        adv2 = estimator(ret2.view(-1, cfg.rollout.n)).flatten()

        # 3. Learner update, then weights back into vLLM.
        update = learner.update(collate(episodes, tokenizer.pad_token_id), adv1, adv2,
                                algo.turn_weights(stage, cfg.algo.beta1, cfg.algo.beta2), cfg.algo.kl_estimator)
        rollout.load_weights(learner.full_state_dict().items())

        # 4. Logging.
        acc1, acc2 = turn_correctness(episodes)
        train_stats = reduce_mean({
            "reward_t1": r1.mean().item(), "reward_t2": r2.mean().item(), "acc_t1": acc1.mean().item(),
            "acc_t2": acc2.mean().item(), "kl_t1": update.kl_turn1, "kl_t2": update.kl_turn2, "loss": update.loss,
            "stage": float(stage),
        })
        mismatch = reduce_max(update.logprob_mismatch)
        seconds = time.time() - started
        logger.scalars("train", train_stats, step + 1)
        logger.scalars("rollout", {"logprob_mismatch": mismatch}, step + 1)
        logger.scalars("perf", {"step_seconds": seconds}, step + 1)
        logger.samples(step + 1, episodes, r1, r2, cfg.eval.samples_logged)
        log(f"[train] step {step + 1}/{cfg.train.steps} stage {stage} reward_t1 {train_stats['reward_t1']:.3f} "
            f"reward_t2 {train_stats['reward_t2']:.3f} kl_t1 {train_stats['kl_t1']:.4f} "
            f"loss {train_stats['loss']:+.4f} mismatch {mismatch:.1e} {seconds:.1f}s")
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.train.steps:
            run_eval(step + 1)

    after = run_eval(cfg.train.steps)
    summary = {"train": {"steps": cfg.train.steps, **train_stats, "logprob_mismatch_last": mismatch if cfg.train.steps else None},
               "eval": {"before": before, "after": after}}
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log(f"[done] run directory: {run_dir}")
    logger.close()
    barrier()
    return summary


if __name__ == "__main__":  # vLLM spawns helpers; the guard keeps them from re-running training
    main()
