"""Answer extraction and comparison for the fixed "... Final Answer: N" format."""

from __future__ import annotations

MARKER = "Final Answer:"


def extract_final_answer(text: str) -> str | None:
    """The text after the last "Final Answer:" on its line, stripped of spaces and a trailing period."""
    if MARKER not in text:
        return None
    answer = text.rsplit(MARKER, 1)[1].split("\n", 1)[0].strip().rstrip(".").strip()
    return answer or None


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
