"""Held-out evaluation: one two-turn episode per problem, scored against gold answers."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.distributed import gather_objects
from engine.metrics import correction_metrics
from rewards import turn_correctness
from rollout.data import Problem
from rollout.episodes import sample_episodes
from rollout.vllm_engine import RolloutEngine


def evaluate(engine: RolloutEngine, tokenizer, problems: Sequence[Problem], rank: int, world: int,
             max_tokens: int, temperature: float, instruction: str) -> dict[str, float]:
    """Each rank answers its shard of `problems`; the metrics cover all of them."""
    shard = list(problems[rank::world])
    episodes = sample_episodes(engine, tokenizer, shard, n=1, max_tokens=max_tokens, temperature=temperature,
                               instruction=instruction)
    c1, c2 = turn_correctness(episodes)
    gathered = gather_objects((c1.tolist(), c2.tolist()))
    all_c1 = torch.tensor([x for part, _ in gathered for x in part])
    all_c2 = torch.tensor([x for _, part in gathered for x in part])
    return correction_metrics(all_c1, all_c2)
