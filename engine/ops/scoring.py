"""The learner's scoring forward: the transformer body, then the fused log-prob head on the tokens that
have a target, so no [tokens x vocab] logits are built.

The fused op runs inside the `lm_head` module's own forward (its class is swapped for `FusedHead`), so
under ZeRO-3 DeepSpeed's module hooks gather the head weight (tied to the embeddings or not) for the
forward and again for the backward, exactly as for a plain `nn.Linear` call.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from engine.ops.logprobs import PerTokenLoss, Wanted, head_loss, head_stats
from engine.ops.packing import pack


class FusedHead(nn.Linear):
    """`nn.Linear` that, given targets, returns per-token statistics (or a fused loss) instead of logits."""
    impl: str = "auto"
    scale: float = 1.0

    def forward(self, hidden: Tensor, targets: Tensor | None = None, wanted: Wanted = Wanted(),
                per_token_loss: PerTokenLoss | None = None):
        if targets is None:  # the plain head, for anything else that calls it (the model scales after it)
            return super().forward(hidden)
        if per_token_loss is None:
            return head_stats(hidden, self.weight, targets, self.bias, self.scale, wanted, self.impl).as_tuple()
        loss, stats = head_loss(hidden, self.weight, targets, per_token_loss, self.bias, self.scale, wanted, self.impl)
        return (loss, *stats.as_tuple())


@contextmanager
def sampling_temperature(model: nn.Module, temperature: float):
    """Inside, the model scores logits / temperature: the policy vLLM sampled from at that temperature
    (0, greedy, scores the raw model)."""
    head = model.get_output_embeddings()
    base = head.scale
    head.scale = base / temperature if temperature > 0 else base
    try:
        yield
    finally:
        head.scale = base


def logit_scale(config) -> float:
    """The factor between the head's output and the logits the model samples from."""
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError("models with final_logit_softcapping (tanh-capped logits) are not supported by the fused "
                         "log-prob head")
    if getattr(config, "logit_scale", None):  # Cohere multiplies
        return float(config.logit_scale)
    if getattr(config, "logits_scaling", None):  # Granite divides
        return 1.0 / float(config.logits_scaling)
    return 1.0


def install_fused_head(model: nn.Module, impl: str) -> None:
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"the fused log-prob head needs an nn.Linear output layer, found {type(head).__name__}")
    head.__class__ = FusedHead  # same object and parameters: state_dict keys, tying and hooks stay as they are
    head.impl, head.scale = impl, logit_scale(model.config)


class ScoringModel(nn.Module):
    """A Hugging Face causal LM scored per token. Outputs are flat over the scored tokens; `grid` puts
    them back at [B, T] aligned with input_ids. With `packing` the forward runs on the sequences packed
    side by side (engine.ops.packing), not on the padded rows: the same outputs, in the same order."""

    def __init__(self, lm: nn.Module, impl: str, packing: bool = False):
        super().__init__()
        self.lm = lm
        self.packing = packing
        install_fused_head(lm, impl)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, wanted: Wanted = Wanted(),
                per_token_loss: PerTokenLoss | None = None, scored: Tensor | None = None):
        """Statistics of the tokens marked in `scored` ([B, T] aligned with input_ids; default: every
        token that has a predecessor), flat in row-major order. The head runs on those tokens only."""
        scored = targets_of(attention_mask) if scored is None else scored.bool()
        layout = {"attention_mask": attention_mask}
        if self.packing:
            rows = pack(input_ids, attention_mask, scored)
            # no attention mask: the restarting position ids alone keep each sequence to itself
            input_ids, scored, layout = rows.input_ids, rows.scored, {"position_ids": rows.position_ids}
        hidden = self.lm.get_decoder()(input_ids=input_ids, use_cache=False, **layout).last_hidden_state
        return self.lm.get_output_embeddings()(hidden[:, :-1][scored[:, 1:]], input_ids[:, 1:][scored[:, 1:]],
                                               wanted, per_token_loss)


@torch.no_grad()
def check_packing(scorer, tolerance: float = 1e-5) -> None:
    """Packed sequences must not see each other on this model: a row packs a 2-token sequence before a 3-token
    one, and changing the first must leave the second's log-probs as they were (the same arithmetic on the same
    values: equal in any dtype). A model whose attention ignores restarting position ids fails; that is an error
    here, not a silently different loss. `scorer`: a ScoringModel or the DeepSpeed engine around one (every rank
    calls this: a ZeRO-3 forward is collective)."""
    model = getattr(scorer, "module", scorer)
    vocab = model.lm.get_output_embeddings().out_features
    device = next(model.parameters()).device
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], device=device)  # packed: [5], [2 + 3]
    was_training = model.training
    scorer.eval()
    seconds = []
    for first in (5, 11):  # two different first sequences in the shared row
        ids = (torch.arange(15, device=device).view(3, 5) * 7 + 3) % vocab
        ids[1, :2] = torch.tensor([first, first + 1], device=device) % vocab
        seconds.append(scorer(ids, mask)[0][-2:].float())  # the last row's 2 scored tokens
    scorer.train(was_training)
    gap = (seconds[0] - seconds[1]).abs().max().item()
    if not gap <= tolerance:
        from engine.base.errors import UserError

        raise UserError(f"learner.packing=true: on this model ({type(model.lm).__name__}) a packed sequence's "
                        f"log-probs change with the sequence packed before it (by up to {gap:.3g}): its attention "
                        f"does not keep packed sequences apart by their position ids. Hint: learner.packing=false.")


def targets_of(attention_mask: Tensor) -> Tensor:
    """[B, T] bool: the tokens that have a predecessor to predict them (not position 0, not padding)."""
    scored = attention_mask.bool().clone()
    scored[:, 0] = False
    return scored


def grid(flat: Tensor, scored: Tensor) -> Tensor:
    """Flat per-token values -> [B, T] aligned with input_ids (0 where not scored)."""
    out = torch.zeros(scored.shape, dtype=flat.dtype, device=flat.device)
    out[scored.bool()] = flat
    return out


def flat(values: Tensor, scored: Tensor) -> Tensor:
    """The inverse of `grid`: [B, T] -> the scored entries, in scoring order."""
    return values[scored.bool()]
