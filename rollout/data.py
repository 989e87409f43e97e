"""Prompt sources: the built-in arithmetic splits or a JSONL file of {"prompt", optional "answer"}."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.jsonl import jsonl_rows
from rollout.arith import arith_problems

BUILTIN = {"builtin:arith": "train", "builtin:arith-eval": "eval"}
EXAMPLE = '{"prompt": "What is 47+85?", "answer": "132"}'


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str | None  # gold answer, used only for evaluation or the `gold` reward
    line: int | None = None  # line in the JSONL file it came from, for error messages


class DataError(UserError):
    """A user-facing data mistake; the message names the file and line."""


def load_problems(source: str) -> list[Problem]:
    if source.startswith("builtin:"):
        if source not in BUILTIN:
            raise DataError(f"unknown built-in data set '{source}'. Known: {sorted(BUILTIN)}.")
        return [Problem(p.prompt, p.answer) for p in arith_problems(BUILTIN[source])]
    return _load_jsonl(Path(source))


def _load_jsonl(path: Path) -> list[Problem]:
    if not path.is_file():
        raise DataError(f"data file '{path}' not found. Hint: data.train / data.eval take a JSONL path or "
                        f"one of {sorted(BUILTIN)}.")
    problems = []
    for where, lineno, row in jsonl_rows(path, DataError, EXAMPLE, "problems"):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{where}: each line needs a non-empty string field 'prompt' (got {got}). "
                            f"Hint: e.g. {EXAMPLE}.")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise DataError(f"{where}: 'answer' must be a string or a number, got {type(answer).__name__}.")
        problems.append(Problem(row["prompt"], None if answer is None else str(answer), lineno))
    return problems


def require_answers(problems: list[Problem], source: str, why: str) -> None:
    """Fail early, naming the first problem without a gold answer."""
    missing = next((p for p in problems if p.answer is None), None)
    if missing is not None:
        where = source if missing.line is None else f"{source}:{missing.line}"
        raise DataError(f"{where}: problem has no 'answer', but {why} needs gold answers on every problem.")
