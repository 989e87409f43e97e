"""A registry of reward functions behind one interface.

A reward takes `RewardInputs` (the step's episodes, plus the policy's per-token statistics when it
declares `needs_token_stats`) and returns per-turn rewards: a sequence of K float tensors (one per turn of
the episodes, K = rollout.turns), each of shape [episodes]. The engine computes what the chosen reward declares, once per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.base.errors import UserError
from engine.tasks.answer import answers_match, extract_answer
from engine.tasks.answer_span import locate_answer


@dataclass
class RewardInputs:
    episodes: Sequence[Any]  # rollout.episodes.Episode, in the order of the collated batch
    tokenizer: Any
    options: Any  # the `reward` config section
    token_stats: Any = None  # engine.ops.token_stats.TokenStats over the collated batch


@dataclass(frozen=True)
class RewardSpec:
    fn: Callable[[RewardInputs], Sequence[Tensor]]
    needs_token_stats: bool  # per-token distribution statistics from the policy's scoring pass
    needs_gold: bool  # a gold `answer` on every training problem
    # At start-up, (reward options, the policy's tokenizer) -> None, or a UserError naming the bad key
    check: Callable[[Any, Any], None] | None = None
    # A turn without a locatable final answer earns the reward's lowest value (so no reward is had by not
    # answering); False for a reward of the whole response that reads no answer (a length or format reward)
    needs_answer: bool = True
    # (reward options, tokenizer) -> (lowest, highest) value the reward can give a turn (or a token)
    bounds: Callable[[Any, Any], Bounds] = lambda options, tokenizer: UNBOUNDED
    # reward options -> the `reward.*` keys it reads besides ALWAYS_READ; None: not declared (a plugin's)
    reads: Callable[[Any], Sequence[str]] | None = None


Bounds = tuple[float, float]
UNBOUNDED = (-math.inf, math.inf)
# reward.* keys every run reads, whatever the reward: the rest are each reward's own (RewardSpec.reads)
ALWAYS_READ = ("kind", "plugins", "nonfinite", "probe_prompt", "probe_tokens", "probe_min_tokens")
REWARDS: dict[str, RewardSpec] = {}


def register(name: str, needs_token_stats: bool = False, needs_gold: bool = False, check=None,
             needs_answer: bool = True, bounds: Bounds | Callable[[Any, Any], Bounds] | None = None,
             reads: Sequence[str] | Callable[[Any], Sequence[str]] | None = None):
    """`bounds`: the reward's range, a (lowest, highest) pair or a function of (reward options, tokenizer)
    giving one; required when the reward reads answers, whose unanswered turns then earn the lowest.
    `reads`: the `reward.*` keys it reads (or a function of the options giving them); the others are said
    at start-up to have no effect when set, and left out of the run's HParams."""
    def add(fn):
        known = REWARDS.get(name)
        if known is not None and (known.fn.__module__, known.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"a reward named {name!r} is already registered (by {known.fn.__module__}."
                             f"{known.fn.__qualname__}); give yours another name")
        if needs_answer and bounds is None:
            raise ValueError(f"reward {name!r} reads answers (needs_answer=True), so it must declare its range: "
                             f"a turn without an answer earns its lowest value. Hint: @register({name!r}, "
                             f"bounds=(lowest, highest)), e.g. bounds=(0.0, 1.0), or needs_answer=False")
        spec_bounds = bounds if callable(bounds) else (lambda options, tokenizer: tuple(bounds or UNBOUNDED))
        spec_reads = reads if callable(reads) or reads is None else (lambda options: tuple(reads))
        REWARDS[name] = RewardSpec(fn, needs_token_stats, needs_gold, check, needs_answer, spec_bounds, spec_reads)
        return fn
    return add


def unanswered_lowest(spec: RewardSpec, kind: str, options, tokenizer, rewards: Sequence[Tensor | None],
                      has_answer: Sequence[Tensor]) -> list[Tensor]:
    """Per turn, the rewards with each turn that has no locatable answer set to the reward's lowest value (not
    0: for neg_entropy or a seq2seq token reward 0 is at or near the top); unchanged for a reward that reads
    no answer. A per-token reward [B, T] gets the lowest on every token of such a turn (None stays None)."""
    if not spec.needs_answer:
        return list(rewards)
    lowest = lowest_reward(spec, kind, options, tokenizer)
    return [r if r is None else torch.where(has.bool().view(-1, *[1] * (r.dim() - 1)), r, torch.full_like(r, lowest))
            for r, has in zip(rewards, has_answer)]


def lowest_reward(spec: RewardSpec, kind: str, options, tokenizer) -> float:
    """The lowest value of the reward, checked finite at start-up (an unanswered turn earns it)."""
    lowest = float(spec.bounds(options, tokenizer)[0])
    if spec.needs_answer and not math.isfinite(lowest):
        raise UserError(f"reward.kind={kind!r} reads answers but its lowest value is {lowest}: a turn without an "
                        f"answer must earn a finite lowest reward. Hint: register its rewards with finite bounds=("
                        f"lowest, highest) (a reward inside reward.weights too).")
    return lowest


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
                      any(p.needs_answer for p in parts), spec.bounds,  # one gate for the sum: any part reading answers
                      None if any(p.reads is None for p in parts) else
                      (lambda options: ("weights", *(key for p in parts for key in p.reads(options)))))


def unread_settings(spec: RewardSpec, options) -> list[str]:
    """The `reward.*` keys the chosen reward does not read: none known for a reward that does not declare
    what it reads (a plugin's)."""
    if spec.reads is None:
        return []
    read = {*ALWAYS_READ, *spec.reads(options)}
    return [key for key in options if key not in read]


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


@register("gold", needs_gold=True, bounds=(0.0, 1.0), reads=())
def gold_reward(inputs: RewardInputs) -> list[Tensor]:
    """Gold answer match: 1 if the turn's final answer equals the data set's answer, else 0."""
    return turn_correctness(inputs.episodes)
