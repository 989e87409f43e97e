"""Pairs -> the reward model's training examples, batches and loss terms (pure functions).

Each pair (x, chosen, rejected) gives two examples of sequence MLE (arXiv 2409.00162):
    rewrite_context(x, rejected) -> chosen   (fix: rewrite the worse response into the better one)
    rewrite_context(x, chosen)   -> chosen   (keep: leave a good response as it is)
The loss is the token mean of -log p(target token) over every target token of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from engine.base.schedule import shuffled_batches


@dataclass(frozen=True)
class RewriteExample:
    context_ids: tuple[int, ...]  # the rewrite request: prompt, the response to rewrite, the instruction
    target_ids: tuple[int, ...]  # what the model learns to write: the chosen response and its end of turn
    unchanged_ids: tuple[int, ...]  # the rewrite that changes nothing: the input response and its end of turn
    kind: str  # fix (the input is the rejected response) | keep (the input is the chosen one)


@dataclass
class ExampleCounts:
    pairs: int = 0  # pairs read
    same_text: int = 0  # pairs dropped because chosen == rejected (nothing to rewrite)
    too_long: int = 0  # examples dropped because context + target exceed the model's positions
    examples: int = 0  # examples kept

    def to_json(self) -> dict:
        return asdict(self)


def rewrite_examples(pairs: Sequence, context_ids: Callable[[str, str], list[int]],
                     target_ids: Callable[[str], list[int]], max_len: int) -> tuple[list[RewriteExample], ExampleCounts]:
    """`pairs` have .prompt, .chosen, .rejected; context_ids(prompt, response) and target_ids(response) are
    the shared format (rewards/rewrite_format.py). Examples longer than max_len tokens are dropped and counted.
    Repeated pairs are kept: fix and keep examples stay one to one, and a common mistake weighs more."""
    counts, out = ExampleCounts(pairs=len(pairs)), []
    for pair in pairs:
        if pair.chosen == pair.rejected:
            counts.same_text += 1
            continue
        target = tuple(target_ids(pair.chosen))
        for kind, response in (("fix", pair.rejected), ("keep", pair.chosen)):
            context = tuple(context_ids(pair.prompt, response))
            if len(context) + len(target) > max_len:
                counts.too_long += 1
            else:
                unchanged = target if kind == "keep" else tuple(target_ids(response))
                out.append(RewriteExample(context, target, unchanged, kind))
    counts.examples = len(out)
    return out, counts


@dataclass
class ExampleBatch:
    input_ids: Tensor  # [B, T] context then target, right-padded
    attention_mask: Tensor  # [B, T]
    target_mask: Tensor  # [B, T] bool: the target tokens, the only ones the loss scores

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def slice(self, start: int, end: int) -> "ExampleBatch":
        return ExampleBatch(self.input_ids[start:end], self.attention_mask[start:end], self.target_mask[start:end])


def target_mask(context_lengths: Sequence[int], target_lengths: Sequence[int], width: int) -> Tensor:
    """[B, width] bool, True at positions context .. context + target - 1 of each row: the tokens the loss
    scores (each predicted from the one before it, so the first target token is predicted from the context)."""
    position = torch.arange(width)[None, :]
    start = torch.tensor(list(context_lengths))[:, None]
    end = start + torch.tensor(list(target_lengths))[:, None]
    return (position >= start) & (position < end)


def collate_examples(examples: Sequence[RewriteExample], pad_id: int) -> ExampleBatch:
    rows = [ex.context_ids + ex.target_ids for ex in examples]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
    mask = target_mask([len(ex.context_ids) for ex in examples], [len(ex.target_ids) for ex in examples], width)
    return ExampleBatch(input_ids, attention_mask, mask)


def nll_terms(logprobs: Tensor, total_tokens: float) -> Tensor:
    """Per-token loss terms whose sum over a batch's `total_tokens` target tokens is their mean NLL."""
    return -logprobs / total_tokens


def epoch_batches(examples: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step (engine/base/schedule.py): each epoch a seeded shuffle cut into
    batches of batch_size, a last partial batch filled from the start of the epoch's order."""
    return shuffled_batches(examples, batch_size, [seed * 1_000_003 + 7_777 * (epoch + 1) for epoch in range(epochs)])
