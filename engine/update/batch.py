"""Episodes -> padded tensors for the learner: token ids, attention mask, per-turn masks and the
log-probs vLLM reported for the sampled tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from rollout.episodes import Episode


@dataclass
class TrainBatch:
    input_ids: Tensor  # [B, T], right-padded
    attention_mask: Tensor  # [B, T]
    turn_masks: Tensor  # [B, K, T] float, 1 on turn k's sampled tokens
    rollout_logprobs: Tensor  # [B, T] vLLM's log-prob of each sampled token, 0 elsewhere

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def turns(self) -> int:
        return self.turn_masks.shape[1]

    def turn_mask(self, turn: int) -> Tensor:
        """[B, T] mask of turn `turn`'s (0-based) sampled tokens."""
        return self.turn_masks[:, turn]

    @property
    def response_mask(self) -> Tensor:
        """[B, T] mask of every sampled token, all turns."""
        return sum(self.turn_mask(k) for k in range(self.turns))

    def slice(self, start: int, end: int) -> "TrainBatch":
        return TrainBatch(**{f.name: getattr(self, f.name)[start:end] for f in fields(self)})

    def select(self, rows: Tensor) -> "TrainBatch":
        """The given rows, in that order, cut to the longest one's width (right padding only)."""
        width = max(int(self.attention_mask[rows].sum(1).max()), 1) if len(rows) else 1
        return TrainBatch(**{f.name: getattr(self, f.name)[rows][..., :width] for f in fields(self)})

    @property
    def lengths(self) -> list[int]:
        return self.attention_mask.sum(1).tolist()

    def to(self, device) -> "TrainBatch":
        return TrainBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate(episodes: Sequence[Episode], pad_id: int) -> TrainBatch:
    width = max(len(e.input_ids) for e in episodes)
    shape = (len(episodes), width)
    batch = TrainBatch(
        input_ids=torch.full(shape, pad_id, dtype=torch.long),
        attention_mask=torch.zeros(shape, dtype=torch.long),
        turn_masks=torch.zeros(len(episodes), len(episodes[0].turns), width),
        rollout_logprobs=torch.zeros(shape),
    )
    for row, ep in enumerate(episodes):
        ids = ep.input_ids
        batch.input_ids[row, : len(ids)] = torch.tensor(ids)
        batch.attention_mask[row, : len(ids)] = 1
        for turn, completion in enumerate(ep.turns):
            start, end = ep.span(turn)
            batch.turn_masks[row, turn, start:end] = 1.0
            batch.rollout_logprobs[row, start:end] = torch.tensor(completion.logprobs)
    return batch
