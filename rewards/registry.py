"""A registry of reward functions behind one interface.

A reward takes `RewardInputs` (the step's episodes, plus the policy's per-token statistics when it
declares `needs_token_stats`) and returns per-turn rewards: a sequence of K float tensors (one per turn of
the episodes, K = rollout.turns), each of shape [episodes]. The engine computes what the chosen reward declares, once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.errors import UserError
from rewards.answer import answers_match, extract_answer
from rewards.answer_span import locate_answer


@dataclass
class RewardInputs:
    episodes: Sequence[Any]  # rollout.episodes.Episode, in the order of the collated batch
    tokenizer: Any
    options: Any  # the `reward` config section
    token_stats: Any = None  # engine.token_stats.TokenStats over the collated batch


@dataclass(frozen=True)
class RewardSpec:
    fn: Callable[[RewardInputs], Sequence[Tensor]]
    needs_token_stats: bool  # per-token distribution statistics from the policy's scoring pass
    needs_gold: bool  # a gold `answer` on every training problem
    # At start-up, (reward options, the policy's tokenizer) -> None, or a UserError naming the bad key
    check: Callable[[Any, Any], None] | None = None
    # A turn without a locatable final answer earns 0 (so a self-reward cannot be had without answering);
    # False for a reward of the whole response that reads no answer (a length or format reward)
    needs_answer: bool = True


REWARDS: dict[str, RewardSpec] = {}


def register(name: str, needs_token_stats: bool = False, needs_gold: bool = False, check=None,
             needs_answer: bool = True):
    def add(fn):
        known = REWARDS.get(name)
        if known is not None and (known.fn.__module__, known.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"a reward named {name!r} is already registered (by {known.fn.__module__}."
                             f"{known.fn.__qualname__}); give yours another name")
        REWARDS[name] = RewardSpec(fn, needs_token_stats, needs_gold, check, needs_answer)
        return fn
    return add


def get_reward(kind: str) -> RewardSpec:
    if kind not in REWARDS:
        raise UserError(f"reward.kind={kind!r} is not registered; known: {sorted(REWARDS)}. Hint: a reward of "
                        f"your own registers in a plugin: reward.plugins=[my_rewards.py] (examples/reward_plugin.py).")
    return REWARDS[kind]


def reward_needs(kind: str, options) -> RewardSpec:
    """The spec of `kind`; for `mix`, its needs are those of the rewards it weighs (checked here)."""
    spec = get_reward(kind)
    if kind != "mix":
        return spec
    if not options.weights:
        raise UserError("reward.kind=mix needs reward.weights, e.g. reward.weights.confidence=0.5 "
                        "reward.weights.majority=0.5.")
    parts = [get_reward(k) for k in options.weights if k != "mix"]
    if "mix" in options.weights:
        raise UserError("reward.weights cannot contain 'mix' itself.")
    checks = [p.check for p in parts if p.check is not None]
    return RewardSpec(spec.fn, any(p.needs_token_stats for p in parts), any(p.needs_gold for p in parts),
                      (lambda options, tokenizer: [c(options, tokenizer) for c in checks]) if checks else None,
                      any(p.needs_answer for p in parts))  # one gate for the sum: any part reading answers


def turn_correctness(episodes: Sequence) -> list[Tensor]:
    """Per turn, 1.0 where the turn's final answer matches the gold answer."""
    def correct(text: str, gold: str | None) -> float:
        return float(answers_match(extract_answer(text), gold))
    return [torch.tensor([correct(e.turns[k].text, e.problem.answer) for e in episodes])
            for k in range(len(episodes[0].turns))]


def turn_has_answer(episodes: Sequence, tokenizer) -> list[Tensor]:
    """Per turn, 1.0 where the turn's answer can be located: by its format, or by RLSF's probe."""
    return [torch.tensor([float(locate_answer(tokenizer, e.turns[k]) is not None) for e in episodes])
            for k in range(len(episodes[0].turns))]


@register("gold", needs_gold=True)
def gold_reward(inputs: RewardInputs) -> list[Tensor]:
    """Gold answer match: 1 if the turn's final answer equals the data set's answer, else 0."""
    return turn_correctness(inputs.episodes)
