"""`model.path` -> a local folder that both transformers and vLLM load."""

from __future__ import annotations

from pathlib import Path

from engine.errors import UserError

BUILTIN_MODELS = ("builtin:tiny-arith",)


def resolve_model_path(spec: str, is_builder: bool, log=print) -> str:
    """Build the embedded model on first use (only on the rank that `is_builder`; the others wait
    at a barrier and then find it cached), or check that a local folder holds a model."""
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_MODELS:
            raise UserError(f"model.path={spec!r} is not a built-in model; known: {list(BUILTIN_MODELS)}.")
        from engine.tiny_model import build_tiny_arith, cached_tiny_arith

        return str(build_tiny_arith(log=log) if is_builder else cached_tiny_arith())
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise UserError(
            f"model.path={spec!r} is not a folder with a config.json. Hint: give a local Hugging Face "
            f"causal-LM folder (models cannot be downloaded here) or builtin:tiny-arith."
        )
    return str(path)
