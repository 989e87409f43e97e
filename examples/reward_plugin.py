"""An example reward plugin: a label-free format reward, registered the way the built-in rewards are.

    python engine/train.py configs/default.yaml reward.plugins=[examples/reward_plugin.py] reward.kind=concise_answer

`concise_answer` gives a turn 1 when it states a final answer ("Final Answer: N", \\boxed{N} or "#### N"),
less 0.01 for every 10 characters past the first 100 of the response, and 0 when it states none. It reads no
gold label. A reward gets the step's episodes (each with its turns' text and token ids) and returns one
tensor per turn, of one value per episode (or of one value per sampled token, for token-level rewards).
"""

from __future__ import annotations

import torch

from rewards.answer import extract_answer
from rewards import RewardInputs, register

FREE_CHARACTERS, PENALTY_PER_10 = 100, 0.01


def concise_answer_score(text: str) -> float:
    if extract_answer(text) is None:
        return 0.0
    return 1.0 - PENALTY_PER_10 * (max(0, len(text) - FREE_CHARACTERS) // 10)


# needs_answer=False: the reward decides itself what a turn without an answer earns (the engine's default
# gate would give it the reward's lowest value, from bounds=, and would also try RLSF's answer probe on it).
@register("concise_answer", needs_answer=False)
def concise_answer(inputs: RewardInputs) -> list[torch.Tensor]:
    turns = len(inputs.episodes[0].turns)
    return [torch.tensor([concise_answer_score(e.turns[k].text) for e in inputs.episodes]) for k in range(turns)]
