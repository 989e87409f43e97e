"""Where the final answer sits among a response's tokens (for rewards scored on the answer span)."""

from __future__ import annotations

from collections.abc import Sequence

from rewards.answer import answer_char_span


def token_char_ends(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """Character offset where each token's text ends in the decoded response (special tokens add none)."""
    ends, prefix = [], []
    for tok in token_ids:
        prefix.append(tok)
        ends.append(len(tokenizer.decode(prefix, skip_special_tokens=True)))
    return ends


def char_span_to_token_span(char_ends: Sequence[int], start: int, end: int) -> tuple[int, int] | None:
    """Smallest [first, last) token range whose text covers characters [start, end)."""
    first = next((i for i, e in enumerate(char_ends) if e > start), None)
    last = next((i for i, e in enumerate(char_ends) if e >= end), None)
    if first is None or last is None:
        return None
    return first, last + 1


def answer_token_span(tokenizer, token_ids: Sequence[int], text: str) -> tuple[int, int] | None:
    """Token range of the answer inside a sampled response, or None when it has no answer."""
    span = answer_char_span(text)
    if span is None:
        return None
    return char_span_to_token_span(token_char_ends(tokenizer, token_ids), *span)


def longest_common_run(response: Sequence[int], probe: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) in `response` of the longest contiguous token run it shares with `probe` (the
    earliest such run on ties); None when they share no token."""
    best_len, best_end = 0, 0
    previous = [0] * (len(probe) + 1)
    for i, tok in enumerate(response, start=1):
        current = [0] * (len(probe) + 1)
        for j, other in enumerate(probe, start=1):
            if tok == other:
                current[j] = previous[j - 1] + 1
                if current[j] > best_len:
                    best_len, best_end = current[j], i
        previous = current
    return (best_end - best_len, best_end) if best_len else None


def locate_answer(tokenizer, completion) -> tuple[int, int] | None:
    """The answer's token range in a sampled turn: from the answer format, else from RLSF's probe
    (`completion.probe_span`, set by rollout.answer_probe), else None."""
    span = answer_token_span(tokenizer, completion.token_ids, completion.text)
    return span if span is not None else completion.probe_span
