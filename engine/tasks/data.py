"""Prompt sources: the built-in arithmetic splits, a JSONL file of {"prompt", optional "answer"}, or a
Parquet / Arrow / `datasets` table (engine/tasks/tables.py)."""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path

from engine.base.jsonl import jsonl_rows
from engine.tasks.arith import arith_problems
from engine.tasks.problem import DataError, Problem, gold_answer  # noqa: F401  (callers read them here)

BUILTIN = {"builtin:arith": "train", "builtin:arith-val": "val", "builtin:arith-eval": "eval"}
# Where settings are chosen (sweeps, reward screens, the guard) for a recipe that reports on the key
VALIDATION = {"builtin:arith-eval": "builtin:arith-val"}
EXAMPLE = '{"prompt": "What is 47+85?", "answer": "132"}'


def load_problems(source: str, prompt_key: str = "prompt", answer_key: str = "answer",
                  template: str = "{prompt}") -> list[Problem]:
    """A built-in split, a JSONL file, or a table through the `datasets` library: a Parquet or Arrow file, or
    a folder saved with `save_to_disk` (a DatasetDict folder takes `folder:split`). Each row's
    `prompt_key` is the prompt and its optional `answer_key` the gold answer (see gold_answer). Every prompt
    is put through `template` (data.prompt_template), a format string whose one field is {prompt}."""
    check_template(template)
    if source.startswith("builtin:"):
        if source not in BUILTIN:
            raise DataError(f"unknown built-in data set '{source}'. Known: {sorted(BUILTIN)}.")
        problems = [Problem(p.prompt, p.answer) for p in arith_problems(BUILTIN[source])]
    else:
        from engine.tasks.tables import is_table, load_table

        problems = (load_table(source, prompt_key, answer_key) if is_table(source)
                    else _load_jsonl(Path(source), prompt_key, answer_key))
    return [replace(p, prompt=template.format(prompt=p.prompt)) for p in problems]


def check_template(template: str) -> None:
    """data.prompt_template must be a format string with {prompt} and no other field."""
    hint = ("Hint: e.g. data.prompt_template=\"{prompt}\\nEnd with 'Final Answer: <number>'.\"; write a literal "
            "brace as {{ or }}.")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        if fields == {"prompt"}:
            template.format(prompt="")  # a bad conversion or format spec on {prompt} fails here
    except (ValueError, KeyError, IndexError, AttributeError) as err:  # e.g. an unmatched brace
        raise DataError(f"data.prompt_template={template!r} cannot be formatted ({type(err).__name__}: {err}). "
                        f"{hint}") from None
    if fields != {"prompt"}:
        others = sorted(f"{{{name}}}" for name in fields - {"prompt"})
        what = f"has the fields {', '.join(others)}" if others else "has no {prompt} field"
        raise DataError(f"data.prompt_template={template!r} {what}; it takes exactly one field, {{prompt}}, the "
                        f"problem's prompt. {hint}")


def _load_jsonl(path: Path, prompt_key: str, answer_key: str) -> list[Problem]:
    if not path.is_file():
        raise DataError(f"data file '{path}' not found. Hint: data.train / data.eval take a JSONL, Parquet or "
                        f"Arrow file, a `datasets` folder, or one of {sorted(BUILTIN)}.")
    problems = []
    for where, lineno, row in jsonl_rows(path, DataError, EXAMPLE, "problems"):
        if not isinstance(row, dict) or not isinstance(row.get(prompt_key), str) or not row[prompt_key].strip():
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{where}: each line needs a non-empty string field '{prompt_key}' (got {got}). "
                            f"Hint: e.g. {EXAMPLE}; data.prompt_key / data.answer_key name other fields.")
        answer = row.get(answer_key)
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise DataError(f"{where}: '{answer_key}' must be a string or a number, got {type(answer).__name__}.")
        problems.append(Problem(row[prompt_key], None if answer is None else gold_answer(answer), lineno))
    return problems


def require_answers(problems: list[Problem], source: str, why: str) -> None:
    """Fail early, naming the first problem without a gold answer."""
    missing = next((p for p in problems if p.answer is None), None)
    if missing is not None:
        where = source if missing.line is None else f"{source}:{missing.line}"
        raise DataError(f"{where}: problem has no 'answer', but {why} needs gold answers on every problem.")
