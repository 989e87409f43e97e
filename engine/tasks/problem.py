"""A problem of a data set, its gold answer as read from a data set's answer field, and the error a bad data
file raises."""

from __future__ import annotations

from dataclasses import dataclass

from engine.base.errors import UserError
from engine.tasks.answer import extract_answer


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str | None  # gold answer, used only for evaluation or the `gold` reward
    line: int | None = None  # line in the JSONL file it came from, for error messages


class DataError(UserError):
    """A user-facing data mistake; the message names the file and line."""


def gold_answer(value: str | int | float) -> str:
    """The gold answer of a data set's answer field: what follows GSM8K's "#### ", the last \\boxed{} of a
    MATH solution, or a "Final Answer:" line when the field holds one; otherwise the whole field."""
    text = str(value)
    return extract_answer(text) or text.strip()
