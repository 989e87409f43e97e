"""A registry of reward functions. Each takes a batch of episodes and returns per-turn rewards
(r1, r2) as float tensors of shape [episodes]."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from engine.errors import UserError
from rewards.answer import answers_match, extract_answer

RewardFn = Callable[[Sequence], tuple[Tensor, Tensor]]
REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def add(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn
    return add


def get_reward(kind: str) -> RewardFn:
    if kind not in REWARDS:
        raise UserError(f"reward.kind={kind!r} is not registered; known: {sorted(REWARDS)}.")
    return REWARDS[kind]


def turn_correctness(episodes: Sequence) -> tuple[Tensor, Tensor]:
    """1.0 where the turn's final answer matches the gold answer, per turn."""
    def correct(text: str, gold: str | None) -> float:
        return float(answers_match(extract_answer(text), gold))
    c1 = torch.tensor([correct(e.turn1.text, e.problem.answer) for e in episodes])
    c2 = torch.tensor([correct(e.turn2.text, e.problem.answer) for e in episodes])
    return c1, c2


@register("gold")
def gold_reward(episodes: Sequence) -> tuple[Tensor, Tensor]:
    """Gold answer match: 1 if the turn's "Final Answer:" equals the data set's answer, else 0."""
    return turn_correctness(episodes)
