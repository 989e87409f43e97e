"""One DPO update on the learner's DeepSpeed engine, through the same fused log-prob head as the policy
gradient (no [tokens x vocab] logits, any ZeRO stage).

The fused head takes a loss's gradient per token in its forward, so the loss must be a sum of per-token
terms. DPO's is not (it is a sigmoid of sequence sums), but its gradient is linear in the sequence
log-probs once their values are known: dL/dtheta = sum_s g_s * grad log pi(s), g_s = dL/d log pi(s). So a
no-gradient pass scores every sequence, autograd on the [sequences] vector gives g, and a second pass
back-propagates the per-token loss g_s * log pi(token), whose gradient is exactly DPO's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from engine.objectives.dpo import dpo_loss, sequence_logprobs
from engine.ops.scoring import flat, grid
from engine.runtime.distributed import all_ranks_sum, world_size
from engine.update.batch import TrainBatch


def collate_pairs(pairs, pad_id: int) -> TrainBatch:
    """Pairs (context_ids, chosen_ids, rejected_ids) -> a batch whose rows 0..P-1 are the chosen responses
    and P..2P-1 the rejected ones, each after its context; turn_masks [2P, 1, T] marks the response."""
    rows = [(p.context_ids, p.chosen_ids) for p in pairs] + [(p.context_ids, p.rejected_ids) for p in pairs]
    width = max(len(c) + len(r) for c, r in rows)
    batch = TrainBatch(input_ids=torch.full((len(rows), width), pad_id, dtype=torch.long),
                       attention_mask=torch.zeros(len(rows), width, dtype=torch.long),
                       turn_masks=torch.zeros(len(rows), 1, width), rollout_logprobs=torch.zeros(len(rows), width))
    for i, (context, response) in enumerate(rows):
        ids = context + response
        batch.input_ids[i, :len(ids)] = torch.tensor(ids)
        batch.attention_mask[i, :len(ids)] = 1
        batch.turn_masks[i, 0, len(context):len(ids)] = 1.0
    return batch


@dataclass
class DPOUpdateStats:
    loss: float  # the weighted DPO loss over every rank's pairs
    margin: float  # mean beta * (chosen log-ratio - rejected log-ratio)
    chosen_logp: float  # mean policy log-prob of the chosen responses (before the step)
    rejected_logp: float
    accuracy: float  # share of pairs with a positive margin
    pairs: int  # pairs in the update, all ranks
    grad_norm: float
    lr: float


def dpo_update(learner, batch: TrainBatch, pair_weights: Tensor, beta: float, temperature: float = 1.0,
               reference_lp: Tensor | None = None) -> DPOUpdateStats:
    """One optimizer step on this rank's P pairs: `batch` rows 0..P-1 are the chosen responses and P..2P-1
    the rejected ones (each with its prompt; turn_masks [2P, 1, T] marks the response). The batch must have
    the learner's rows per update (its micro-batches make one gradient-accumulation cycle). reference_lp [2P]:
    the rows' reference log-probs, scored earlier (dpo.reference=previous); None: the learner's frozen reference."""
    with learner.scoring_temperature(temperature):
        return _update(learner, batch, pair_weights.float(), beta, reference_lp)


@torch.no_grad()
def policy_logprobs(learner, batch: TrainBatch, temperature: float = 1.0) -> Tensor:
    """Summed response log-probs [rows] under the current policy, at the sampling temperature."""
    with learner.scoring_temperature(temperature):
        learner.engine.eval()
        return _summed(learner.engine, learner, batch.to(learner.device))


def _update(learner, batch: TrainBatch, pair_weights: Tensor, beta: float,
            reference_lp: Tensor | None) -> DPOUpdateStats:
    pairs = len(batch) // 2
    batch = batch.to(learner.device)
    learner.engine.eval()
    policy_lp = _summed(learner.engine, learner, batch)
    ref_lp = (_summed(learner.reference, learner, batch) if reference_lp is None
              else reference_lp.to(learner.device).float())
    # Each rank's loss is its pairs' weighted sum over the weight of every rank's pairs: their sum is the
    # global weighted mean (DeepSpeed averages gradients over ranks, hence the world-size scale below).
    weight_total = all_ranks_sum([pair_weights.sum().item()])[0]
    share = pair_weights.sum().item() / weight_total
    sequence_lp = policy_lp.clone().requires_grad_(True)
    loss, stats = dpo_loss(sequence_lp[:pairs], sequence_lp[pairs:], ref_lp[:pairs], ref_lp[pairs:], beta,
                           pair_weights.to(sequence_lp.device))
    (per_sequence,) = torch.autograd.grad(loss * share, sequence_lp)
    scale = world_size()
    learner.engine.train()
    grad_norm = None
    for start in range(0, len(batch), learner.micro_batch):
        mb = batch.slice(start, start + learner.micro_batch)
        scored = mb.response_mask > 0
        coef = flat(per_sequence[start:start + learner.micro_batch, None].expand_as(scored), scored).detach()
        # explicit, as in Learner.update: the engine's flag stays as the last loop on it left it
        learner.engine.set_gradient_accumulation_boundary(start + learner.micro_batch >= len(batch))

        def per_token_loss(lp: Tensor, _entropy, rows: slice) -> Tensor:
            return coef[rows].to(lp.dtype) * lp  # summed: sum_s g_s log pi(s), whose gradient is DPO's

        step_loss, *_ = learner.engine(mb.input_ids, mb.attention_mask, per_token_loss=per_token_loss, scored=scored)
        grad_norm = learner.accumulate(step_loss * scale)
    total_loss, margin, chosen, rejected, accuracy = all_ranks_sum(
        [loss.item() * share, stats.margin / scale, stats.chosen_logp / scale, stats.rejected_logp / scale,
         stats.accuracy / scale])  # every rank has the same number of pairs: means of means
    return DPOUpdateStats(loss=total_loss, margin=margin, chosen_logp=chosen, rejected_logp=rejected,
                          accuracy=accuracy, pairs=pairs * scale,
                          grad_norm=learner.update_grad_norm(grad_norm),
                          lr=learner.engine.get_lr()[0])


@torch.no_grad()
def _summed(model, learner, batch: TrainBatch) -> Tensor:
    """Summed response log-probs [rows] under `model` (the policy's engine or the frozen reference)."""
    out = []
    for start in range(0, len(batch), learner.micro_batch):
        mb = batch.slice(start, start + learner.micro_batch)
        scored = mb.response_mask > 0
        token_lp = grid(model(mb.input_ids, mb.attention_mask, scored=scored)[0].float(), scored)
        out.append(sequence_logprobs(token_lp, scored))
    return torch.cat(out)
