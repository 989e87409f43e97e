"""`model.path` -> a local folder that both transformers and vLLM load."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.base.errors import UserError

# `model.dtype` (and any dtype sent by name) -> torch dtype
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """The inverse of DTYPES: torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")

# Built-in models: name -> the TinyArithRecipe fields that differ from its defaults (engine/builtin/tiny_model.py).
BUILTIN_MODELS: dict[str, dict] = {
    "builtin:tiny-arith": {},
    # PSRLM's M0: the same task with judge questions (which next step is right, A or B) as half the episodes and
    # 2.5x the steps: the judge's label, copied after its own version of the step, is learnt late
    "builtin:tiny-arith-judge": {"judge_mix": 0.5, "steps": 2000},
}


# Real models found on this machine: name -> a function returning their GGUF file (engine/models/sources.py).
BUILTIN_GGUF = {"builtin:smollm2-135m-instruct": "smollm2_gguf"}


def builtin_names() -> list[str]:
    return [*BUILTIN_MODELS, *BUILTIN_GGUF]


def resolve_model_path(spec: str, is_builder: bool, log=print) -> str:
    """`model.path` -> a local Hugging Face folder. A built-in tiny model is built, and a GGUF file (given by
    path, or a built-in real model's) is converted, on first use, only on the rank that `is_builder`; the others
    wait at a barrier and then find it cached. A hub id (org/name) comes from the hub's local cache."""
    from engine.base.cache_folder import default_cache_dir
    from engine.models import sources as model_sources

    if spec.startswith("builtin:"):
        if spec in BUILTIN_GGUF:
            gguf = getattr(model_sources, BUILTIN_GGUF[spec])()
            return str(model_sources.gguf_folder(spec, gguf, default_cache_dir(), is_builder, log=log))
        if spec not in BUILTIN_MODELS:
            raise UserError(f"model.path={spec!r} is not a built-in model; known: {builtin_names()}.")
        from engine.builtin.tiny_model import TinyArithRecipe, build_tiny_arith, cached_tiny_arith

        recipe = TinyArithRecipe(**BUILTIN_MODELS[spec])
        return str(build_tiny_arith(recipe, log=log) if is_builder else cached_tiny_arith(recipe))
    if spec.endswith(".gguf"):
        return str(model_sources.gguf_folder(spec, Path(spec), default_cache_dir(), is_builder, log=log))
    path = Path(spec)
    if not path.exists() and model_sources.is_hub_id(spec):
        path = model_sources.hub_folder(spec, download=is_builder)
    if not (path / "config.json").is_file():
        raise UserError(
            f"model.path={spec!r} is not a folder with a config.json. Hint: give a local Hugging Face "
            f"causal-LM folder, a .gguf file, a hub id (org/name) in the local hub cache, or one of "
            f"{builtin_names()}."
        )
    return str(path)


def prepare_model(model_cfg, is_builder: bool, log=print) -> str:
    """The folder a run loads: `model.path` resolved (resolve_model_path), then, when model.warmup.steps > 0,
    warmed up on the built-in task's worked answers (engine/models/warmup.py; built once on the builder rank, cached)."""
    path = resolve_model_path(model_cfg.path, is_builder, log=log)
    if model_cfg.warmup.steps == 0:
        return path
    from engine.base.cache_folder import default_cache_dir
    from engine.models.warmup import warmed_up_folder

    return str(warmed_up_folder(path, model_cfg.warmup, default_cache_dir(), is_builder, log=log))


def prepare_model_everywhere(model_cfg, rank: int, log=print) -> str:
    """prepare_model on every rank: rank 0 builds, converts or warms up on first use while the others wait at a
    barrier, then find it cached."""
    from engine.runtime.distributed import barrier

    model_path = prepare_model(model_cfg, is_builder=True, log=log) if rank == 0 else None
    barrier()
    return model_path or prepare_model(model_cfg, is_builder=False, log=log)


def check_model_source(spec: str) -> None:
    """Fail early on a model.path that cannot resolve, without building or converting anything."""
    try:
        resolve_model_path(spec, is_builder=False)
    except FileNotFoundError:  # valid, not built or converted yet: the builder rank does it at start-up
        pass


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
