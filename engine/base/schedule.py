"""Which items (examples, preference pairs) each optimizer step trains on: the one batch schedule of the
reward-model trainer (engine/reward_model/examples.py, epoch_batches) and the DPO rounds
(engine/objectives/dpo_rounds.py, pair_schedule), each seeding its epochs its own way."""

from __future__ import annotations

import random
from collections.abc import Sequence


def shuffled_batches(items: int, batch_size: int, epoch_seeds: Sequence[int]) -> list[list[int]]:
    """Item indices of every step: per epoch (one seed each) a seeded shuffle cut into batches of batch_size.
    A last partial batch is filled from the start of the epoch's order, so every step has batch_size items
    (the learner's gradient-accumulation cycle is fixed); no items, no steps."""
    steps = []
    for seed in epoch_seeds:
        order = list(range(items))
        random.Random(seed).shuffle(order)
        for start in range(0, items, batch_size):
            batch = order[start:start + batch_size]
            while len(batch) < batch_size:  # with fewer items than batch_size, the order repeats
                batch += order[:batch_size - len(batch)]
            steps.append(batch)
    return steps
