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

# Built-in models: name -> the TinyArithRecipe fields that differ from its defaults (engine/tiny_model.py).
BUILTIN_MODELS: dict[str, dict] = {
    "builtin:tiny-arith": {},
    # PSRLM's M0: the same task with judge questions (which next step is right, A or B) as half the episodes and
    # 2.5x the steps: the judge's label, copied after its own version of the step, is learnt late
    "builtin:tiny-arith-judge": {"judge_mix": 0.5, "steps": 2000},
}


def resolve_model_path(spec: str, is_builder: bool, log=print) -> str:
    """Build the embedded model on first use (only on the rank that `is_builder`; the others wait
    at a barrier and then find it cached), or check that a local folder holds a model."""
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_MODELS:
            raise UserError(f"model.path={spec!r} is not a built-in model; known: {list(BUILTIN_MODELS)}.")
        from engine.tiny_model import TinyArithRecipe, build_tiny_arith, cached_tiny_arith

        recipe = TinyArithRecipe(**BUILTIN_MODELS[spec])
        return str(build_tiny_arith(recipe, log=log) if is_builder else cached_tiny_arith(recipe))
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
