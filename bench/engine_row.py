"""`engine/train.py` with the benchmark's reward registered: the reward TRL's row gets, on the same text.

    python -m bench.engine_row CONFIG key=value ...        (what bench/peers.py launches for this engine's rows)

A random-weight model never writes a locatable answer, so no built-in reward would give its updates a
gradient; this one, like TRL's row, scores the whole response (len(text) % 7) and reads no answer. It is
registered through the same decorator as the built-in rewards, then training runs exactly as
`python engine/train.py` would.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from rewards.registry import RewardInputs, register  # noqa: E402

REWARD = "bench_length"


def length_mod_7(text: str) -> float:
    """TRL's row scores each completion with this too (bench/peers.py trl_row)."""
    return float(len(text) % 7)


@register(REWARD, needs_answer=False)
def bench_length_reward(inputs: RewardInputs) -> list[torch.Tensor]:
    return [torch.tensor([length_mod_7(e.turns[k].text) for e in inputs.episodes])
            for k in range(len(inputs.episodes[0].turns))]


if __name__ == "__main__":  # vLLM may spawn helpers that import this module: they must not train
    from engine.train import cli

    cli(sys.argv[1:])
