"""Calling a reward function safely: an exception names the reward, where it raised and the episode
that triggers it; a NaN or infinite reward is an error or, with reward.nonfinite=skip, a counted skip."""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Callable

import torch
from torch import Tensor

from engine.base.errors import UserError
from rewards.registry import RewardInputs


class RewardError(UserError):
    """A reward function failed or returned something unusable; the message names the reward and episode."""


def checked_rewards(kind: str, fn: Callable, inputs: RewardInputs, step: int,
                    nonfinite: str) -> tuple[list[Tensor], Tensor]:
    """(rewards, skipped): per turn, float rewards per episode [episodes] or per sampled token [episodes,
    longest response] (see _checked_turn), and a bool mask of episodes whose reward is not finite (all False
    unless nonfinite='skip'). `step` is 1-based, as in the progress lines."""
    try:
        rewards = fn(inputs)
    except RewardError:  # a reward that names its own problem (e.g. seq2seq's no-room check): passed on as it is
        raise
    except Exception as err:
        raise RewardError(_raised_message(kind, fn, inputs, step, err)) from err
    n, turns = len(inputs.episodes), len(inputs.episodes[0].turns)
    if not isinstance(rewards, (list, tuple)) or len(rewards) != turns:
        got = f"{len(rewards)} values" if isinstance(rewards, (list, tuple)) else type(rewards).__name__
        raise RewardError(f"reward '{kind}' returned {got} at step {step}; expected one tensor per turn "
                          f"(rollout.turns={turns}).")
    rewards = [_checked_turn(kind, r, turn, [len(e.turns[turn].token_ids) for e in inputs.episodes], step)
               for turn, r in enumerate(rewards)]
    skipped = ~torch.stack([torch.isfinite(r) if r.dim() == 1 else torch.isfinite(r).all(dim=-1)
                            for r in rewards]).all(dim=0)
    if skipped.any() and nonfinite != "skip":
        i = int(skipped.nonzero()[0])
        values = ", ".join(f"turn {k}: {r[i].tolist()}" for k, r in enumerate(rewards, 1))
        raise RewardError(
            f"reward '{kind}' returned a non-finite reward ({values}) for "
            f"{describe_episode(inputs.episodes[i], i, step)}; {int(skipped.sum())} of {n} episodes this step. "
            f"Hint: reward.nonfinite=skip leaves such episodes out of the policy gradient and counts them "
            f"(train/skipped_episodes); the same command then resumes from the last checkpoint.")
    return rewards, skipped


def _checked_turn(kind: str, r, turn: int, lengths: list[int], step: int) -> Tensor:
    """A turn's rewards: [episodes] (one per episode) or [episodes, L >= its longest response] (one per sampled
    token; columns past a response's end are ignored), returned as [episodes] or [episodes, longest], float,
    0 past each response's end."""
    n, longest = len(lengths), max(lengths)
    per_token = isinstance(r, Tensor) and r.dim() == 2 and r.shape[0] == n and r.shape[1] >= longest
    if not isinstance(r, Tensor) or not (tuple(r.shape) == (n,) or per_token):
        got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
        raise RewardError(f"reward '{kind}' returned {got} as its turn-{turn + 1} rewards at step {step}; expected a "
                          f"tensor of shape ({n},), one value per episode, or ({n}, L) with L >= {longest}, one value "
                          f"per sampled token of the turn.")
    if not per_token:
        return r.float()
    within = torch.arange(longest).unsqueeze(0) < torch.tensor(lengths).unsqueeze(-1)
    return torch.where(within, r[:, :longest].float(), torch.zeros(()))


def describe_episode(episode, index: int, step: int) -> str:
    line = f", data line {episode.problem.line}" if episode.problem.line is not None else ""
    turns = "; ".join(f"turn {k} {_short(t.text)!r}" for k, t in enumerate(episode.turns, 1))
    return f"episode {index} of step {step} (prompt {_short(episode.problem.prompt)!r}{line}; {turns})"


def _raised_message(kind: str, fn: Callable, inputs: RewardInputs, step: int, err: Exception) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    # The reward's own line, not the library frame the error came out of.
    own = [f for f in frames if f.filename == getattr(getattr(fn, "__code__", None), "co_filename", None)]
    frame = (own or frames)[-1]
    where = f"{os.path.relpath(frame.filename)}:{frame.lineno} in {frame.name}"
    culprit = _failing_episode(fn, inputs, err)
    episode = (describe_episode(inputs.episodes[culprit], culprit, step) if culprit is not None
               else f"the {len(inputs.episodes)} episodes of step {step} (no single episode fails alone)")
    return (f"reward '{kind}' raised {type(err).__name__}: {err} (at {where}) on {episode}. Hint: fix the reward "
            f"function; the same command then resumes from the last checkpoint.")


def _failing_episode(fn: Callable, inputs: RewardInputs, err: Exception) -> int | None:
    """The first episode that, scored alone, raises the same error."""
    for i in range(len(inputs.episodes)):
        try:
            fn(_one_episode(inputs, i))
        except Exception as again:
            if type(again) is type(err) and str(again) == str(err):
                return i
    return None


def _one_episode(inputs: RewardInputs, i: int) -> RewardInputs:
    stats = inputs.token_stats
    if stats is not None:  # per-token statistics are rows of the collated batch, in episode order
        stats = dataclasses.replace(stats, **{f.name: getattr(stats, f.name)[i:i + 1] for f in dataclasses.fields(stats)})
    return dataclasses.replace(inputs, episodes=[inputs.episodes[i]], token_stats=stats)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
