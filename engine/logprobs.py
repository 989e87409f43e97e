"""Per-token log-probs of given sequences under a causal LM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def token_logprobs(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """[B, T] log-probs aligned with `input_ids`: entry t is log p(input_ids[t] | input_ids[:t]); entry 0 is 0.

    Log-probs are taken from the raw logits (temperature 1), matching what vLLM reports for sampled tokens.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return F.pad(logp, (1, 0))
