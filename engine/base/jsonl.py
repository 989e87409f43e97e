"""JSONL input files (data.train / data.eval, rm.pairs) read one line at a time, every mistake named by
file:line: the one reader behind engine/tasks/data.py and engine/reward_model/pairs.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from engine.base.errors import UserError


def jsonl_rows(path: Path, error: type[UserError], example: str, what: str) -> Iterator[tuple[str, int, object]]:
    """(file:line, line number, parsed value) of each non-blank line, read lazily so the caller's checks of
    a line come before the next line is parsed. Invalid JSON, or a file with no non-blank line, raises
    `error` with a hint showing `example` (one line); `what` names the rows in the empty-file message."""
    found = False
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            found = True
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line.rstrip())  # stripped: a cut-off line's error column stays on that line
            except json.JSONDecodeError as err:
                raise error(f"{where}: not valid JSON ({err.msg} at column {err.colno}). Hint: each line is one "
                            f"JSON object, e.g. {example}.") from None
            yield where, lineno, row
    if not found:
        raise error(f"{path}: no {what} found (the file is empty or all blank lines). Hint: one JSON object per "
                    f"line, e.g. {example}.")
