"""Training objectives (`algo.kind`). Each is a loop that trains a built `Run` (engine/train.py) and returns
its summary; a new objective is a module and one line in LOOPS.

- `pg`: SCoRe's policy gradient, step by step (engine/train.py, `train`).
- `dpo`: preference rounds, DPO on pairs built from the policy's own rollouts (dpo_rounds.py; the loss in
  dpo.py, the learner update in dpo_step.py, the pair builders in pairs/).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

LOOPS = {"pg": "engine.train:train", "dpo": "engine.objectives.dpo_rounds:train_rounds"}

# Sequences one update trains on, all ranks: the learner sizes its micro-batches and accumulation from it.
ROWS_PER_UPDATE: dict[str, Callable] = {
    "pg": lambda cfg: cfg.rollout.prompts_per_step * cfg.rollout.n,
    "dpo": lambda cfg: 2 * cfg.dpo.batch_pairs,  # each pair: its chosen and its rejected response
}


def training_loop(kind: str) -> Callable:
    module, name = LOOPS[kind].split(":")
    return getattr(importlib.import_module(module), name)
