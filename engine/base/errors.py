"""Mistakes a user can make (config, data, paths). Entry points print them without a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """The message names the offending key, file:line or value, and gives a hint."""


def run_cli(main: Callable[[], object]) -> None:
    """An entry point's command line: a user's mistake is one `error:` line and exit code 2, never a
    traceback; an int returned by `main` is the exit code (anything else it returns is its result)."""
    try:
        result = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    if isinstance(result, int) and result:
        sys.exit(result)
