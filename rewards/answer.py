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


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _math_verify(predicted: str, gold: str) -> bool:
    """Symbolic equivalence with HuggingFace's math-verify (LaTeX, fractions, roots, sets, ...)."""
    from math_verify import parse, verify

    def as_latex(text: str) -> str:
        return text if "$" in text or "\\boxed" in text else f"${text}$"

    try:
        return bool(verify(parse(as_latex(gold)), parse(as_latex(predicted))))
    except Exception:  # an answer math-verify cannot parse simply does not match
        return False


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """Exact match after stripping; plain numbers compare by value ("12.0" = "12", "1,000" = "1000");
    anything else goes to math-verify ("\\frac{1}{2}" = "0.5")."""
    if predicted is None or gold is None:
        return False
    predicted, gold = predicted.strip(), gold.strip()
    if predicted == gold:
        return True
    a, b = _as_number(predicted), _as_number(gold)
    if a is not None and b is not None:  # the fast path: no parser for plain numbers
        return a == b
    return _math_verify(predicted, gold)
