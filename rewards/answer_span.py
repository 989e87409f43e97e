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


def carries_content(tokenizer, token: int) -> bool:
    """Whether a token's text has a letter or digit: a space or a punctuation mark alone is no answer."""
    return any(ch.isalnum() for ch in tokenizer.decode([token], skip_special_tokens=True))


def longest_common_run(response: Sequence[int], probe: Sequence[int], min_tokens: int = 1,
                       content: Sequence[bool] | None = None) -> tuple[int, int] | None:
    """[start, end) in `response` of the longest contiguous token run it shares with `probe` that has at
    least `min_tokens` tokens and, when `content` (one flag per response token) is given, one flagged token
    (the earliest such run on ties); None when no shared run qualifies."""
    content = [True] * len(response) if content is None else content
    best_len, best_end = 0, 0
    previous, previous_has = [0] * (len(probe) + 1), [False] * (len(probe) + 1)
    for i, tok in enumerate(response, start=1):
        current, current_has = [0] * (len(probe) + 1), [False] * (len(probe) + 1)
        for j, other in enumerate(probe, start=1):
            if tok == other:
                current[j] = previous[j - 1] + 1
                current_has[j] = previous_has[j - 1] or content[i - 1]
                # any shorter shared run ending here is a suffix of this one: it has content only if this does
                if current_has[j] and current[j] >= min_tokens and current[j] > best_len:
                    best_len, best_end = current[j], i
        previous, previous_has = current, current_has
    return (best_end - best_len, best_end) if best_len else None


def answer_run(tokenizer, response: Sequence[int], probe: Sequence[int], min_tokens: int = 1) -> tuple[int, int] | None:
    """RLSF's answer in `response`: its longest run shared with the probe's continuation that has at least
    `min_tokens` tokens and carries content; None when only spaces or punctuation are shared."""
    return longest_common_run(response, probe, min_tokens, [carries_content(tokenizer, t) for t in response])


def locate_answer(tokenizer, completion) -> tuple[int, int] | None:
    """The answer's token range in a sampled turn: from the answer format, else from RLSF's probe
    (`completion.probe_span`, set by rollout.answer_probe), else None."""
    span = answer_token_span(tokenizer, completion.token_ids, completion.text)
    return span if span is not None else completion.probe_span
