"""`model.warmup`: a short supervised warm-up of any model on the built-in task's gold worked answers, before RL.

A model with no task it can partly do (SmolLM2-135M-Instruct: turn-1 accuracy <= 0.03 on every candidate,
bench/results/task-screen-smollm2-135m.json) learns the answer format and column addition from the built-in
task's pretrain split (train and validation, never eval), through the same two-turn ChatML episodes that pre-train builtin:tiny-arith
(engine/builtin/tiny_model.py's `pretrain`). The result is built once, on the builder rank, into a cached folder
`warmup-<key>`, the key hashing the base model's identity and the settings; every later run loads it as it is.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from engine.base.cache_folder import publish_folder
from engine.base.errors import UserError
from engine.builtin.tiny_model import TinyArithRecipe, pretrain, require_chatml
from engine.config.schema import WarmupSettings
from engine.models.sources import file_digest

WARMUP_VERSION = 1  # bump when the build below changes in a way the settings do not capture
LOG_EVERY = 10  # a progress line (loss, elapsed time) every this many steps
# Folder names that already embed a hash of their content (built-in tiny models, converted GGUFs, warm-ups):
# their name is their identity, and their weights need not be read to key the cache.
CONTENT_NAMED = re.compile(r"^(tiny-arith-[0-9a-f]{12}|gguf-.+-[0-9a-f]{12}-v\d+|warmup-[0-9a-f]{12})$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a hub snapshot folder: .../models--org--name/snapshots/<commit>
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
RANGES = {"steps": ("an integer >= 0", lambda v: v >= 0), "lr": ("> 0", lambda v: v > 0),
          "batch_size": ("an integer >= 1", lambda v: v >= 1),
          **{k: ("in [0, 1]", lambda v: 0.0 <= v <= 1.0) for k in ("p_slip_t1", "p_fix_t2", "p_break_t2")}}


def warmup_fields(settings) -> dict:
    """`settings` (WarmupSettings, cfg.model.warmup or a dict) as a plain dict of every field, each checked."""
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    elif is_dataclass(settings):
        settings = asdict(settings)
    try:
        fields = asdict(WarmupSettings(**settings))
    except TypeError as err:
        raise UserError(f"model.warmup: {err}. Hint: its keys are {list(asdict(WarmupSettings()))}.") from None
    for key, (allowed, ok) in RANGES.items():
        if not ok(fields[key]):
            raise UserError(f"model.warmup.{key}={fields[key]!r} must be {allowed}.")
    return fields


def base_identity(folder: Path) -> dict:
    """What the base model is, for the cache key: a content-named folder's name, a hub snapshot's repo and
    commit, else the folder's name with the sha256 of its config.json and of each weights file."""
    if CONTENT_NAMED.match(folder.name):
        return {"name": folder.name}
    if folder.parent.name == "snapshots" and COMMIT.match(folder.name):
        return {"name": f"{folder.parent.parent.name}@{folder.name}"}
    files = ["config.json", *sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)]
    return {"name": folder.name, "sha256_12": {name: file_digest(folder / name) for name in files}}


def warmup_key(identity: dict, fields: dict) -> str:
    blob = json.dumps({"version": WARMUP_VERSION, "base": identity, "settings": fields}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def warmed_up_folder(base_folder: str | Path, settings, cache_dir: str | Path, is_builder: bool, log=print) -> Path:
    """The base model warmed up by `settings` (model.warmup): its cached folder, built here on first use when
    `is_builder` (other ranks find it cached, or get FileNotFoundError). steps=0: the base folder itself."""
    fields = warmup_fields(settings)
    base = Path(base_folder)
    if fields["steps"] == 0:
        return base
    identity = base_identity(base)
    target = Path(cache_dir) / f"warmup-{warmup_key(identity, fields)}"
    if (target / "config.json").exists():
        return target
    if not is_builder:
        raise FileNotFoundError(f"{target} (model.warmup of {base}) has not been built yet; the builder rank "
                                f"builds it first")
    return build_warmup(base, identity, fields, target, log=log)


def build_warmup(base: Path, identity: dict, fields: dict, target: Path, log=print) -> Path:
    """Train a float32 copy of `base` for fields["steps"] steps and save it (model, tokenizer, generation
    config, warmup.json) into `target`, through a temporary folder renamed at the end: an interrupted build
    leaves nothing half-written."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(base)
    require_chatml(tokenizer, f"model.warmup.steps={fields['steps']} on {base}",
                   hint="the warm-up's episodes are ChatML; use a model with a ChatML template (SmolLM2, Qwen), "
                        "or model.warmup.steps=0")
    log(f"[warmup] warming up {base.name} for {fields['steps']} steps on the built-in task's worked answers, "
        f"into {target} (first use; cached afterwards)")
    torch.manual_seed(fields["seed"])
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    recipe = TinyArithRecipe(**{k: v for k, v in fields.items() if k in TinyArithRecipe.__dataclass_fields__})
    if tokenizer.pad_token_id is None:
        padded = type(tokenizer).from_pretrained(base)  # a copy lends its EOS as padding; the saved one has none
        padded.pad_token = padded.eos_token  # padded positions carry no loss; any id will do
    else:
        padded = tokenizer
    pretrain(model, padded, recipe, log=log, log_every=LOG_EVERY, tag="warmup")

    def write(folder: Path) -> None:
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder, safe_serialization=True)
        (folder / "warmup.json").write_text(json.dumps({"base_folder": str(base), "base": identity, "settings": fields,
                                                       "version": WARMUP_VERSION,
                                                       "seconds": round(time.time() - started)}, indent=2) + "\n")

    publish_folder(target, write)
    log(f"[warmup] built {target.name} in {time.time() - started:.0f}s")
    return target
