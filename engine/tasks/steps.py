"""Steps of a response (process supervision, PSRLM): a response is cut after every match of a delimiter
regex, and the delimiter stays with the step it ends. On the built-in task the default `[,.]` gives one step
per column computation, then the answer: "7+5=12," / " 4+8+1=13." / " Final Answer: 132". A response with
no delimiter is one step.

Token ids are cut at token boundaries, found from the decoded prefixes, so any tokenizer works: a step
ends with the token that completes its delimiter (with a multi-character token that is the whole token).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_DELIMITER = "[,.]"
DEFAULT_STOPS = (",", ".")  # the delimiter's literal strings: vLLM stops a sampled step on them


@dataclass(frozen=True)
class Step:
    token_ids: list[int]
    text: str


def has_delimiter(text: str, delimiter: str) -> bool:
    return any(m.end() > m.start() for m in re.finditer(delimiter, text))


def step_ends(text: str, delimiter: str) -> list[int]:
    """Character offsets where the steps of `text` end: after every (non-empty) delimiter match, and at
    the end of the text when something follows the last match. An empty text is one empty step."""
    ends = [m.end() for m in re.finditer(delimiter, text) if m.end() > m.start()]  # empty matches cut nothing
    if not ends or ends[-1] < len(text):
        ends.append(len(text))
    return ends


def split_text(text: str, delimiter: str) -> list[str]:
    """"7+5=12, 4+8+1=13. Final Answer: 132" -> ["7+5=12,", " 4+8+1=13.", " Final Answer: 132"]."""
    starts = [0] + step_ends(text, delimiter)[:-1]
    return [text[a:b] for a, b in zip(starts, step_ends(text, delimiter))]


def token_offsets(token_ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[int]:
    """offsets[i] = characters of the decoded first i tokens (i = 0..n), made non-decreasing (a prefix that
    ends inside a multi-byte character can decode longer than its successor)."""
    offsets, longest = [], 0
    for i in range(len(token_ids) + 1):
        longest = max(longest, len(decode(list(token_ids[:i]))))
        offsets.append(longest)
    return offsets


def split_tokens(token_ids: Sequence[int], decode: Callable[[list[int]], str], delimiter: str) -> list[Step]:
    """The steps of a response given as token ids: each step's ids end with the token that completes its
    delimiter; tokens that decode to nothing after the last delimiter (an end-of-turn token) join the last
    step. `decode` maps ids to text without special tokens."""
    text = decode(list(token_ids))
    offsets = token_offsets(token_ids, decode)
    cuts, start = [], 0
    for end_char in step_ends(text, delimiter):
        # the first token boundary at or after the step's last character
        end = next((i for i in range(start, len(offsets)) if offsets[i] >= end_char), len(token_ids))
        if end > start or not cuts:
            cuts.append((start, end))
        start = end
    if start < len(token_ids):
        cuts[-1] = (cuts[-1][0], len(token_ids))
    return [Step(list(token_ids[a:b]), text[offsets[a]:offsets[b]]) for a, b in cuts]


def first_step(token_ids: Sequence[int], decode: Callable[[list[int]], str], delimiter: str) -> Step:
    """The first step of a sampled continuation: vLLM stops on literal strings, the delimiter is a regex,
    so a continuation can run past its first delimiter; the rest is dropped."""
    return split_tokens(token_ids, decode, delimiter)[0]


def tokenizer_decoder(tokenizer) -> Callable[[list[int]], str]:
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
