"""Where the final answer sits among a response's tokens (for rewards scored on the answer span)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from engine.tasks.answer import answer_char_span


class PrefixCharEnds(Sequence):
    """Where each token's text ends in the decoded response (special tokens add none), decoded lazily: the
    i-th end is the length of the first i + 1 tokens' text. Searching it by bisection decodes O(log L)
    prefixes where listing every end would decode all L of them (O(L^2) characters)."""

    def __init__(self, tokenizer, token_ids: Sequence[int]):
        self.tokenizer, self.token_ids = tokenizer, list(token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < len(self.token_ids):
            raise IndexError(i)  # Sequence's iteration stops here
        return len(self.tokenizer.decode(self.token_ids[:i + 1], skip_special_tokens=True))


def char_span_to_token_span(char_ends: Sequence[int], start: int, end: int) -> tuple[int, int] | None:
    """Smallest [first, last) token range whose text covers characters [start, end), found by bisection.
    Precondition: the ends never decrease. A tokenizer whose prefix can decode longer than a longer prefix
    (byte fallback inside a multi-byte character: one replacement character per dangling byte) may give a
    span off by a token there; the linear scan this replaced was no more exact in that case."""
    first = bisect.bisect_right(char_ends, start)  # the first token ending after `start`
    last = bisect.bisect_left(char_ends, end)  # the first token ending at or after `end`
    if first == len(char_ends) or last == len(char_ends):
        return None
    return first, last + 1


def answer_token_span(tokenizer, token_ids: Sequence[int], text: str) -> tuple[int, int] | None:
    """Token range of the answer inside a sampled response, or None when it has no answer."""
    span = answer_char_span(text)
    if span is None:
        return None
    return char_span_to_token_span(PrefixCharEnds(tokenizer, token_ids), *span)


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
