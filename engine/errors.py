"""Mistakes a user can make (config, data, paths). Entry points print them without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """The message names the offending key, file:line or value, and gives a hint."""


def run_cli(main: Callable[[], int | None]) -> None:
    """An entry point's command line: a user's mistake is one `error:` line and exit code 2, never a
    traceback; a non-zero int from `main` is the exit code."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    if code:
        sys.exit(code)
