"""Training objectives (`algo.kind`). Each is a loop that trains a built `Run` (engine/loop/run.py) and returns
its summary, registered here with the number of sequences one of its updates trains on; a new objective is a
module that registers itself, never a branch in the loop.

- `pg`: SCoRe's policy gradient, step by step (engine/train.py, `train`).
- `dpo`: preference rounds, DPO on pairs built from the policy's own rollouts (dpo_rounds.py; the loss in
  dpo.py, the learner update in dpo_step.py, the pair builders in pairs/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    loop: Callable  # (Run) -> summary dict
    # sequences one update trains on, all ranks (cfg -> int): the learner sizes its micro-batches from it
    rows_per_update: Callable


OBJECTIVES: dict[str, Objective] = {}


def register(kind: str, rows_per_update: Callable) -> Callable:
    """Decorator: the training loop of algo.kind=`kind`."""
    def add(loop: Callable) -> Callable:
        OBJECTIVES[kind] = Objective(loop, rows_per_update)
        return loop
    return add
