"""Maths on tensors for the learner: the fused log-prob head (naive, chunked, Triton), packing, the scoring pass, token statistics."""
