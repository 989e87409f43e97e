"""Answer extraction and matching.

Formats, the last one in the text wins: "Final Answer: N" (any case, markdown bold around the marker or the
answer allowed: "**Final Answer:** 85", "**Final Answer: 85**"), "\\boxed{...}" (nested braces allowed,
anywhere in the text: "so \\boxed{85} is the sum. ..."), and GSM8K's "#### N".

What follows a "Final Answer:" or "####" marker is the rest of its line, tidied the way instruct models write
it: surrounding spaces, markdown `*`, `$...$` / `\\(...\\)` math delimiters, a leading `$` currency sign and
a closing period go ("$85." -> "85", "$\\frac{1}{2}$" -> "\\frac{1}{2}"). A number followed by words is the
number ("85 apples" -> "85", "12. Wait, ..." -> "12", "5 (since 2+3=5)" -> "5"); a number followed by anything else stays whole
("2 + 3", "2x", "5\\sqrt{2}": an expression, for math-verify). "The final answer is 85" is not a format.
The span `answer_char_span` gives covers exactly the text `extract_answer` returns (engine/tasks/answer_span.py
maps it to tokens).
"""

from __future__ import annotations

import re

_FINAL_ANSWER = re.compile(r"(?<![A-Za-z])final answer[ \t]*\**[ \t]*:", re.IGNORECASE)
# GSM8K's marker starts a line; "#### Explanation" is a markdown heading
_HASHES = re.compile(r"^[ \t]*####(?![ \t]*[A-Za-z])", re.MULTILINE)
_BOXED = re.compile(r"\\boxed\{")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
# after a leading number, what makes the number alone the answer: words ("85 apples"), or a sentence going on
_NUMBER_THEN_WORDS = re.compile(r"[ \t]+[A-Za-z(]|[.,;][ \t]")
_OPENERS, _CLOSERS = ("*", "$", "\\(", "\\["), ("*", "$", "\\)", "\\]", ".")


def _tidy(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Shrink [start, end) past spaces, markdown bold, math delimiters, a currency sign and a closing period;
    then a leading number followed by words is the answer alone. None when nothing is left."""
    changed = True
    while changed and start < end:
        changed = False
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        for opener in _OPENERS:
            if text.startswith(opener, start, end):
                start, changed = start + len(opener), True
        for closer in _CLOSERS:
            if end - len(closer) >= start and text.endswith(closer, start, end):
                end, changed = end - len(closer), True
    if start >= end:
        return None
    number = _NUMBER.match(text, start, end)
    if number and number.end() < end and _NUMBER_THEN_WORDS.match(text, number.end(), end):
        return start, number.end()
    return start, end


def _line_answer(text: str, pattern: re.Pattern) -> tuple[int, int] | None:
    """Span of the tidied rest of the line after the last match."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    end = text.find("\n", start)
    return _tidy(text, start, len(text) if end < 0 else end)


def _boxed_answer(text: str) -> tuple[int, int] | None:
    """Span inside the last \\boxed{...} whose braces close, without surrounding spaces."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                end = i
                while start < end and text[start].isspace():
                    start += 1
                while end > start and text[end - 1].isspace():
                    end -= 1
                return (start, end) if end > start else None
    return None


def answer_char_span(text: str) -> tuple[int, int] | None:
    """[start, end) of the answer in `text`, or None when no format is found; text[start:end] is the answer
    extract_answer returns."""
    spans = [s for s in (_line_answer(text, _FINAL_ANSWER), _line_answer(text, _HASHES), _boxed_answer(text)) if s]
    return max(spans, key=lambda s: s[0]) if spans else None


def extract_answer(text: str) -> str | None:
    """The last answer in `text` in one of the formats above, or None."""
    span = answer_char_span(text)
    return None if span is None else text[span[0]:span[1]]


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
