"""`model.path` -> a local folder that both transformers and vLLM load."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import UserError

# `model.dtype` (and any dtype sent by name) -> torch dtype
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """The inverse of DTYPES: torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")

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


def load_tokenizer_and_config(model_path: str, trust_remote_code: bool):
    """The tokenizer and the model config. A folder whose classes live in its own Python files
    (config.json `auto_map`) is refused unless model.trust_remote_code=true: that code would run here."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise UserError(f"model.path={model_path} needs the Python code shipped in the folder (config.json "
                        f"'auto_map'), which runs only with model.trust_remote_code=true. Hint: read that code "
                        f"first; then set model.trust_remote_code=true.") from None
    return tokenizer, config
