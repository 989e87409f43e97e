"""The held-out rewrite check of the reward model: greedy rewrites (transformers' generate, through the
seq2seq reward's own greedy_rewrites) of examples from prompts it never trained on.

    fix         share of rejected inputs rewritten into exactly the chosen response
    fix_answer  share of rejected inputs whose rewrite has the chosen response's final answer (over those
                whose chosen response has one)
    copy        share of rejected inputs left unchanged (the rewrite a reward model that learnt nothing makes)
    keep        share of chosen inputs left unchanged
    nll         token-mean -log p of the targets (both kinds)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.reward_model.examples import RewriteExample, collate_examples
from engine.reward_model.update import target_nll_sums
from engine.runtime.distributed import all_ranks_sum
from engine.tasks.answer import answers_match, extract_answer
from rewards.seq2seq import greedy_rewrites

GENERATE_CHUNK = 64  # examples per generate call


def padded_share(items: Sequence, rank: int, world: int) -> tuple[list, int]:
    """This rank's items[rank::world], padded with repeats to the same length on every rank (ZeRO-3 gathers
    weights in every forward, so all ranks must run as many), and how many of them are its own."""
    share = list(items[rank::world])
    counted, length = len(share), math.ceil(len(items) / world)
    filler = share[-1:] or list(items[:1])
    return share + filler * (length - counted), counted


def rewrite_counts(examples: Sequence[RewriteExample], rewrites: Sequence[list[int]], decode) -> list[float]:
    """[fix examples, fixed, copied, answered fix examples, fixed answer, keep examples, kept]."""
    fix = keep = fixed = answered = fixed_answer = copied = kept = 0
    for ex, rewrite in zip(examples, rewrites, strict=True):
        if ex.kind == "keep":
            keep += 1
            kept += rewrite == list(ex.target_ids)
            continue
        fix += 1
        fixed += rewrite == list(ex.target_ids)
        copied += rewrite == list(ex.unchanged_ids)
        wanted = extract_answer(decode(list(ex.target_ids)))
        answered += wanted is not None
        fixed_answer += answers_match(extract_answer(decode(rewrite)), wanted)
    return [fix, fixed, copied, answered, fixed_answer, keep, kept]


def heldout_check(learner, examples: Sequence[RewriteExample], tokenizer, rank: int, world: int,
                  synced: bool = False) -> dict[str, float]:
    """The metrics above over every rank's share of `examples` (an empty dict when there are none)."""
    if not examples:
        return {}
    share, counted = padded_share(examples, rank, world)
    model = learner.policy
    model.eval()
    # Long enough to tell whether a rewrite equals the target or the input (a longer one equals neither).
    budgets = [max(len(ex.target_ids), len(ex.unchanged_ids)) for ex in share]
    rewrites = greedy_rewrites(model, [ex.context_ids for ex in share], budgets, tokenizer.pad_token_id,
                               tokenizer.eos_token_id, GENERATE_CHUNK, synced=synced)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    counts = rewrite_counts(share[:counted], rewrites[:counted], decode)
    nll, tokens = target_nll_sums(learner, collate_examples(share, tokenizer.pad_token_id), counted)
    fix, fixed, copied, answered, fixed_answer, keep, kept, nll, tokens = all_ranks_sum([*counts, nll, tokens])
    return {"fix": fixed / max(fix, 1), "fix_answer": fixed_answer / max(answered, 1), "copy": copied / max(fix, 1),
            "keep": kept / max(keep, 1), "nll": nll / max(tokens, 1), "fix_examples": fix, "keep_examples": keep}
