"""`engine/train.py` with reward.kind=faulty, a reward that misbehaves on purpose: on the first step it
returns NaN for episodes 0 and 1; on the second it raises ZeroDivisionError for the prompt of episode 5
(whichever episode carries it). Later steps get 1.0 everywhere, and so does every step once the
environment sets FAULTY_REWARD_FIXED=1 (the user has fixed the reward).

    python tests/scripts/train_with_faulty_reward.py key=value ...
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine import train  # noqa: E402
from rewards.registry import register  # noqa: E402

seen = {"batches": 0, "bad_prompt": None}


@register("faulty", bounds=(0.0, 1.0))
def faulty_reward(inputs):
    episodes = inputs.episodes
    if os.environ.get("FAULTY_REWARD_FIXED") == "1":
        return torch.ones(len(episodes)), torch.ones(len(episodes))
    if len(episodes) > 1:  # a step's batch (single episodes come from the error report's search)
        seen["batches"] += 1
        if seen["batches"] == 2:
            seen["bad_prompt"] = episodes[5].problem.prompt
    ones = torch.ones(len(episodes))
    if seen["batches"] == 1:
        nan = ones.clone()
        nan[:2] = float("nan")
        return ones, nan
    if seen["batches"] == 2 and any(e.problem.prompt == seen["bad_prompt"] for e in episodes):
        empty = [e for e in episodes if not e.problem.prompt]
        return ones, ones * (1 / len(empty))  # ZeroDivisionError
    return ones, ones


if __name__ == "__main__":
    train.cli()
