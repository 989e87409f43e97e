"""Pair selection rules. A pair is (chosen index, rejected index, weight) into the caller's list of
responses; the caller maps indices back to episodes and turns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class Pair(NamedTuple):
    chosen: int
    rejected: int
    weight: float


def confidence_pairs(confidence: Sequence[float], threshold: float) -> list[Pair]:
    """RLSF's rule over one prompt's traces: i is preferred to j when trace i is confident enough
    (c_i >= threshold) and j is less confident (c_j < c_i); the pair weighs exp(c_i - c_j)."""
    return [Pair(i, j, math.exp(ci - cj)) for i, ci in enumerate(confidence) if ci >= threshold
            for j, cj in enumerate(confidence) if cj < ci]


def refinement_pairs(turn_rewards: Sequence[float]) -> list[Pair]:
    """EVOLVE's refinement pairs along one chain of turns (index k = turn k+1): a turn is preferred to the
    turn it refined when its reward is higher, and the other way round when lower; equal rewards give no pair."""
    pairs = []
    for k in range(1, len(turn_rewards)):
        before, after = turn_rewards[k - 1], turn_rewards[k]
        if after != before:
            pairs.append(Pair(k, k - 1, 1.0) if after > before else Pair(k - 1, k, 1.0))
    return pairs


def ranked_pairs(rewards: Sequence[float]) -> list[Pair]:
    """Direct-answer pairs between samples of one prompt: every i preferred to every j with a lower reward."""
    return [Pair(i, j, 1.0) for i, ri in enumerate(rewards) for j, rj in enumerate(rewards) if ri > rj]
