"""Padding-free forwards: the sequences of a micro-batch packed side by side into rows, and micro-batches
grouped by a token budget.

A padded micro-batch costs rows x longest row; most of it may be padding when a real model's turns run from a
few tokens to the length cap. `pack` lays the sequences end to end in rows as wide as the longest one
(next-fit, in the given order, so the scored tokens keep their row-major order) with position ids that
restart at 0 for each sequence. Hugging Face models read restarting position ids, given no attention mask,
as packed sequences and attend only within each one (transformers' `find_packed_sequence_indices`: a
block-diagonal causal mask for sdpa and eager; its flash-attention varlen path takes one row only, so a model
loaded with flash-attention fails the start-up check, engine.ops.scoring.check_packing). Rows stay as wide as the
longest sequence rather than one long row: on sdpa each token then attends over as many keys as padded, not
over the whole micro-batch.

`micro_batches` picks which rows go together and in which order (first-fit decreasing, so next-fit packing
in that order fills the rows as first-fit would).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PackedRows:
    input_ids: Tensor  # [R, W] the sequences end to end, then filler
    position_ids: Tensor  # [R, W] 0, 1, ... within each sequence; the filler counts from 0 as its own block
    scored: Tensor  # [R, W] bool: the scored tokens, at their packed places
    tokens: int  # real tokens (the sequences' lengths summed)

    @property
    def cells(self) -> int:
        return self.input_ids.numel()


def next_fit(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of `lengths` in rows of at most `width` tokens, in order: a new row when the next one does not fit."""
    rows: list[list[int]] = []
    used = width
    for i, n in enumerate(lengths):
        if not rows or used + n > width:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def first_fit_order(lengths: Sequence[int]) -> list[int]:
    """An order of the indices for which next-fit at the longest width builds first-fit-decreasing's rows:
    each row's members, row after row (a row's first member did not fit in the rows before when first-fit
    placed it, and those rows only filled up after)."""
    width = max(lengths, default=0)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(width - lengths[i])
    return [i for row in rows for i in row]


def pack(input_ids: Tensor, attention_mask: Tensor, scored: Tensor) -> PackedRows:
    """The rows' attended tokens (each row's mask one contiguous run) packed by next-fit in row order into rows
    as wide as the longest. A scored token must not open its sequence: its predecessor is in its own row."""
    keep = attention_mask.bool()
    if (scored.bool() & ~keep).any():
        raise ValueError("a scored token outside the attention mask cannot be packed")
    if (keep[:, 0].long() + (keep[:, 1:] & ~keep[:, :-1]).sum(1) > 1).any():  # runs of attended tokens per row
        raise ValueError("packing needs each row's attended tokens in one contiguous run")
    lengths = keep.sum(1).tolist()
    width = max(lengths, default=0)
    rows = next_fit(lengths, max(width, 1))
    row_of, start_of, used = [0] * len(lengths), [0] * len(lengths), [0] * len(rows)
    for r, members in enumerate(rows):
        for i in members:
            row_of[i], start_of[i] = r, used[r]
            used[r] += lengths[i]
    device = input_ids.device
    position = keep.long().cumsum(1) - 1  # 0 at each row's first attended token
    dest = (torch.tensor(row_of, device=device)[:, None] * width + torch.tensor(start_of, device=device)[:, None]
            + position)[keep]
    cells = len(rows) * width
    # filler after a row's last sequence: its own block of positions 0, 1, ... (later tokens never reach earlier
    # ones under a causal mask, so it changes nothing but the row's shape)
    filler = torch.arange(width, device=device)[None, :] - torch.tensor(used, device=device)[:, None]
    positions = filler.flatten().clamp(min=0)
    positions[dest] = position[keep]
    ids = torch.zeros(cells, dtype=input_ids.dtype, device=device)
    ids[dest] = input_ids[keep]
    packed_scored = torch.zeros(cells, dtype=torch.bool, device=device)
    packed_scored[dest] = scored.bool()[keep]
    starts = torch.zeros(cells, dtype=torch.bool, device=device)
    starts[dest[position[keep] == 0]] = True
    if (packed_scored & starts).any():
        raise ValueError("a scored token opens its sequence: nothing before it predicts it")
    shape = (len(rows), width)
    return PackedRows(ids.view(shape), positions.view(shape), packed_scored.view(shape), tokens=int(keep.sum()))


def forward_slots(lengths: Sequence[int], packing: bool, width: int) -> int:
    """Token slots of one micro-batch's forward: its packed rows x the longest sequence, or rows x `width`."""
    if not packing:
        return len(lengths) * width
    longest = max(lengths, default=0)
    return len(next_fit(lengths, max(longest, 1))) * longest


def slots_with(group: list[int], extra: int, lengths: Sequence[int], packing: bool) -> int:
    """forward_slots of a micro-batch (longest first) with one more row."""
    members = [lengths[i] for i in group + [extra]]
    if packing:
        members = [members[j] for j in first_fit_order(members)]
    return forward_slots(members, packing, max(members))


def padding_share(cells: int, tokens: int) -> float:
    """The fraction of a forward's token slots that hold no token (perf/pad_frac)."""
    return 1.0 - tokens / cells if cells else 0.0


def micro_batches(lengths: Sequence[int], rows: int, max_tokens: int | None, packing: bool) -> list[list[int]]:
    """The batch's row indices per micro-batch, in the order each is scored.

    max_tokens unset: `rows` rows at a time, in batch order. Set: rows longest first, each micro-batch filled while
    its forward holds at most max_tokens token slots (packed: its first-fit rows x its longest row; padded: its
    rows x its longest row); a row longer than the budget goes alone. With packing each micro-batch is ordered for
    first-fit rows."""
    if max_tokens is None:
        groups = [list(range(start, min(start + rows, len(lengths)))) for start in range(0, len(lengths), rows)]
    else:
        groups = []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            # longest first: a micro-batch's width is its first row's length
            if not groups or slots_with(groups[-1], i, lengths, packing) > max_tokens:
                groups.append([])
            groups[-1].append(i)
    if packing:
        groups = [[group[j] for j in first_fit_order([lengths[i] for i in group])] for group in groups]
    return groups
