"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

    <train.output_dir>/checkpoints/step-000040/
        deepspeed/        the DeepSpeed engine state (model, optimizer, scheduler), every rank's shard
        model/            the policy as a Hugging Face folder (safetensors, tokenizer, config.json)
        rng-rank<r>.pt    that rank's torch RNG state (vLLM's CPU sampler draws from it)
        rng-rank<r>.json  that rank's python and numpy RNG states
        meta.json         the step, the metrics so far, the guard's history, the config

A checkpoint is written under `.tmp-step-...` and renamed into place once complete, so a crash while
writing leaves the previous one intact; directories without meta.json are never resumed from.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.distributed import barrier

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, if any."""
    root = checkpoint_root(output_dir)
    done = [p for p in root.glob("step-*") if STEP_DIR.match(p.name) and (p / "meta.json").is_file()] \
        if root.is_dir() else []
    return max(done, key=lambda p: int(STEP_DIR.match(p.name).group(1)), default=None)


def save_checkpoint(run, step: int, meta: dict, keep: int) -> Path:
    """Every rank calls this (ZeRO shards and RNG states are per rank); rank 0 commits and prunes."""
    root = checkpoint_root(run.cfg.train.output_dir)
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    if run.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    run.learner.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
    run.learner.save_weights(tmp / "model", run.tokenizer, run.is_main)
    save_rng(tmp, run.rank)
    barrier()
    if run.is_main:
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():  # the same step saved again (a resumed run's last step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted((p for p in root.glob("step-*") if STEP_DIR.match(p.name)),
                          key=lambda p: int(STEP_DIR.match(p.name).group(1)))[:-keep]:  # keep >= 1
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(run, path: Path) -> dict:
    """Restore the learner, push its weights into vLLM, restore this rank's RNG states; returns meta."""
    run.learner.engine.load_checkpoint(str(path / "deepspeed"), tag="state")
    run.rollout.load_weights(run.learner.full_state_dict().items())
    load_rng(path, run.rank)
    return json.loads((path / "meta.json").read_text())


def save_rng(folder: Path, rank: int) -> None:
    torch.save(torch.get_rng_state(), folder / f"rng-rank{rank}.pt")
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    (folder / f"rng-rank{rank}.json").write_text(json.dumps({
        "python": [version, list(state), gauss_next],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }))


def load_rng(folder: Path, rank: int) -> None:
    torch.set_rng_state(torch.load(folder / f"rng-rank{rank}.pt", weights_only=True))
    states = json.loads((folder / f"rng-rank{rank}.json").read_text())
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
