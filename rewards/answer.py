"""Answer extraction and matching.

Formats, the last one in the text wins: "Final Answer: N", "\\boxed{...}" (nested braces allowed),
and GSM8K's "#### N".
"""

from __future__ import annotations

import re

_FINAL_ANSWER = re.compile(r"Final Answer:[ \t]*")
_HASHES = re.compile(r"####[ \t]*")
_BOXED = re.compile(r"\\boxed\{")


def _line_answer(text: str, pattern: re.Pattern) -> tuple[int, int] | None:
    """Span of the rest of the line after the last match, without surrounding spaces or a final period."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    while end > start and text[end - 1] in " \t.":
        end -= 1
    return (start, end) if end > start else None


def _boxed_answer(text: str) -> tuple[int, int] | None:
    """Span inside the last \\boxed{...} whose braces close."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return (start, i) if i > start else None
    return None


def answer_char_span(text: str) -> tuple[int, int] | None:
    """[start, end) of the answer in `text`, or None when no format is found."""
    spans = [s for s in (_line_answer(text, _FINAL_ANSWER), _line_answer(text, _HASHES), _boxed_answer(text)) if s]
    return max(spans, key=lambda s: s[0]) if spans else None


def extract_answer(text: str) -> str | None:
    span = answer_char_span(text)
    return None if span is None else text[span[0]:span[1]].strip()


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Exact match after stripping; numbers compare by value (so "12.0" matches "12")."""
    if predicted is None or gold is None:
        return False
    predicted, gold = predicted.strip(), gold.strip()
    if predicted == gold:
        return True
    try:
        return float(predicted.replace(",", "")) == float(gold.replace(",", ""))
    except ValueError:
        return False
