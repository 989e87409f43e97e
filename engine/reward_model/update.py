"""One optimizer step of the reward model's sequence MLE on the learner's DeepSpeed engine, through the
fused log-prob head (the loss is a sum of per-token terms, so no [tokens x vocab] logits are built), and
the no-gradient NLL of held-out examples."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.ops.scoring import grid
from engine.reward_model.examples import ExampleBatch, nll_terms
from engine.runtime.distributed import all_ranks_sum, world_size


def rewrite_update(learner, batch: ExampleBatch) -> dict[str, float]:
    """One step on this rank's examples, in the learner's micro-batches (one accumulation cycle). The loss
    is the token-mean NLL of the target tokens of every rank's examples."""
    learner.engine.train()
    batch = ExampleBatch(*(t.to(learner.device) for t in (batch.input_ids, batch.attention_mask, batch.target_mask)))
    # Every rank divides by the global token count; DeepSpeed averages gradients over ranks, hence the scale.
    (total_tokens,) = all_ranks_sum([float(batch.target_mask.sum())])
    scale = world_size()
    loss_sum, grad_norm = 0.0, None
    for start in range(0, len(batch), learner.micro_batch):
        mb = batch.slice(start, start + learner.micro_batch)
        # explicit, as in Learner.update: the engine's flag stays as the last loop on it left it
        learner.engine.set_gradient_accumulation_boundary(start + learner.micro_batch >= len(batch))

        def per_token_loss(lp: Tensor, _entropy, _rows: slice) -> Tensor:
            return nll_terms(lp, total_tokens)

        loss, *_ = learner.engine(mb.input_ids, mb.attention_mask, per_token_loss=per_token_loss,
                                  scored=mb.target_mask)
        grad_norm = learner.accumulate(loss * scale)  # already a mean over the whole batch
        loss_sum += loss.item()
    (loss_all,) = all_ranks_sum([loss_sum])
    return {"loss": loss_all, "grad_norm": learner.update_grad_norm(grad_norm),
            "lr": learner.engine.get_lr()[0], "tokens": total_tokens}


@torch.no_grad()
def target_nll_sums(learner, batch: ExampleBatch, counted: int) -> tuple[float, float]:
    """(sum of -log p over the target tokens, their count) for the first `counted` rows of the batch (the
    rest pad a rank's share so every rank runs the same forwards, which ZeRO-3's gathers need)."""
    learner.engine.eval()
    nll, tokens = 0.0, 0.0
    for start in range(0, len(batch), learner.micro_batch):
        mb = batch.slice(start, start + learner.micro_batch)
        mask = mb.target_mask.to(learner.device)
        lp = grid(learner.engine(mb.input_ids.to(learner.device), mb.attention_mask.to(learner.device),
                                 scored=mask)[0].float(), mask)
        keep = mask.clone()
        keep[max(counted - start, 0):] = False
        nll -= lp[keep].double().sum().item()
        tokens += float(keep.sum())
    return nll, tokens
