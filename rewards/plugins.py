"""User-written rewards: `reward.plugins: [my_rewards.py, my_pkg.rewards]` imports each entry at start-up
on every rank; the module registers its rewards with `rewards.register` (the decorator the built-in ones
use), and `reward.kind=<its name>` picks one.

An entry ending in `.py` (or holding a path separator) is a file, relative to the working directory;
anything else is a module name imported from the Python path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from engine.base.errors import UserError

HINT = ("Hint: a plugin is a .py file (relative to the working directory) or an importable module that "
        "registers rewards with `from rewards import register`; see examples/reward_plugin.py.")


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def load_plugins(entries: Sequence[str]) -> None:
    """Imports every plugin once (a file already imported is not run again); a plugin that cannot be
    found or fails while importing is a UserError naming it and the file:line where it failed."""
    for entry in entries:
        if is_file_entry(entry):
            _import_file(entry)
        else:
            _import_module(entry)


def _import_file(entry: str) -> None:
    path = Path(entry).resolve()
    if not path.is_file():
        raise UserError(f"reward.plugins: file '{entry}' not found (looked at {path}). {HINT}")
    # One module per file path: a second load (another trainer in this process) finds it registered.
    name = f"reward_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:16]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]  # a fixed file is imported afresh
        raise UserError(_failed(entry, err, str(path))) from None


def _import_module(entry: str) -> None:
    try:
        importlib.import_module(entry)
    except ModuleNotFoundError as err:
        if err.name is not None and (entry == err.name or entry.startswith(err.name + ".")):  # not its imports
            raise UserError(f"reward.plugins: no file or module named '{entry}' (not on the Python path: "
                            f"{sys.path[:3]}...). {HINT}") from None
        raise UserError(_failed(entry, err, None)) from None
    except Exception as err:
        raise UserError(_failed(entry, err, None)) from None


def _failed(entry: str, err: Exception, path: str | None) -> str:
    return (f"reward.plugins: '{entry}' failed to import: {type(err).__name__}: {_message(err)} "
            f"(at {_where(err, path)}). {HINT}")


def _message(err: Exception) -> str:
    return err.msg if isinstance(err, SyntaxError) else str(err)


def _where(err: Exception, path: str | None) -> str:
    """file:line of the failure: a syntax error's own position, else the deepest frame in the plugin's file
    (the deepest frame of all when it failed inside something it imported)."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{os.path.relpath(err.filename)}:{err.lineno}"
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if path is not None and os.path.abspath(f.filename) == path]
    frame = (own or [f for f in frames if "importlib" not in f.filename] or frames)[-1]
    return f"{os.path.relpath(frame.filename)}:{frame.lineno}"
