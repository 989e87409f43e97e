"""Held-out evaluation: one two-turn episode per problem, scored against gold answers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.batch import collate
from engine.distributed import gather_objects
from engine.metrics import calibration_metrics, correction_metrics
from rewards import RewardInputs, turn_correctness
from rewards.self_rewards import answer_probability
from rollout.data import Problem
from rollout.episodes import sample_episodes
from rollout.vllm_engine import RolloutEngine


def evaluate(engine: RolloutEngine, tokenizer, problems: Sequence[Problem], rank: int, world: int,
             max_tokens: int, temperature: float, instruction: str, score=None) -> dict[str, float]:
    """Each rank answers its shard of `problems`; the metrics cover all of them. With `score` (the
    learner's scoring pass) calibration is measured too: ECE of p(answer) against gold correctness."""
    shard = list(problems[rank::world])
    episodes = sample_episodes(engine, tokenizer, shard, n=1, max_tokens=max_tokens, temperature=temperature,
                               instruction=instruction)
    columns = list(turn_correctness(episodes))
    if score is not None:
        stats = score(collate(episodes, tokenizer.pad_token_id))
        columns += list(answer_probability(RewardInputs(episodes, tokenizer, None, stats)))
    gathered = gather_objects([c.tolist() for c in columns])
    merged = [torch.tensor([x for part in gathered for x in part[i]]) for i in range(len(columns))]
    metrics = correction_metrics(merged[0], merged[1])
    if score is not None:
        metrics.update(calibration_metrics(merged[2], merged[3], merged[0], merged[1]))
    return metrics
