"""Cached model folders (built-in models, GGUF conversions, warm-ups) are written whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("SELFCORRECT_CACHE", Path.home() / ".cache" / "selfcorrect-rl"))


def publish_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary folder beside `target`, which is then renamed to `target`: an interrupted
    build never leaves a half folder. Losing the rename to another builder is fine; the folder and its files are
    made readable by all (mkdtemp and save_pretrained may make them private), like any model folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
    try:
        write(tmp)
        tmp.chmod(0o755)
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").exists():  # not a race lost to another builder: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a rename; cleaned up after a lost race or a failure
    return target
