"""Evaluation during a run: the held-out metrics of sampled episodes (also `python -m engine.evaluate`'s),
the evaluation logged at a step, and the guard's accuracy on its own split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from engine.loop.metrics import calibration_metrics, correction_metrics, edit_distance_ratio, turn_shape_metrics
from engine.runtime.distributed import gather_objects
from engine.update.batch import collate
from rewards import RewardInputs, turn_correctness
from rewards.self_rewards import answer_probability

if TYPE_CHECKING:  # annotations only: `python -m engine.evaluate` need not import the run's set-up
    from engine.loop.run import Run


def eval_metrics(episodes: Sequence, tokenizer) -> dict[str, float]:
    """Metrics over every rank's evaluation episodes (each rank passes its own, maybe none) of K turns. The
    confidence that ECE is measured on is p(answer tokens) from the log-probs vLLM returned with the sampled
    tokens (at eval.temperature, the distribution they were drawn from): no forward pass of the learner, which on
    a real model cost more than sampling both turns (py-spy: 55% of a 48-problem evaluation of SmolLM2-135M)."""
    columns, turns = [], len(episodes[0].turns) if episodes else 0
    if episodes:
        correct = turn_correctness(episodes)
        lengths = [torch.tensor([len(e.turns[k].token_ids) for e in episodes]) for k in range(turns)]
        edits = [torch.tensor([edit_distance_ratio(e.turns[k - 1].token_ids, e.turns[k].token_ids)
                               for e in episodes]) for k in range(1, turns)]
        sampled = collate(episodes, tokenizer.pad_token_id).rollout_logprobs
        confidence = answer_probability(RewardInputs(episodes, tokenizer, None), sampled)
        columns = [*correct, *lengths, *edits, *confidence]
    parts = [part for part in gather_objects((turns, [c.tolist() for c in columns]) if episodes else None) if part]
    turns = parts[0][0]
    merged = [torch.tensor([x for _, part in parts for x in part[i]]) for i in range(len(parts[0][1]))]
    correct, lengths, edits, confidence = (merged[:turns], merged[turns:2 * turns], merged[2 * turns:3 * turns - 1],
                                           merged[3 * turns - 1:])
    metrics = correction_metrics(correct)
    metrics.update(turn_shape_metrics(lengths, edits))
    metrics.update(calibration_metrics(confidence, correct))
    return metrics


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
